#!/usr/bin/env python3
"""PyTorch peer of tests/bench/bench_attention_cuda.cc: torch.nn.functional.scaled_dot_product_attention
on the same GPU at the same shapes (batch 1, 16 heads, S = 8k and 32k, D = 128, bf16, full and
causal), then cptune's kernel (the C++ benchmark, run from here), side by side with the ratio.

Both count 2 (D + Dv) FLOPs per visible (query, key) pair per head (full: 4 S^2 H D; causal:
S (S + 1) / 2 pairs) and time one forward with CUDA events, median of --iterations after
--warmups (cptune: Google Benchmark's median of 5 repetitions). SDPA runs with PyTorch's own
backend choice ("default") and with each backend it offers explicitly (flash, efficient,
cudnn), on (B, H, S, D) tensors, its fastest layout.

Run from the repository root after building (docs/gpu.md):
    python3 scripts/bench_attention_sdpa.py --bench build/bench/bench_attention_cuda
"""
import argparse
import contextlib
import json
import statistics
import subprocess
import sys

HEADS, DIM = 16, 128


def pairs(s, causal):
    return s * (s + 1) // 2 if causal else s * s


def flops(s, causal):
    return 2.0 * (DIM + DIM) * pairs(s, causal) * HEADS


def sdpa_backends(torch):
    """(name, context manager factory) for PyTorch's default choice and each explicit backend."""
    out = [("default", contextlib.nullcontext)]
    try:  # torch >= 2.3
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name, backend in (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
                              ("cudnn", "CUDNN_ATTENTION")):
            if hasattr(SDPBackend, backend):
                out.append((name, lambda b=getattr(SDPBackend, backend): sdpa_kernel(b)))
    except ImportError:  # torch 2.0 - 2.2
        flags = {"flash": dict(enable_flash=True, enable_math=False, enable_mem_efficient=False),
                 "efficient": dict(enable_flash=False, enable_math=False, enable_mem_efficient=True)}
        for name, kw in flags.items():
            out.append((name, lambda kw=kw: torch.backends.cuda.sdp_kernel(**kw)))
    return out


def time_sdpa(torch, s, causal, dtype, context, warmups, iterations):
    """Median seconds of one SDPA forward, or None when the backend refuses the shape."""
    import torch.nn.functional as F

    q, k, v = (torch.rand(1, HEADS, s, DIM, device="cuda", dtype=dtype) * 2 - 1 for _ in range(3))
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    try:
        with context():
            for i in range(warmups + iterations):
                start.record()
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                stop.record()
                stop.synchronize()
                if i >= warmups:
                    samples.append(start.elapsed_time(stop) * 1e-3)
    except RuntimeError as e:  # the backend cannot run this shape or GPU
        print(f"  sdpa: skipped ({str(e).splitlines()[0][:100]})", file=sys.stderr)
        return None
    finally:
        del q, k, v
        torch.cuda.empty_cache()
    return statistics.median(samples)


def run_cptune(bench, dtype_name):
    """{(S, causal): TFLOP/s} from the C++ benchmark's JSON (median of 5 repetitions)."""
    cmd = [bench, f"--benchmark_filter=BM_AttendCuda/{dtype_name}_", "--benchmark_format=json",
           "--benchmark_repetitions=5", "--benchmark_report_aggregates_only=true"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = {}
    for b in json.loads(done.stdout)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        if b.get("error_occurred"):
            sys.exit(f"cptune benchmark failed: {b.get('error_message')}")
        causal = "_causal" in b["name"]
        out[(int(b["S"]), causal)] = b["TFLOP/s"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="build/bench/bench_attention_cuda", help="the C++ benchmark program")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--seq", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch (or a CPU-only torch): this compares on a GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    device = torch.cuda.get_device_name(0)
    cptune = run_cptune(args.bench, args.dtype)

    rows = []
    for s in args.seq:
        for causal in (False, True):
            row = {"S": s, "mask": "causal" if causal else "full", "cptune_tflops": cptune.get((s, causal))}
            for name, context in sdpa_backends(torch):
                t = time_sdpa(torch, s, causal, dtype, context, args.warmups, args.iterations)
                row[f"sdpa_{name}_tflops"] = flops(s, causal) / t * 1e-12 if t else None
            rows.append(row)

    if args.json:
        print(json.dumps({"device": device, "torch": torch.__version__, "dtype": args.dtype, "heads": HEADS,
                          "head_dim": DIM, "rows": rows}, indent=2))
        return
    names = [k[5:-7] for k in rows[0] if k.startswith("sdpa_")]
    print(f"{device}, torch {torch.__version__}, {args.dtype}, batch 1, {HEADS} heads, D = Dv = {DIM}")
    print("TFLOP/s = 2 (D + Dv) x visible pairs x heads / median forward time; ratio = cptune / SDPA")
    header = f"{'S':>6} {'mask':>6} {'cptune':>8} " + " ".join(f"{'sdpa-' + n:>14} {'ratio':>6}" for n in names)
    print(header)
    for row in rows:
        ours = row["cptune_tflops"]
        line = f"{row['S']:>6} {row['mask']:>6} {ours if ours else float('nan'):>8.1f} "
        cells = []
        for n in names:
            theirs = row[f"sdpa_{n}_tflops"]
            ratio = ours / theirs if ours and theirs else float("nan")
            cells.append(f"{theirs if theirs else float('nan'):>14.1f} {ratio:>6.2f}")
        print(line + " ".join(cells))


if __name__ == "__main__":
    main()
