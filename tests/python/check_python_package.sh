#!/usr/bin/env bash
# The Python package as a new user gets it: a fresh venv, `pip install` of python/ (offline, the
# library bundled from this build), then a lookup with an engine against a database written by a
# real `cptune tune`, in a process with a clean environment (no variable points at the library).
# usage: check_python_package.sh path/to/cptune path/to/libcptune_lookup.so.N source_dir
set -euo pipefail
CPTUNE=$(readlink -f "$1")
LIBRARY=$(readlink -f "$2")
SOURCE=$(readlink -f "$3")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Offline: the build backend (setuptools, wheel) comes from Debian's packages through the
# system site; the package itself lands in the venv.
/usr/bin/python3 -m venv --system-site-packages "$WORK/venv"
cp -r "$SOURCE/python" "$WORK/src"  # pip builds in the tree: keep the repository clean
CPTUNE_LOOKUP_LIBRARY="$LIBRARY" "$WORK/venv/bin/pip" install --quiet --no-index --no-build-isolation "$WORK/src"

"$CPTUNE" tune --db "$WORK/tune.db" --world 2 --seq 256 --heads 4 --kv-heads 2 --head-dim 16 \
  --iterations 1 --warmups 0 --exhaustive >"$WORK/tune.log" 2>&1 || { cat "$WORK/tune.log"; exit 1; }

cd "$WORK"
env -i PATH=/usr/bin:/bin "$WORK/venv/bin/python" - "$WORK/tune.db" <<'PY'
import os, sys
import cptune

db = sys.argv[1]
assert cptune.library_path().startswith(sys.prefix), (cptune.library_path(), sys.prefix)
print("library:", cptune.library_path())
print("fingerprints:", cptune.fingerprints(db))
assert any(" gloo cpu P=2 G=2 " in line for line in cptune.fingerprints(db)), cptune.fingerprints(db)

lookup = cptune.Lookup(db, world=2)
shape = cptune.Shape(seq_lens=[256], q_heads=4, kv_heads=2, head_dim=16)
plain = lookup.best(shape)
print("best:", plain)
assert plain.source == "exact" and plain.ulysses * plain.ring == 2

for engine in cptune.ENGINES:
    try:
        a = lookup.best(shape, engine=engine)
    except cptune.NotFound as e:
        print(f"{engine}: none ({e})")
        continue
    print(f"{engine}: {a.strategy} U={a.ulysses} R={a.ring} ({a.source}) -> {a.config} | {a.args}")
    assert a.engine == engine and a.config and a.args is not None and isinstance(a.config_json, dict)

# diffusers refuses GQA (attention_dispatch.py): an MHA shape, priced on the GPU preset asked for.
mha = cptune.Shape(seq_lens=[256], q_heads=4, kv_heads=4, head_dim=16)
d = cptune.Lookup(db, world=2, hardware="h100-sxm").best(mha, engine="diffusers")
assert d.strategy in ("ulysses", "uaa", "allgather-kv") and d.source == "simulated", d
assert d.config.startswith("ContextParallelConfig("), d.config

# No database: the simulator answers (cpu-gloo for CPU ranks without an engine).
nodb = cptune.Lookup(None, world=4).best(cptune.Shape(seq_lens=[4096], q_heads=8))
assert nodb.source == "simulated", nodb
assert len(cptune.ENGINES) >= 10 and "vllm-omni" in cptune.engines(), cptune.ENGINES
try:
    cptune.Lookup(None, world=4, hardware="h100-sxm").best(
        cptune.Shape(seq_lens=[4096], q_heads=8, mask="causal"), engine="diffusers")
    raise SystemExit("expected NotFound")
except cptune.NotFound as e:  # names the rule that refused the last candidate, and its source
    assert "is_causal" in str(e) and "huggingface/diffusers @" in str(e), str(e)
    print("not found (rule):", e)

try:
    cptune.Lookup(db, world=8).best(shape)  # never measured on 8 ranks, no simulator on 8? it has one
except cptune.NotFound as e:
    print("not found:", e)
try:
    cptune.Lookup(db, world=8, hardware=None).best(shape)
    raise SystemExit("expected NotFound")
except cptune.NotFound as e:
    assert "closest it holds is gloo cpu P=2" in str(e), str(e)
    print("not found (measured only):", e)
try:
    lookup.best(shape, engine="vllm")
    raise SystemExit("expected CptuneError")
except cptune.CptuneError as e:
    assert "vllm" in str(e), str(e)
print("python package OK")
PY
