#!/usr/bin/env python3
"""Lines per function body in C++ sources (a quick measure for review, not a parser).

  scripts/function_lengths.py FILE_OR_DIR... [--top N]

Counts from the line of a function's opening brace to its closing one. Namespace, class,
struct and enum bodies are looked into, not counted; lambdas count toward their function.
"""
import pathlib
import re
import sys


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r'R"\((.*?)\)"', lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\\n])*"', '""', text)
    return re.sub(r"'(\\.|[^'\\\n])*'", "''", text)


def functions(path):
    text = strip(path.read_text())
    out, stack, head_start = [], [], 0
    line = 1
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        elif c == "{":
            head = text[head_start:i]
            in_function = any(kind == "fn" for kind, *_ in stack)
            if in_function:
                stack.append(("block",))
            elif re.search(r"\b(namespace|class|struct|enum|union)\b[^;()]*$", head) or not re.search(r"\)[^;]*$", head):
                stack.append(("scope",))
            else:
                name = re.findall(r"([~\w:]+)\s*\([^;]*$", head)
                stack.append(("fn", name[0] if name else "?", line))
            head_start = i + 1
        elif c == "}":
            if stack:
                top = stack.pop()
                if top[0] == "fn":
                    out.append((line - top[2] + 1, top[1], str(path), top[2]))
            head_start = i + 1
        elif c == ";" and not any(k == "fn" for k, *_ in stack):
            head_start = i + 1
    return out


def main(argv):
    top = 5
    if "--top" in argv:
        k = argv.index("--top")
        top = int(argv[k + 1])
        argv = argv[:k] + argv[k + 2:]
    files = []
    for a in argv:
        p = pathlib.Path(a)
        files += sorted(p.rglob("*.cc")) + sorted(p.rglob("*.h")) if p.is_dir() else [p]
    found = sorted((f for path in files for f in functions(path)), reverse=True)
    for n, name, path, at in found[:top]:
        print(f"{n:5d}  {name}  {path}:{at}")


if __name__ == "__main__":
    main(sys.argv[1:])
