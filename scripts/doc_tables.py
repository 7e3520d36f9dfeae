#!/usr/bin/env python3
"""Markdown tables of the docs that come from the simulator, the lookup and the mask reader, so
scripts/check_docs.py can re-run them (seconds each, no timing involved).

  scripts/doc_tables.py worked-study   best candidate per strategy on 2 x 8 H100, 32k..1M (configuration_studies.md)
  scripts/doc_tables.py sweep-heads    the winner per sequence length x query heads on 2 x 8 H100
  scripts/doc_tables.py sweep-worlds   the winner per sequence length x world on 8-GPU H100 nodes
  scripts/doc_tables.py engines        what each --engine profile allows on six shapes, and what lookup prints
  scripts/doc_tables.py ring-flash-attn  the held-out check against zhuzilin/ring-flash-attention's published tables
  scripts/doc_tables.py masks          cell counts, visible pairs and density of the four block patterns

`--binary PATH` names cptune (default build/tuner/cptune).
"""
import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile


def cptune(binary, *args, check=True):
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit(f"doc_tables: {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def simulate(binary, *args):
    return json.loads(cptune(binary, "simulate", *args, "--json").stdout)


def label(c):
    if c["strategy"].startswith("hybrid"):
        return f'{c["strategy"]} {c["ulysses"]}×{c["ring"]}' + (" ring-inner" if c["order"] == "ring-inner" else "")
    return f'{c["strategy"]} {c["ulysses"] * c["ring"]}'


def ms(seconds):
    v = seconds * 1e3
    return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"


def worked_study(binary):
    strategies = ["uaa", "ring-zigzag", "ring", "allgather-kv", "ulysses"]
    print("| sequence | winner (time) | " + " | ".join(f"best {s} / winner" for s in strategies) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in strategies) + " |")
    for seq, name in [(32768, "32k"), (131072, "128k"), (1048576, "1M")]:
        doc = simulate(binary, "--hardware", "h100-sxm", "--nodes", "2", "--ranks-per-node", "8", "--seq", str(seq),
                       "--heads", "24", "--kv-heads", "8", "--head-dim", "128", "--mask", "causal")
        c = doc["candidates"]
        best = c[0]
        cells = []
        for s in strategies:
            mine = [x for x in c if x["strategy"] == s]
            cells.append(f'{min(x["time_s"] for x in mine) / best["time_s"]:.2f}×' if mine else "cannot run")
        print(f"| {name} | {label(best)} ({ms(best['time_s'])}) | " + " | ".join(cells) + " |")


def winners(binary, axis, *flags):
    """Markdown: rows `axis` values, columns sequence lengths, cells the best candidate."""
    out = cptune(binary, "simulate", "--hardware", "h100-sxm", "--seq", "32k:1M", "--kv-heads", "8", "--head-dim",
                 "128", "--mask", "causal", *flags).stdout
    best = {}
    for r in csv.DictReader(io.StringIO(out)):
        key = (int(r[axis]), int(r["seq"]))
        if key not in best or float(r["time_s"]) < best[key][0]:
            best[key] = (float(r["time_s"]), label(r | {"ulysses": int(r["ulysses"]), "ring": int(r["ring"])}))
    seqs = sorted({s for _, s in best})
    name = {"heads": "Hq", "world": "world"}[axis]
    print(f"| {name} | " + " | ".join(f"{s // 1024}k" if s < 1 << 20 else f"{s >> 20}M" for s in seqs) + " |")
    print("| --- | " + " | ".join("---" for _ in seqs) + " |")
    for v in sorted({v for v, _ in best}):
        print(f"| {v} | " + " | ".join(best[(v, s)][1] for s in seqs) + " |")


SHAPES = [  # (title, simulate/lookup flags)
    ("25 heads (Hkv 5) on 3, S = 4096", ["--world", "3", "--seq", "4096", "--heads", "25", "--kv-heads", "5"]),
    ("24 heads (Hkv 8) on 8, S = 4096", ["--world", "8", "--seq", "4096", "--heads", "24", "--kv-heads", "8"]),
    ("4097 tokens (32/8, causal) on 8", ["--world", "8", "--seq", "4097", "--heads", "32", "--kv-heads", "8",
                                         "--mask", "causal"]),
    ("24 heads (Hkv 8) on 8, S = 32k, causal", ["--world", "8", "--seq", "32768", "--heads", "24", "--kv-heads", "8",
                                                "--mask", "causal"]),
    ("32 heads (Hkv 8) on 8, S = 32k, sliding:4096", ["--world", "8", "--seq", "32768", "--heads", "32", "--kv-heads",
                                                      "8", "--mask", "sliding:4096"]),
    ("24 heads on 4, S = 4096, block mask star:8", ["--world", "4", "--seq", "4096", "--heads", "24", "--mask", "star:8"]),
]


def engine_names(binary):
    """The engines with a profile, as the binary lists them (sim/engines/registry.cc, the one list)."""
    p = subprocess.run([binary, "simulate", "--world", "2", "--heads", "2", "--seq", "64", "--engine", "?"],
                       capture_output=True, text=True)
    listed = p.stderr.strip().split("engines: ", 1)
    if p.returncode != 2 or len(listed) != 2:
        sys.exit(f"doc_tables: cannot read the engine list from {binary}: {p.stderr.strip()}")
    return [name.strip() for name in listed[1].split(",")]


def allowed(candidates):
    """Strategy names in ranking order, hybrids with their U x R, each once."""
    seen = []
    for c in candidates:
        name = (f'{c["strategy"]} {c["ulysses"]}×{c["ring"]}' if c["strategy"].startswith("hybrid") else c["strategy"])
        if name not in seen:
            seen.append(name)
    return ", ".join(seen)


def engines(binary):
    with tempfile.TemporaryDirectory() as scratch:
        db = os.path.join(scratch, "empty.db")
        cptune(binary, "tune", "--db", db, "--world", "1", "--seq", "64", "--heads", "1", "--iterations", "1",
               "--warmups", "0")  # a store of this machine's fingerprint: every lookup below is simulated
        print("| engine | " + " | ".join(t for t, _ in SHAPES) + " |")
        print("| --- | " + " | ".join("---" for _ in SHAPES) + " |")
        for engine in engine_names(binary):
            cells = []
            for _, flags in SHAPES:
                p = cptune(binary, "simulate", "--hardware", "h100-sxm", "--engine", engine, *flags, "--json",
                           check=False)
                if p.returncode != 0:  # the rule that refused the last candidate, after the engine's name
                    cells.append(f"none ({p.stderr.strip().split(f'engine {engine}: ', 1)[-1]}; exit {p.returncode})")
                    continue
                ranked = json.loads(p.stdout)["candidates"]
                answer = cptune(binary, "lookup", "--db", db, "--hardware", "h100-sxm", "--engine", engine,
                                "--format", "python", "--head-dim", "128", *flags).stdout.strip()
                code = "`<br>`".join(answer.splitlines())  # a TOML answer's lines, each its own code span
                cells.append(f"{allowed(ranked)} → `{code}`")
            print(f"| {engine} | " + " | ".join(cells) + " |")


# zhuzilin/ring-flash-attention README @55ed8fe, "The current performance on 8xH800" and its A100 rows
# (benchmark/benchmark_qkvpacked_func.py: 8 GPUs, 8192 tokens per GPU, 5 heads, D 128, causal,
# bf16): iter/s of the zigzag and the plain ring, and the zigzag's (ring's) share of ideal, the
# single-GPU flash_attn row at 8192 tokens over 8. Published numbers: constants, not re-measured.
PUBLISHED = {
    ("H800", "fwd"): (283.0, 208.0, "93.6%", "68.8%"),
    ("H800", "fwd-bwd"): (75.7, 54.3, "85.9%", None),
    ("A100", "fwd"): (179.0, 124.4, "92.7%", None),
    ("A100", "fwd-bwd"): (49.5, 33.3, "84.1%", None),
}


def ring_flash_attn(binary):
    with tempfile.TemporaryDirectory() as scratch:
        # H800: the h100-sxm preset with NVLink at the H800's 200 GB/s per direction (datasheet).
        preset = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sim", "hardware", "h100-sxm.json")
        with open(preset) as f:
            h800 = json.load(f)
        h800["name"] = "h800 (h100-sxm, NVLink 200 GB/s)"
        h800["levels"][0]["bandwidth_bytes_per_s"] = 200e9
        h800_path = os.path.join(scratch, "h800.json")
        with open(h800_path, "w") as f:
            json.dump(h800, f)
        hardware = {"H800": h800_path, "A100": "a100"}

        def predict(gpu, pass_, world, seq):
            return simulate(binary, "--hardware", hardware[gpu], "--world", str(world), "--seq", str(seq), "--heads",
                            "5", "--head-dim", "128", "--mask", "causal", "--pass", pass_)["candidates"]

        print("| | published | predicted |")
        print("| --- | --- | --- |")
        absolute = {}
        for (gpu, pass_), (zz_pub, ring_pub, zz_share_pub, ring_share_pub) in PUBLISHED.items():
            ranked = predict(gpu, pass_, 8, 65536)
            zz = min(c["time_s"] for c in ranked if c["strategy"] == "ring-zigzag")
            ring = min(c["time_s"] for c in ranked if c["strategy"] == "ring")
            ideal = 8 * predict(gpu, pass_, 1, 8192)[0]["time_s"]
            name = f"{gpu} {'fwd' if pass_ == 'fwd' else 'fwd+bwd'}"
            print(f"| {name}: zigzag / plain ring speed | {zz_pub:.1f} / {ring_pub:.1f} = **{zz_pub / ring_pub:.2f}** | "
                  f"{ring / zz:.2f} |")
            print(f"| {name}: zigzag, share of ideal (single-GPU flash / 8) | **{zz_share_pub}** | {ideal / zz:.1%} |")
            if ring_share_pub:
                print(f"| {name}: plain ring, share of ideal | {ring_share_pub} | {ideal / ring:.1%} |")
            if pass_ == "fwd":
                absolute[gpu] = (zz_pub, 1 / zz)
        print(f"| absolute zigzag fwd, iter/s (H800 / A100) | {absolute['H800'][0]:.0f} / {absolute['A100'][0]:.0f} | "
              f"{absolute['H800'][1]:.0f} / {absolute['A100'][1]:.0f} |")


def masks(binary):
    print("| mask | FULL cells | CAUSAL cells | visible pairs at 128k | density |")
    print("| --- | --- | --- | --- | --- |")
    for mask in ["star:16", "stream:16,1,3", "strided:16,4", "global-local:16,1,2"]:
        doc = json.loads(cptune(binary, "mask", "show", mask, "--seq", "128k", "--json").stdout)
        print(f'| `{mask}` | {doc["cells"]["full"]} | {doc["cells"]["causal"]} | {doc["visible_pairs"]:,} | '
              f'{doc["density"]:.4f} |')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table", choices=["worked-study", "sweep-heads", "sweep-worlds", "engines", "ring-flash-attn", "masks"])
    ap.add_argument("--binary", default="build/tuner/cptune")
    a = ap.parse_args()
    tables = {
        "worked-study": worked_study,
        "sweep-heads": lambda b: winners(b, "heads", "--nodes", "2", "--ranks-per-node", "8", "--heads", "8:64:+8"),
        "sweep-worlds": lambda b: winners(b, "world", "--ranks-per-node", "8", "--world", "2:64", "--heads", "24"),
        "engines": engines,
        "ring-flash-attn": ring_flash_attn,
        "masks": masks,
    }
    tables[a.table](a.binary)


if __name__ == "__main__":
    main()
