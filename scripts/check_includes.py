#!/usr/bin/env python3
"""Architecture check over #include lines (run by ctest as Architecture.IncludesPointDown).

Fails on three things:
  - an include upward: a lower room including a higher one. Rooms from the bottom up
    (docs/design.md): core < sim, backends < db < tuner < tuner/cli; within backends:
    comm < kernels < exec (a room's cuda/ sub-folder belongs to it). sim and backends sit side
    by side and may not include each other; tests/ may include anything;
  - an include loop: a project header including, through others, itself;
  - a call loop between files of one folder. A file pair is a module (core/layout.h with
    core/layout.cc); module A uses module B when a file of A includes B's header, the way a
    file reaches another's functions. A cycle of "uses" among the modules of one folder (A uses
    B and B uses A, or longer) is a call loop: neither can be read, tested or moved without the
    other. Sub-folders are folders of their own (an ISA folder may call back into its parent).

    scripts/check_includes.py              # the tree this script sits in
    scripts/check_includes.py --self-test  # plants each violation in copies and expects it caught
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


# Call loops known when the check was added, each being broken by its owner; listed so the
# check can run before they land. Remove an entry once its loop is gone (a stale one is noted).
KNOWN_CALL_LOOPS = []


def sources(root):
    for top in ("core", "sim", "backends", "db", "tuner"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith((".h", ".cc", ".cu", ".c")):
                    yield os.path.relpath(os.path.join(dirpath, f), root)


def module_of(path):
    return os.path.splitext(path)[0]


def cycles(nodes):
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(nodes.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def call_loops(graph):
    """Cycles of "uses" among the modules of each folder, with the includes that make them."""
    uses, why = {}, {}
    for src, dsts in graph.items():
        a = module_of(src)
        for inc in dsts:
            b = module_of(inc)
            if a != b and inc.endswith(".h") and os.path.dirname(a) == os.path.dirname(b):
                uses.setdefault(a, set()).add(b)
                why.setdefault((a, b), []).append(f"{src} includes {inc}")
    found = []
    for component in cycles(uses):
        members = set(component)
        links = sorted(w for (a, b), ws in why.items() if a in members and b in members for w in ws)
        found.append((component, links))
    return found


def check(root):
    errors, notes = [], []
    graph = {}
    for path in sources(root):
        text = open(os.path.join(root, path), encoding="utf-8", errors="replace").read()
        src_room, _ = room_of(path)
        for inc in INCLUDE.findall(text):
            dst_room, _ = room_of(inc)
            if dst_room is None:
                continue  # generated headers, system-like includes
            if not os.path.exists(os.path.join(root, inc)):
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
    known = {tuple(sorted(k)) for k in KNOWN_CALL_LOOPS}
    seen = set()
    for component, links in call_loops(graph):
        text = "call loop between " + " and ".join(component) + ": " + "; ".join(links)
        if tuple(component) in known:
            seen.add(tuple(component))
            notes.append("known " + text)
        else:
            errors.append(text)
    for k in sorted(known - seen):
        notes.append("known call loop " + " and ".join(k) + " is gone: remove it from KNOWN_CALL_LOOPS")
    return graph, errors, notes


def self_test():
    """Each planted violation must be caught and the clean tree must pass."""
    import shutil
    import tempfile
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        def copy():
            tree = os.path.join(tmp, "tree")
            shutil.rmtree(tree, ignore_errors=True)
            for path in sources(ROOT):
                os.makedirs(os.path.dirname(os.path.join(tree, path)), exist_ok=True)
                shutil.copyfile(os.path.join(ROOT, path), os.path.join(tree, path))
            return tree

        def plant(tree, path, include):
            with open(os.path.join(tree, path), "a") as f:
                f.write(f'\n#include "{include}"\n')

        def expect(name, tree, needle):
            _, errors, _ = check(tree)
            caught = [e for e in errors if needle in e] if needle else errors
            ok = bool(caught) if needle else not errors
            print(f"self-test {name}: {'ok' if ok else 'FAILED'}" + (f" ({caught[0]})" if caught and needle else ""))
            if not ok:
                failures.append(name)
                for e in errors:
                    print("  " + e)

        expect("the real tree passes", copy(), None)
        tree = copy()
        plant(tree, "core/block_placement.cc", "core/layout.h")  # layout.cc includes block_placement.h
        expect("a planted two-file call loop is caught", tree, "call loop between core/block_placement and core/layout")
        tree = copy()
        os.makedirs(os.path.join(tree, "sim/planted"), exist_ok=True)
        for a, b in (("x", "y"), ("y", "z"), ("z", "x")):
            with open(os.path.join(tree, f"sim/planted/{a}.h"), "w") as f:
                f.write("#pragma once\n")
            with open(os.path.join(tree, f"sim/planted/{a}.cc"), "w") as f:
                f.write(f'#include "sim/planted/{a}.h"\n#include "sim/planted/{b}.h"\n')
        expect("a planted three-file call loop is caught", tree, "call loop between sim/planted/x and sim/planted/y and sim/planted/z")
        tree = copy()
        plant(tree, "core/layout.cc", "sim/cost_model.h")
        expect("a planted upward include is caught", tree, "core may not include sim")
        tree = copy()
        plant(tree, "core/error.h", "core/types.h")
        plant(tree, "core/types.h", "core/error.h")
        expect("a planted header loop is caught", tree, "include loop")
    print(f"self-test: {len(failures)} failed")
    return 1 if failures else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    graph, errors, notes = check(ROOT)
    for n in notes:
        print(n)
    for e in errors:
        print(e)
    print(f"{len(graph)} files with project includes checked: {len(errors)} violations")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
