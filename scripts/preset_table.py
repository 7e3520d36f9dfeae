#!/usr/bin/env python3
"""Per hardware preset: the predicted best layout and Ulysses-over-all-ranks / best hybrid, at
8k and 32k tokens (32 heads, D 128, causal, one node of the preset unless --nodes). Prints a
Markdown table. A preset may carry a world: gb200-nvl72:8. Usage:
scripts/preset_table.py build/tuner/cptune [preset[:world] ...]"""
import json
import subprocess
import sys

cptune = sys.argv[1]
presets = sys.argv[2:] or ["h100-sxm", "h200", "a100", "gb200-nvl72:8", "gb200-nvl72:32", "h100-spine-3to1:32",
                            "a100-pcie", "l20", "l20-p2p-off"]
print("| preset | world | seq | best (time) | ulysses U=P | best hybrid | ulysses / best hybrid | ring-zigzag / best hybrid |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for spec in presets:
    hw, _, world = spec.partition(":")
    for seq in ["8k", "32k"]:
        args = [cptune, "simulate", "--hardware", hw, "--seq", seq, "--heads", "32", "--mask", "causal", "--json"]
        out = subprocess.run(args + (["--world", world] if world else []), check=True, capture_output=True, text=True).stdout
        doc = json.loads(out)
        c = doc["candidates"]
        label = lambda x: f'{x["strategy"]} {x["ulysses"]}x{x["ring"]}' + (f' {x["order"]}' if x["strategy"].startswith("hybrid") else "")
        ms = lambda x: f'{x["time_s"] * 1e3:.3f} ms'
        best = c[0]
        uly = min((x for x in c if x["strategy"] == "ulysses"), key=lambda x: x["time_s"], default=None)
        hyb = min((x for x in c if x["strategy"].startswith("hybrid")), key=lambda x: x["time_s"])
        zz = min((x for x in c if x["strategy"] == "ring-zigzag"), key=lambda x: x["time_s"])
        ratio = f'{uly["time_s"] / hyb["time_s"]:.3f}' if uly else "- (32 heads < P)"
        print(f'| {doc["hardware"]} | {doc["cluster"]["world"]} | {seq} | {label(best)} ({ms(best)}) | {ms(uly) if uly else "-"} | '
              f'{label(hyb)} ({ms(hyb)}) | {ratio} | {zz["time_s"] / hyb["time_s"]:.3f} |')
