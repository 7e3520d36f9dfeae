#!/usr/bin/env python3
"""Fails on a dead relative link or a dead #anchor in README.md and docs/**/*.md.

  scripts/check_links.py [ROOT]     check the tree (default: the repository of this script)
  scripts/check_links.py --self-test

A link is checked when it is relative (no scheme): the file or folder must exist, and a #anchor
must be a heading of the target Markdown file, slugged as GitHub renders it (lower case; every
character but letters, marks, digits, connector punctuation, space and hyphen dropped; spaces to
hyphens; a repeated slug gets -1, -2, ...), or an explicit <a id/name>. Links inside code are not
links. The self-test plants a dead link and a dead anchor in a scratch tree, requires both to be
reported and nothing else, then requires the real tree to pass.
"""
import os
import re
import sys
import tempfile
import unicodedata

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_ATTR = re.compile(r"<(?:a|img|source)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]*)\"", re.I)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*\"([^\"]*)\"", re.I)
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fenced = None
    for number, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if m:
            if fenced is None:
                fenced = m.group(1)
            elif m.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield number, line


def rendered_heading(text):
    """The text GitHub renders for a heading's Markdown (what its slug is made from)."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), text)
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("**", "").replace("__", "")
    text = re.sub(r"(?<!\w)\*(\S(?:.*?\S)?)\*(?!\w)", r"\1", text)
    text = text.replace("\\", "")
    return text


def slug(text):
    kept = []
    for ch in rendered_heading(text).strip().lower():
        category = unicodedata.category(ch)
        if ch in " -" or category[0] in "LMN" or category == "Pc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        found, seen = set(), {}
        for _, line in prose_lines(text):
            m = HEADING.match(line)
            if m:
                s = slug(m.group(2))
                n = seen.get(s, 0)
                seen[s] = n + 1
                found.add(s if n == 0 else f"{s}-{n}")
            found.update(a for a in HTML_ANCHOR.findall(line))
        cache[path] = found
    return cache[path]


def links(text):
    """(line number, target) of every link outside code."""
    for number, line in prose_lines(text):
        line = CODE_SPAN.sub("", line)
        for m in INLINE_LINK.finditer(line):
            yield number, m.group(2)
        m = REF_DEF.match(line)
        if m:
            yield number, m.group(1)
        for target in HTML_ATTR.findall(line):
            yield number, target


def check_file(path, root):
    errors = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    where = os.path.relpath(path, root)
    for number, target in links(text):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else os.path.normpath(
            os.path.join(os.path.dirname(path), file_part.split("?")[0]))
        if not os.path.exists(dest):
            errors.append(f"{where}:{number}: dead link {target} ({os.path.relpath(dest, root)} does not exist)")
            continue
        if anchor and dest.endswith(".md"):
            if anchor.lower() not in anchors(dest):
                errors.append(f"{where}:{number}: dead anchor {target} (no heading of "
                              f"{os.path.relpath(dest, root)} has the slug #{anchor})")
    return errors


def documents(root):
    found = [os.path.join(root, "README.md")]
    docs = os.path.join(root, "docs")
    for folder, _, files in os.walk(docs):
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".md")]
    return [p for p in found if os.path.isfile(p)]


def check_tree(root):
    errors = []
    for path in documents(root):
        errors += check_file(path, root)
    return errors


def self_test(root):
    with tempfile.TemporaryDirectory() as scratch:
        os.makedirs(os.path.join(scratch, "docs"))
        with open(os.path.join(scratch, "README.md"), "w", encoding="utf-8") as f:
            f.write("# T\n\n[ok](docs/a.md) [ok anchor](docs/a.md#worked-study-2-nodes--8-h100-hq--24)\n"
                    "[ok own](#t) `[not a link](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
                    "[planted dead link](docs/missing.md)\n")
        with open(os.path.join(scratch, "docs", "a.md"), "w", encoding="utf-8") as f:
            f.write("# A\n\n## Worked study: 2 nodes × 8 H100, Hq = 24\n\n## `run` *flags*\n\n## Twice\n\n## Twice\n\n"
                    "[ok](#run-flags) [ok](#twice-1) [up](../README.md#t)\n"
                    "[planted dead anchor](#no-such-heading)\n")
        got = check_tree(scratch)
    print("self-test, planted tree:")
    for e in got:
        print("  " + e)
    want = ["README.md:9: dead link docs/missing.md", "docs/a.md:12: dead anchor #no-such-heading"]
    ok = len(got) == len(want) and all(g.startswith(w) for g, w in zip(got, want))
    if not ok:
        print("self-test FAILED: expected exactly\n  " + "\n  ".join(want))
        return 1
    real = check_tree(root)
    for e in real:
        print("  " + e)
    if real:
        print(f"self-test FAILED: the real tree has {len(real)} dead links")
        return 1
    print(f"self-test passed: both planted links reported; the tree's {len(documents(root))} files pass")
    return 0


def main(argv):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if argv[1:2] == ["--self-test"]:
        return self_test(here)
    root = os.path.abspath(argv[1]) if len(argv) > 1 else here
    errors = check_tree(root)
    for e in errors:
        print(e)
    if errors:
        print(f"check_links: {len(errors)} dead link(s)")
        return 1
    print(f"check_links: {len(documents(root))} files, every relative link and anchor resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
