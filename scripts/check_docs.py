#!/usr/bin/env python3
"""Keeps the numbers of README.md and docs/**/*.md equal to the commands that produce them.

  scripts/check_docs.py            re-run every generated region, fail (exit 1) where the text differs
  scripts/check_docs.py --update   rewrite those regions with what the commands print now
  scripts/check_docs.py --list     list every region: file, line, kind, command
  scripts/check_docs.py --self-test

A table or output in the docs is a region between two HTML comments (invisible on GitHub):

  <!-- generated: COMMAND -->          cheap: re-run here and in CI; the body is COMMAND's stdout
  <!-- generated code: COMMAND -->     the same, the body fenced as a code block
  <!-- end generated -->

  <!-- recorded YYYY-MM-DD: COMMAND --> measured or slow (timings, GPU runs, benchmarks): not
  <!-- end recorded -->                 re-run; the marker names the command and the day it ran

The body is the output between two blank lines. COMMAND runs under bash from the repository root; `build/` in it is the build folder
($CPTUNE_BUILD_DIR, default ./build, which must hold a built cptune). A generated region's command
must be deterministic and take seconds: simulator, layout, mask and engine outputs, not timings.
"""
import difflib
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPEN = re.compile(r"^<!-- (generated(?: code)?|recorded (\d{4}-\d{2}-\d{2})): (.+?) -->\s*$")
CLOSE = re.compile(r"^<!-- end (generated|recorded) -->\s*$")
TIMEOUT_S = 120


class Region:
    def __init__(self, path, line, kind, date, command, start, end):
        self.path, self.line, self.kind, self.date, self.command = path, line, kind, date, command
        self.start, self.end = start, end  # body lines [start, end) of the file's lines

    @property
    def generated(self):
        return self.kind.startswith("generated")


def regions(path, lines):
    """The regions of one file; raises ValueError on a marker without its partner."""
    found, current = [], None
    for i, line in enumerate(lines):
        m, c = OPEN.match(line), CLOSE.match(line)
        if m:
            if current:
                raise ValueError(f"{path}:{i + 1}: a region opens inside the region of line {current[0] + 1}")
            current = (i, m)
        elif c:
            if not current:
                raise ValueError(f"{path}:{i + 1}: '<!-- end {c.group(1)} -->' without an opening marker")
            start, m = current
            kind = m.group(1) if m.group(1).startswith("generated") else "recorded"
            if kind.split()[0] != c.group(1):
                raise ValueError(f"{path}:{i + 1}: '<!-- end {c.group(1)} -->' closes a {kind} region")
            found.append(Region(path, start + 1, kind, m.group(2), m.group(3), start + 1, i))
            current = None
    if current:
        raise ValueError(f"{path}:{current[0] + 1}: region never closed (no '<!-- end ... -->')")
    return found


def documents(root):
    paths = [os.path.join(root, "README.md")]
    for folder, _, files in os.walk(os.path.join(root, "docs")):
        paths += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".md")]
    return [p for p in paths if os.path.isfile(p)]


def run(command, root, build):
    command = re.sub(r"(?<![\w./-])build/", build.rstrip("/") + "/", command)
    started = time.monotonic()
    p = subprocess.run(["bash", "-c", "set -o pipefail; " + command], cwd=root, capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p.stdout, time.monotonic() - started


def body_of(region, output):
    lines = output.rstrip("\n").split("\n") if output.strip() else []
    if region.kind == "generated code":
        lines = ["```"] + lines + ["```"]
    return [""] + lines + [""]  # blank lines end a table before the closing marker, on every renderer


def check(root, build, update, out=sys.stdout):
    failures, ran, total_s = 0, 0, 0.0
    for path in documents(root):
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        where = os.path.relpath(path, root)
        try:
            found = regions(where, lines)
        except ValueError as e:
            print(e, file=out)
            failures += 1
            continue
        changed = False
        for r in reversed(found):  # bottom up, so rewriting a body keeps earlier line numbers
            if not r.generated:
                continue
            try:
                output, seconds = run(r.command, root, build)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"{where}:{r.line}: command failed: {r.command}\n  {e}", file=out)
                failures += 1
                continue
            ran += 1
            total_s += seconds
            want = body_of(r, output)
            have = lines[r.start:r.end]
            if want == have:
                continue
            if update:
                lines[r.start:r.end] = want
                changed = True
                print(f"{where}:{r.line}: updated ({r.command})", file=out)
            else:
                failures += 1
                print(f"{where}:{r.line}: differs from `{r.command}` (scripts/check_docs.py --update rewrites it):",
                      file=out)
                for d in difflib.unified_diff(have, want, "docs", "command", lineterm="", n=1):
                    print("  " + d, file=out)
        if changed:
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
    return failures, ran, total_s


def list_regions(root):
    for path in documents(root):
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for r in regions(os.path.relpath(path, root), lines):
            print(f"{r.path}:{r.line}: {r.kind}{' ' + r.date if r.date else ''}: {r.command}")


def self_test(build):
    """A planted stale region must fail and --update must fix it; a recorded region is never run."""
    with tempfile.TemporaryDirectory() as scratch:
        os.makedirs(os.path.join(scratch, "docs"))
        with open(os.path.join(scratch, "README.md"), "w") as f:
            f.write("# T\n\n<!-- generated: printf 'a\\nb\\n' -->\na\nstale\n<!-- end generated -->\n\n"
                    "<!-- generated code: echo x -->\n\n```\nx\n```\n\n<!-- end generated -->\n\n"
                    "<!-- recorded 2026-11-30: false -->\nanything\n<!-- end recorded -->\n")
        with open(os.path.join(scratch, "docs", "bad.md"), "w") as f:
            f.write("<!-- generated: echo -->\nno end\n")
        failures, ran, _ = check(scratch, build, update=False, out=open(os.devnull, "w"))
        if (failures, ran) != (2, 2):
            print(f"self-test FAILED: expected 2 failures (stale body, unclosed region) of 2 runs, got {failures} of {ran}")
            return 1
        os.remove(os.path.join(scratch, "docs", "bad.md"))
        check(scratch, build, update=True, out=open(os.devnull, "w"))
        failures, _, _ = check(scratch, build, update=False, out=open(os.devnull, "w"))
        if failures:
            print("self-test FAILED: --update did not make the planted region pass")
            return 1
    print("self-test passed: a stale region and an unclosed one fail, --update repairs, recorded ones are not run")
    return 0


def main(argv):
    build = os.environ.get("CPTUNE_BUILD_DIR", os.path.join(ROOT, "build"))
    if "--list" in argv:
        list_regions(ROOT)
        return 0
    if "--self-test" in argv and self_test(build):
        return 1
    if not os.access(os.path.join(build, "tuner", "cptune"), os.X_OK):
        print(f"check_docs: no cptune in {build}/tuner (build first: scripts/build.sh)")
        return 2
    failures, ran, seconds = check(ROOT, build, update="--update" in argv)
    if failures:
        print(f"check_docs: {failures} region(s) differ from their commands or failed")
        return 1
    print(f"check_docs: {ran} generated regions match their commands ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
