#!/usr/bin/env python3
"""Per-phase times of a forward + backward measured on CPU ranks (cptune run --pass fwd+bwd
--phase-barriers: each phase timed alone, slowest rank, median of N) beside the simulator's
per-phase prediction for the same layout (cptune simulate --pass fwd+bwd, same hardware profile).

  scripts/backward_phases.py [--binary build/tuner/cptune] [--hardware cpu-gloo] [--world 4]
                             [--iterations 5] [shape flags...]

Prints one table per strategy: phase, measured, predicted, predicted / measured; and the ratio
attention-bwd / attention measured and predicted (the backward's cost relative to the forward).
"""
import argparse
import json
import subprocess
import sys

DEFAULT_SHAPE = ["--seq", "4096", "--heads", "8", "--kv-heads", "4", "--head-dim", "64", "--mask", "causal"]
CHOICES = [("ulysses", None), ("uaa", None), ("ring", None), ("ring-zigzag", None), ("allgather-kv", None),
           ("hybrid-uaa", 2)]


def cptune(binary, args):
    out = subprocess.run([binary] + args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default="build/tuner/cptune")
    p.add_argument("--hardware", default="cpu-gloo")
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--iterations", type=int, default=5)
    args, shape = p.parse_known_args()
    shape = shape or DEFAULT_SHAPE
    world = ["--world", str(args.world)]
    predicted = cptune(args.binary, ["simulate", "--hardware", args.hardware, "--pass", "fwd+bwd", "--json"] + world + shape)
    print(f"shape: {' '.join(shape)}; world {args.world}; hardware {args.hardware}")
    for strategy, ulysses in CHOICES:
        mesh = world + ["--strategy", strategy] + (["--ulysses", str(ulysses)] if ulysses else [])
        run = cptune(args.binary, ["run", "--pass", "fwd+bwd", "--phase-barriers", "--json", "--iterations",
                                   str(args.iterations)] + mesh + shape)
        pred = next((c for c in predicted["candidates"]
                     if c["strategy"] == strategy and c["ulysses"] == run["ulysses"] and c["ring"] == run["ring"]
                     and c["order"] == run["order"] and c["head_policy"] == run["head_policy"]), None)
        if pred is None:
            print(f"\n{strategy}: no prediction for U={run['ulysses']} R={run['ring']}")
            continue
        print(f"\n{strategy} U={run['ulysses']} R={run['ring']}")
        print(f"  {'phase':<15} {'measured':>11} {'predicted':>11} {'pred/meas':>10}")
        for phase, t in run["phases"].items():
            m, q = t["median"], pred["phases"].get(phase, 0.0)
            print(f"  {phase:<15} {m * 1e3:>9.2f}ms {q * 1e3:>9.2f}ms {q / m if m > 0 else float('nan'):>10.2f}")
        ma, mb = run["phases"].get("attention", {}).get("median"), run["phases"].get("attention-bwd", {}).get("median")
        pa, pb = pred["phases"].get("attention"), pred["phases"].get("attention-bwd")
        if ma and mb and pa and pb:
            print(f"  attention-bwd / attention: measured {mb / ma:.2f}, predicted {pb / pa:.2f}")


if __name__ == "__main__":
    sys.exit(main())
