#!/usr/bin/env python3
"""Issue 4's side-by-side benchmark: prints ratios measured in one run, both sides interleaved
(A, B, A, B, ...) so that the noise of this shared machine hits both alike.

  (1) UAA vs classic Ulysses on a shape that needs no padding (UAA's own overhead)
  (2) UAA vs padded Ulysses on shapes that need padding (tokens: S=4097; heads: 25 heads on
      3 ranks, run by the peers as 27 padded heads)
  (3) cptune's Gloo alltoallv vs PyTorch all_to_all_single (gloo backend, python3-torch) at the
      same uneven byte counts

(1) and (2) run in tests/bench/bench_executor_pairs.cc (one launch per case, the two layouts
alternating iteration by iteration; median of the paired ratios). (3) alternates whole runs of
tests/bench/bench_alltoallv.cc and scripts/bench_alltoallv_torch.py. Times are the slowest
rank's. Usage: scripts/bench_executor.py [--build build] [--iterations 15] [--rounds 6]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cptune(build, *args):
    out = subprocess.run([os.path.join(build, "tuner", "cptune"), *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def report(title, medians, num, den):
    ratio = medians[num] / medians[den]
    print(f"{title}\n  {num}: {medians[num]*1e3:.2f} ms   {den}: {medians[den]*1e3:.2f} ms   "
          f"ratio {num}/{den} = {ratio:.4f} ({(ratio-1)*100:+.2f}%)")
    return ratio


def layout_counts(build, world, shape):
    lay = cptune(build, "layout", "--json", "--world", str(world), "--strategy", "uaa", *shape)
    eb = {"bf16": 2, "fp16": 2, "fp32": 4}[lay["shape"]["dtype"]]
    counts = []
    for rank in lay["ranks"]:
        c = rank["ulysses_counts_elems"]
        counts.append([(q + k + v) * eb for q, k, v in zip(c["q"]["send"], c["k"]["send"], c["v"]["send"])])
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds of (3)")
    ap.add_argument("--iterations", type=int, default=15, help="paired iterations of (1) and (2)")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-pairs", action="store_true")
    args = ap.parse_args()
    b, n, it = args.build, args.rounds, args.iterations
    # (1) and (2): both layouts in the same rank processes, alternating iteration by iteration.
    if not args.skip_pairs:
        subprocess.run([os.path.join(b, "bench", "bench_executor_pairs"), str(it)], check=True)
        print()
    if args.skip_torch:
        return
    shape = ["--seq", "4097", "--heads", "25", "--kv-heads", "5", "--head-dim", "64"]
    counts = layout_counts(b, 4, shape)
    ours, theirs = [], []
    for i in range(n):
        runs = [("ours", [os.path.join(b, "bench", "bench_alltoallv"), "--world", "4", *shape]),
                ("torch", ["/usr/bin/python3", os.path.join(ROOT, "scripts", "bench_alltoallv_torch.py"), json.dumps(counts)])]
        for name, cmd in runs if i % 2 == 0 else runs[::-1]:
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            (ours if name == "ours" else theirs).append(out["median_s"])
    med = {"cptune-gloo": statistics.median(ours), "torch-gloo": statistics.median(theirs)}
    mib = sum(counts[0]) / 2**20
    report(f"(3) alltoallv, uneven UAA counts of S=4097 Hq=25 Hkv=5 D=64 on 4 ranks ({mib:.1f} MiB from rank 0)", med,
           "cptune-gloo", "torch-gloo")


if __name__ == "__main__":
    sys.exit(main())
