#!/usr/bin/env python3
"""Architecture check over #include lines (run by ctest as Architecture.IncludesPointDown).

Fails when a lower room includes a higher one, or when project headers include each other in a
loop. Rooms from the bottom up (docs/design.md): core < sim, backends < db < tuner < tuner/cli; within
backends: comm < kernels < exec (a room's cuda/ sub-folder belongs to it). sim and backends sit
side by side and may not include each other; tests/ may include anything.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)

# (room, level): a file may include rooms of a lower level, or its own room.
ROOMS = [
    ("core", 0),
    ("backends/comm", 1),
    ("backends/kernels", 2),
    ("backends/exec", 3),
    ("sim", 1),
    ("db", 4),
    ("tuner/cli", 6),
    ("tuner", 5),
]
SIBLINGS = {("sim", "backends/comm"), ("sim", "backends/kernels"), ("sim", "backends/exec")}


def room_of(path):
    for room, level in ROOMS:
        if path == room or path.startswith(room + "/"):
            return room, level
    return None, None


def may_include(src_room, dst_room):
    if src_room == dst_room:
        return True
    s, d = dict(ROOMS)[src_room], dict(ROOMS)[dst_room]
    if (src_room, dst_room) in SIBLINGS or (dst_room, src_room) in SIBLINGS:
        return False
    if src_room == "db" and dst_room.startswith("backends"):
        return False  # the store and the lookup library know nothing of how things run
    return d < s


def sources():
    for top in ("core", "sim", "backends", "db", "tuner"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith((".h", ".cc", ".cu", ".c")):
                    yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def main():
    errors = []
    graph = {}
    for path in sources():
        text = open(os.path.join(ROOT, path), encoding="utf-8", errors="replace").read()
        src_room, _ = room_of(path)
        for inc in INCLUDE.findall(text):
            dst_room, _ = room_of(inc)
            if dst_room is None:
                continue  # generated headers, system-like includes
            if not os.path.exists(os.path.join(ROOT, inc)):
                continue
            if not may_include(src_room, dst_room):
                errors.append(f"{path} includes {inc}: {src_room} may not include {dst_room}")
            graph.setdefault(path, set()).add(inc)
    # A loop among headers: a header including, through others, itself.
    nodes = {src: {d for d in dsts if d.endswith(".h")} for src, dsts in graph.items() if src.endswith(".h")}
    state = {}
    stack = []
    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(nodes.get(n, ())):
            if state.get(m) == 1:
                errors.append("include loop: " + " -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2
    for n in sorted(nodes):
        if n not in state:
            visit(n)
    for e in errors:
        print(e)
    print(f"{len(graph)} files with project includes checked: {len(errors)} violations")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
