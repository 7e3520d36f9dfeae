#!/usr/bin/env python3
"""Engine conformance: what cptune prints for an engine, built and run with the engine's own code.

Not part of CI (it installs PyPI torch, several GB); docs/engines.md describes it as a nightly job:

    scripts/engine_conformance.py --install            # venv in build/engine-venv, then the checks
    scripts/engine_conformance.py --venv /tmp/v --json build/engine_conformance.json

1. Construction. For a sweep of shapes and worlds, `cptune simulate --engine E --json` ranks every
   layout E can run and prints its configuration (engine_config.python). Each one is built with the
   engine's own class: diffusers' ContextParallelConfig, cache-dit's ParallelismConfig, and, in
   local Gloo ranks, yunchang's set_seq_parallel_pg + LongContextAttention with the printed input
   split. A printed configuration that does not build fails the check.
2. Attention on CPU ranks. diffusers' NATIVE (SDPA) backend supports context parallelism and runs
   on CPU over Gloo: for each case, every rank runs dispatch_attention_fn with the configuration
   cptune printed and its shard of Q, K, V; the gathered output is compared with single-process
   SDPA (max abs error). For the cases cptune refuses (causal, GQA, the UAA head-pad rule), the
   same call must raise: cptune says "runs" exactly where diffusers runs.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["torch>=2.7.1", "diffusers==0.42.1", "cache-dit==1.5.3", "yunchang==0.6.4"]


def venv_python(venv):
    return os.path.join(venv, "bin", "python")


def install(venv):
    if not os.path.exists(venv_python(venv)):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([venv_python(venv), "-m", "pip", "install", "-q", *PACKAGES], check=True)


def cptune_json(cptune, *args):
    out = subprocess.run([cptune, *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return json.loads(out.stdout), ""


def printed_configs(cptune, engine, sweep):
    """(shape text, world, layout, python config) for every row cptune ranks for the engine."""
    rows, skipped = [], []
    for seq, heads, kv, mask, world in sweep:
        args = ["simulate", "--hardware", "h100-sxm", "--world", str(world), "--seq", str(seq), "--heads",
                str(heads), "--kv-heads", str(kv), "--mask", mask, "--engine", engine]
        doc, err = cptune_json(cptune, *args)
        label = f"S={seq} Hq={heads} Hkv={kv} {mask} P={world}"
        if doc is None:
            skipped.append((label, err.splitlines()[-1] if err else "?"))
            continue
        for c in doc["candidates"]:
            layout = f'{c["strategy"]} U={c["ulysses"]} R={c["ring"]}'
            rows.append((label, world, layout, c["engine_config"]["python"], (seq, heads, kv, mask)))
    return rows, skipped


SWEEP = [(seq, h, kv, mask, world)
         for seq in (4096, 4097, 1000)
         for h, kv in ((24, 24), (25, 25), (32, 8), (30, 30), (3, 3))
         for mask in ("full", "causal")
         for world in (3, 4, 8)]


CONSTRUCT = r'''
import json, sys, warnings
warnings.simplefilter("ignore")
from diffusers import ContextParallelConfig
from cache_dit import ParallelismConfig
results = []
for engine, text in json.load(sys.stdin):
    ns = {"ContextParallelConfig": ContextParallelConfig, "ParallelismConfig": ParallelismConfig}
    try:
        eval(text, ns)
        results.append(None)
    except Exception as e:
        results.append(f"{type(e).__name__}: {e}")
print(json.dumps(results))
'''


# One rank of a Gloo group: yunchang's printed process groups, input split and attention class
# (constructed; its forward needs flash-attn), and diffusers' attention with the printed config.
RANK = r'''
import json, os, sys, warnings
warnings.simplefilter("ignore")
import torch, torch.distributed as dist
rank, world, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
cases = json.load(open(path))
out = []
from torch.distributed.device_mesh import init_device_mesh
from diffusers import ContextParallelConfig
from diffusers.models._modeling_parallel import ParallelConfig
from diffusers.models.attention_dispatch import dispatch_attention_fn, AttentionBackendName
for case in cases:
    if case["kind"] == "yunchang":
        import yunchang
        from yunchang import set_seq_parallel_pg, LongContextAttention, EXTRACT_FUNC_DICT
        ns = dict(set_seq_parallel_pg=set_seq_parallel_pg, LongContextAttention=LongContextAttention,
                  EXTRACT_FUNC_DICT=EXTRACT_FUNC_DICT, rank=rank, world_size=world,
                  x=torch.randn(1, case["seq"], 4, 8))
        try:
            statements = case["python"].split("; ")
            exec(statements[0], ns)
            exec(statements[1], ns)  # the printed input split
            ctor = statements[2].split(")(")[0] + ")"  # construct; the call needs flash-attn
            exec("attn = " + ctor, ns)
            assert ns["x_local"].shape[1] == case["seq"] // world
            out.append(None)
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
        continue
    torch.manual_seed(0)
    B, S, H, HKV, D = 1, case["seq"], case["heads"], case["kv_heads"], 16
    q, k, v = torch.randn(B, S, H, D), torch.randn(B, S, HKV, D), torch.randn(B, S, HKV, D)
    causal = case["mask"] == "causal"
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=HKV != H).transpose(1, 2)
    try:
        cfg = eval(case["python"], {"ContextParallelConfig": ContextParallelConfig})
        mesh = init_device_mesh("cpu", cfg.mesh_shape, mesh_dim_names=cfg.mesh_dim_names)
        pc = ParallelConfig(context_parallel_config=cfg)
        pc.setup(rank, world, torch.device("cpu"), mesh=mesh)
        anything = cfg.ulysses_anything or cfg.ring_anything
        shard = (lambda x: x.tensor_split(world, dim=1)[rank]) if anything else (lambda x: x.chunk(world, dim=1)[rank])
        o = dispatch_attention_fn(shard(q), shard(k), shard(v), is_causal=causal, enable_gqa=HKV != H,
                                  backend=AttentionBackendName.NATIVE, parallel_config=pc)
        pieces = [None] * world
        dist.all_gather_object(pieces, o.contiguous())
        err = (torch.cat(pieces, dim=1) - ref).abs().max().item()
        out.append({"ok": True, "max_abs_error": err})
    except Exception as e:
        out.append({"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
if rank == 0:
    print(json.dumps(out))
dist.destroy_process_group()
'''


def run_ranks(python, world, cases, timeout=900):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cases.json")
        script = os.path.join(tmp, "rank.py")
        with open(path, "w") as f:
            json.dump(cases, f)
        with open(script, "w") as f:
            f.write(RANK)
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        procs = [subprocess.Popen([python, script, str(r), str(world), port, path], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in range(world)]
        outs = []
        for p in procs:
            try:
                outs.append(p.communicate(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                outs.append(p.communicate())
        if procs[0].returncode != 0:
            raise RuntimeError("rank 0 failed: " + outs[0][1][-2000:])
        return json.loads(outs[0][0].strip().splitlines()[-1])


def cptune_python(cptune, engine, world, seq, heads, kv, mask, strategy=None):
    """What `cptune lookup --engine` prints (no database: the simulator's pick), or the refusal."""
    args = [cptune, "lookup", "--engine", engine, "--hardware", "h100-sxm", "--world", str(world), "--seq", str(seq),
            "--heads", str(heads), "--kv-heads", str(kv), "--mask", mask, "--format", "python"]
    if strategy:
        args += ["--strategy", strategy]
    out = subprocess.run(args, capture_output=True, text=True)
    return (out.stdout.strip(), "") if out.returncode == 0 else ("", out.stderr.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cptune", default=os.path.join(ROOT, "build", "tuner", "cptune"))
    ap.add_argument("--venv", default=os.path.join(ROOT, "build", "engine-venv"))
    ap.add_argument("--install", action="store_true", help="create the venv and pip-install the engines first")
    ap.add_argument("--ranks", type=int, default=4, help="local Gloo ranks for the CPU attention runs")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args()
    if a.install:
        install(a.venv)
    python = venv_python(a.venv)
    versions = subprocess.run([python, "-c", "import importlib.metadata as m; import json; print(json.dumps("
                               "{p: m.version(p) for p in ('torch', 'diffusers', 'cache-dit', 'yunchang')}))"],
                              capture_output=True, text=True, check=True)
    report = {"packages": json.loads(versions.stdout), "construction": {}, "attention": [], "failures": []}
    print("packages:", report["packages"])

    # 1. Construction of every printed configuration.
    for engine in ("diffusers", "cache-dit"):
        rows, skipped = printed_configs(a.cptune, engine, SWEEP)
        got = subprocess.run([python, "-c", CONSTRUCT], input=json.dumps([(engine, r[3]) for r in rows]),
                             capture_output=True, text=True)
        if got.returncode != 0:
            raise RuntimeError(got.stderr[-2000:])
        errors = json.loads(got.stdout.strip().splitlines()[-1])
        bad = [(r[0], r[2], r[3], e) for r, e in zip(rows, errors) if e]
        distinct = sorted({r[3] for r in rows})
        report["construction"][engine] = {"configs": len(rows), "distinct": len(distinct), "failed": len(bad),
                                          "shapes_without_layout": len(skipped)}
        print(f"{engine}: {len(rows)} printed configurations ({len(distinct)} distinct) over {len(SWEEP)} "
              f"shape x world points ({len(skipped)} with none); {len(bad)} failed to construct")
        for b in bad:
            report["failures"].append(f"{engine} {b[0]} {b[1]}: {b[2]} -> {b[3]}")

    # yunchang: the printed process groups, input split and class, in real Gloo ranks.
    yc_cases = []
    for seq, mask in ((4096, "causal"), (4096, "full")):
        rows, _ = printed_configs(a.cptune, "yunchang", [(seq, 8, 8, mask, a.ranks)])
        yc_cases += [{"kind": "yunchang", "python": r[3], "seq": seq, "label": f"{r[0]} {r[2]}"} for r in rows]
    yc = run_ranks(python, a.ranks, yc_cases)
    bad = [(c["label"], c["python"], e) for c, e in zip(yc_cases, yc) if e]
    report["construction"]["yunchang"] = {"configs": len(yc_cases), "failed": len(bad)}
    print(f"yunchang: {len(yc_cases)} printed configurations built in {a.ranks} Gloo ranks; {len(bad)} failed")
    for b in bad:
        report["failures"].append(f"yunchang {b[0]}: {b[1]} -> {b[2]}")

    # 2. diffusers' context-parallel attention on CPU ranks with cptune's printed configuration.
    P = a.ranks
    cases = []
    # Only diffusers' Ulysses modes run on CPU: its ring (ring_degree) needs the kernel's LSE, which
    # the NATIVE backend refuses ("does not support return_lse=True"), and ring_anything calls CUDA.
    for seq, heads, kv, mask, strategy in (
            (512, 8, 8, "full", "ulysses"), (1024, 16, 16, "full", "ulysses"), (515, 8, 8, "full", "uaa"),
            (515, 10, 10, "full", "uaa"), (515, 6, 6, "full", "uaa"), (515, 3, 3, "full", "uaa"),
            (512, 8, 8, "causal", "ulysses"), (512, 8, 2, "full", "ulysses")):
        text, refusal = cptune_python(a.cptune, "diffusers", P, seq, heads, kv, mask, strategy)
        # A refused shape is run with the configuration the engine would be given had cptune not
        # refused it: diffusers must raise there.
        forced = text or ("ContextParallelConfig(ulysses_degree=%d%s)" % (P, ", ulysses_anything=True"
                                                                           if strategy == "uaa" else ""))
        cases.append({"kind": "diffusers", "seq": seq, "heads": heads, "kv_heads": kv, "mask": mask,
                      "python": forced, "cptune_runs": bool(text), "refusal": refusal.splitlines()[-1] if refusal else "",
                      "label": f"S={seq} Hq={heads} Hkv={kv} {mask} {strategy or 'any'}"})
    results = run_ranks(python, P, cases)
    for c, r in zip(cases, results):
        # UAA gathers the per-rank lengths on the CUDA device: it cannot run on CPU ranks at all.
        cpu_only = not r["ok"] and "NVIDIA driver" in r["error"]
        agree = cpu_only or (c["cptune_runs"] == r["ok"] and (not r["ok"] or r["max_abs_error"] < 1e-4))
        entry = {"case": c["label"], "config": c["python"], "cptune_runs": c["cptune_runs"], **r, "agree": agree}
        report["attention"].append(entry)
        what = f'max abs error {r["max_abs_error"]:.2e}' if r["ok"] else r["error"]
        print(f'diffusers P={P} {c["label"]}: cptune {"runs" if c["cptune_runs"] else "refuses"} '
              f'{c["python"]}; engine: {what}{"" if agree else "  <-- DISAGREE"}')
        if not agree:
            report["failures"].append(f"diffusers attention {c['label']}: cptune_runs={c['cptune_runs']} {what}")

    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"{len(report['failures'])} failure(s)")
    for f in report["failures"]:
        print("  " + f)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
