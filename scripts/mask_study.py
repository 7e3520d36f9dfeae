#!/usr/bin/env python3
"""The block-sparse configuration study of docs/configuration_studies.md "Block-sparse masks: which layout wins".

For each preset, world size, sequence length and mask, runs `cptune simulate --json` (every
feasible candidate, the simulator's ranking) and prints one Markdown row: the winner, its time,
the best candidate of each family (head-parallel: ulysses / uaa; ring with cptune's balanced
placement; ring-zigzag, the placement UltraAttn compares against; hybrids), each as its time over
the winner's, and the winner's share of time in communication.

    python3 scripts/mask_study.py --binary build/tuner/cptune [--pass fwd]
"""
import argparse
import json
import subprocess
import sys

MASKS = ["causal", "strided:16,4", "global-local:16,1,2", "star:16", "stream:16,1,3"]
SEQS = [131072, 524288]
SETUPS = [  # (preset, world, ranks per node)
    ("h100-sxm", 8, 8),
    ("h100-sxm", 64, 8),
    ("gb200-nvl72", 64, 4),
]
FAMILIES = [
    ("ulysses/uaa", {"ulysses", "uaa"}),
    ("ring", {"ring"}),
    ("ring-zigzag", {"ring-zigzag"}),
    ("hybrid", {"hybrid", "hybrid-uaa"}),
]
COMM = ("gather", "qkv", "allgather", "o", "grad-o", "grad-qkv", "reduce-scatter")


def label(c):
    if c["strategy"] in ("hybrid", "hybrid-uaa"):
        return f'{c["strategy"]} {c["ulysses"]}x{c["ring"]}'
    return c["strategy"]


def simulate(binary, preset, world, per_node, seq, mask, heads, kv_heads, dim, pass_):
    cmd = [binary, "simulate", "--hardware", preset, "--world", str(world), "--ranks-per-node", str(per_node),
           "--seq", str(seq), "--heads", str(heads), "--kv-heads", str(kv_heads), "--head-dim", str(dim),
           "--mask", mask, "--pass", pass_, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="build/tuner/cptune")
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--pass", dest="pass_", default="fwd-bwd", choices=["fwd", "fwd-bwd"],
                        help="fwd-bwd: a training step's attention, as UltraAttn measures")
    args = parser.parse_args()

    print(f"Hq {args.heads}, Hkv {args.kv_heads}, D {args.head_dim}, bf16, pass {args.pass_}; times are the simulator's; "
          "a family's column is its best candidate's time over the winner's")
    print()
    print("| preset | P | S | mask | winner | time | " + " | ".join(f for f, _ in FAMILIES) + " | winner's comm |")
    print("|---|---|---|---|---|---|" + "---|" * len(FAMILIES) + "---|")
    for preset, world, per_node in SETUPS:
        for seq in SEQS:
            for mask in MASKS:
                out = simulate(args.binary, preset, world, per_node, seq, mask, args.heads, args.kv_heads,
                               args.head_dim, args.pass_)
                cands = sorted(out["candidates"], key=lambda c: c["time_s"])
                best = cands[0]
                cells = []
                for _, names in FAMILIES:
                    fam = [c for c in cands if c["strategy"] in names]
                    cells.append(f'{fam[0]["time_s"] / best["time_s"]:.2f}x' if fam else "-")
                comm = sum(best["phases"].get(p, 0.0) for p in COMM)
                print(f'| {preset} | {world} | {seq // 1024}k | {mask} | {label(best)} | '
                      f'{best["time_s"] * 1e3:.2f} ms | ' + " | ".join(cells) +
                      f' | {comm / best["time_s"]:.0%} |')


if __name__ == "__main__":
    main()
