#!/usr/bin/env python3
"""The simulator against published per-layout measurements it was not fitted to.

Reads scripts/data/published_layouts.csv (one row per published layout: the table it belongs to,
the preset that describes the published machine, the shape, the layout and its published
throughput, whether any preset number was fitted to it, and the source), predicts every table's
layouts with `cptune simulate` on that preset, and prints per table the published and the predicted
order, whether the best layout agrees, the fraction of layout pairs ordered alike, and the median
error of the time ratios t(layout) / t(table's published best). Then the same over the held-out
tables. A layout's prediction is its best rank order and head policy (the sources do not say which).

  scripts/validate_published.py [--binary build/tuner/cptune] [--data scripts/data/published_layouts.csv]
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from collections import OrderedDict
from itertools import combinations

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def label(row):
    s = row["strategy"]
    return f"{s} {row['ulysses']}×{row['ring']}" if s.startswith("hybrid") else s


def seconds(row):
    value = float(row["published"])
    if row["unit"] == "iters/s":
        return 1.0 / value
    if row["unit"] == "ms":
        return value / 1e3
    if row["unit"] == "s":
        return value
    sys.exit(f"validate_published: unknown unit {row['unit']!r} in table {row['table']}")


def predict(binary, first):
    args = [binary, "simulate", "--hardware", first["hardware"], "--world", first["gpus"], "--seq", first["seq"],
            "--batch", first["batch"], "--heads", first["heads"], "--kv-heads", first["kv_heads"], "--head-dim",
            first["head_dim"], "--mask", first["mask"], "--dtype", "fp16",
            "--pass", "fwd-bwd" if first["pass"] in ("fwd+bwd", "fwd-bwd") else first["pass"], "--json"]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"validate_published: {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    best = {}
    for c in json.loads(p.stdout)["candidates"]:
        key = (c["strategy"], str(c["ulysses"]), str(c["ring"]))
        best[key] = min(best.get(key, float("inf")), c["time_s"])
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "tuner", "cptune"))
    ap.add_argument("--data", default=os.path.join(ROOT, "scripts", "data", "published_layouts.csv"))
    args = ap.parse_args()
    tables = OrderedDict()
    with open(args.data, newline="") as f:
        for row in csv.DictReader(f):
            tables.setdefault(row["table"], []).append(row)

    print("| table | preset | published order (fastest first) | predicted order | best agrees | pairs alike | "
          "median ratio error | fit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    held = {"tables": 0, "best": 0, "pairs": 0, "alike": 0, "errors": []}
    for name, rows in tables.items():
        predicted = predict(args.binary, rows[0])
        layouts = []
        for r in rows:
            key = (r["strategy"], r["ulysses"], r["ring"])
            if key not in predicted:
                sys.exit(f"validate_published: {name}: the simulator lays out no {label(r)} on this shape")
            layouts.append((label(r), seconds(r), predicted[key]))
        published = sorted(layouts, key=lambda x: x[1])
        model = sorted(layouts, key=lambda x: x[2])
        pairs = list(combinations(layouts, 2))
        alike = sum((a[1] < b[1]) == (a[2] < b[2]) for a, b in pairs)
        base = published[0]
        errors = [abs((x[2] / base[2]) / (x[1] / base[1]) - 1) for x in layouts if x is not base]
        fit = rows[0]["fit"]
        if fit == "held-out":
            held["tables"] += 1
            held["best"] += published[0][0] == model[0][0]
            held["pairs"] += len(pairs)
            held["alike"] += alike
            held["errors"] += errors
        print(f"| {name} | {rows[0]['hardware']} | {', '.join(x[0] for x in published)} | "
              f"{', '.join(x[0] for x in model)} | {'yes' if published[0][0] == model[0][0] else 'no'} | "
              f"{alike}/{len(pairs)} | {statistics.median(errors):.1%} | {fit} |")
    if held["tables"]:
        print()
        print(f"Held out: {held['tables']} tables; best layout right in {held['best']}/{held['tables']}; "
              f"pairs ordered alike {held['alike']}/{held['pairs']} ({held['alike'] / held['pairs']:.0%}); "
              f"median ratio error {statistics.median(held['errors']):.1%}.")
    sources = sorted({r["source"] for rows in tables.values() for r in rows})
    print()
    for s in sources:
        print(f"Source: {s}")


if __name__ == "__main__":
    main()
