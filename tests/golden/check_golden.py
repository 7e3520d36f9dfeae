#!/usr/bin/env python3
"""Behaviour unchanged: the CLI's JSON outputs on a fixed set of shapes equal the outputs recorded
before the vocabulary refactor (tests/golden/expected/*.json, made with --write).

Compared: every key of the recorded output, recursively (keys added later are allowed), numbers
exactly (integers) or to 1e-12 relative (floats). Measured times are not compared (keys listed in
VOLATILE). Phase names recorded under their old spellings are mapped to the one vocabulary of
core::Phase (docs/design.md "Phases"), the one intended change.
usage: check_golden.py --binary build/tuner/cptune [--write]
"""
import argparse, json, math, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
HW = os.path.join(HERE, "two_level.json")
SHAPE_RUN = ["--seq", "77", "--heads", "5", "--kv-heads", "1", "--head-dim", "16", "--iterations", "1", "--warmups", "0"]
CASES = {
    "layout_uaa_25_on_3": ["layout", "--seq", "4097", "--heads", "25", "--kv-heads", "5", "--head-dim", "128", "--world", "3", "--strategy", "uaa", "--json"],
    "layout_hybrid_uaa": ["layout", "--seq", "1001", "--heads", "24", "--kv-heads", "8", "--world", "6", "--ulysses", "3", "--strategy", "hybrid-uaa", "--mask", "causal", "--json"],
    "layout_zigzag_packed": ["layout", "--seq-list", "77,4097", "--heads", "32", "--kv-heads", "8", "--world", "8", "--strategy", "ring-zigzag", "--mask", "sliding:300", "--ranks-per-node", "4", "--json"],
    "layout_hybrid_ring_inner": ["layout", "--seq", "4096", "--heads", "16", "--world", "8", "--ulysses", "2", "--strategy", "hybrid", "--order", "ring-inner", "--ranks-per-node", "4", "--json"],
    "layout_allgather_kv_aligned": ["layout", "--seq", "999", "--heads", "12", "--kv-heads", "4", "--world", "4", "--strategy", "allgather-kv", "--json"],
    "simulate_2x8_causal_fwd_bwd": ["simulate", "--hardware", HW, "--seq", "128k", "--heads", "24", "--kv-heads", "8", "--mask", "causal", "--pass", "fwd-bwd", "--json"],
    "simulate_2x8_device_metadata": ["simulate", "--hardware", HW, "--seq", "4097", "--heads", "25", "--kv-heads", "5", "--metadata", "device", "--json"],
    "simulate_world_3": ["simulate", "--hardware", HW, "--world", "3", "--seq", "32k", "--heads", "32", "--kv-heads", "8", "--mask", "sliding:4096", "--json"],
    "simulate_cpu_gloo": ["simulate", "--hardware", "cpu-gloo", "--world", "4", "--seq", "2048", "--heads", "8", "--head-dim", "64", "--mask", "causal", "--json"],
    "lookup_simulated": ["lookup", "--db", "{db}", "--world", "16", "--ranks-per-node", "8", "--hardware", HW, "--seq", "64k", "--heads", "24", "--kv-heads", "8", "--mask", "causal", "--json"],
    "run_uaa": ["run", "--world", "2", "--strategy", "uaa", "--verify", "--json"] + SHAPE_RUN,
    "run_hybrid_uaa": ["run", "--world", "4", "--strategy", "hybrid-uaa", "--ulysses", "2", "--mask", "causal", "--verify", "--json"] + SHAPE_RUN,
    "run_allgather": ["run", "--world", "3", "--strategy", "allgather-kv", "--verify", "--json"] + SHAPE_RUN,
}
VOLATILE = {"time_s", "max_abs_err", "tolerance", "median", "min", "max", "median_s", "verify_max_abs_error",
            "verify_error_ratio", "cpu_isa", "elapsed_s"}
OLD_PHASES = {"meta": "gather", "qkv_a2a": "qkv", "allgather_kv": "allgather", "out_a2a": "o"}


def normalize(v):
    if isinstance(v, dict):
        return {OLD_PHASES.get(k, k): normalize(x) for k, x in v.items()}
    if isinstance(v, list):
        return [normalize(x) for x in v]
    return v


def compare(want, got, path, errors):
    if isinstance(want, dict):
        if not isinstance(got, dict):
            errors.append(f"{path}: want an object, got {got!r}"[:300])
            return
        for k, w in want.items():
            if k not in got:
                errors.append(f"{path}.{k}: missing")
            elif k in VOLATILE and not isinstance(w, dict):
                continue
            elif k in VOLATILE:
                if set(w) != set(got[k]):
                    errors.append(f"{path}.{k}: keys {sorted(got[k])} != {sorted(w)}")
            else:
                compare(w, got[k], f"{path}.{k}", errors)
    elif isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            errors.append(f"{path}: want a list of {len(want)}, got {str(got)[:200]}")
            return
        for i, (w, g) in enumerate(zip(want, got)):
            compare(w, g, f"{path}[{i}]", errors)
    elif isinstance(want, float) and isinstance(got, (int, float)):
        if not (math.isclose(want, got, rel_tol=1e-12, abs_tol=1e-300) or (math.isnan(want) and math.isnan(got))):
            errors.append(f"{path}: {got!r} != {want!r}")
    elif want != got:
        errors.append(f"{path}: {got!r} != {want!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    expected_dir = os.path.join(HERE, "expected")
    os.makedirs(expected_dir, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "tune.db")  # one tiny tuned shape; the lookups ask for other fingerprints
        subprocess.run([args.binary, "tune", "--db", db, "--world", "2", "--seq", "64", "--heads", "2", "--head-dim", "8",
                        "--iterations", "1", "--warmups", "0"], check=True, capture_output=True, timeout=300)
        for name, argv in CASES.items():
            argv = [a.replace("{db}", db) for a in argv]
            p = subprocess.run([args.binary] + argv, capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                print(f"FAIL {name}: exit {p.returncode}: {p.stderr.strip()[:500]}")
                failed += 1
                continue
            got = normalize(json.loads(p.stdout))
            path = os.path.join(expected_dir, name + ".json")
            if args.write:
                with open(path, "w") as f:
                    json.dump(got, f, indent=1, sort_keys=True)
                    f.write("\n")
                continue
            errors = []
            compare(json.load(open(path)), got, name, errors)
            if errors:
                failed += 1
                print(f"FAIL {name}: {len(errors)} differences, first: " + "; ".join(errors[:5]))
            else:
                print(f"ok   {name}")
    print(f"{len(CASES) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
