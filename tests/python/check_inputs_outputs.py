#!/usr/bin/env python3
"""`cptune run --inputs q.npy,k.npy,v.npy --out o.npy` against attention computed here,
independently, with numpy in float64: every strategy, full / causal / sliding masks, GQA, a packed
batch of sequences, batch 2, world 3..6. fp32 runs must agree to 1e-4 (the executor's own fp32
tolerance), bf16 runs to 2 ulps of bf16 at 1.0 after rounding the inputs to bf16 here as well.
usage: check_inputs_outputs.py path/to/cptune
"""
import os, subprocess, sys, tempfile
import numpy as np

CPTUNE = sys.argv[1]
rng = np.random.default_rng(7)


def to_bf16(x):
    """Round float32 to the nearest bf16 (ties to even), back in float32."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16
    return b.astype(np.uint32).view(np.float32)


def reference(q, k, v, seq_lens, mask):
    """q: [B, S, Hq, D], k: [B, S, Hkv, D], v: [B, S, Hkv, Dv]; sequences packed along S."""
    q, k, v = (t.astype(np.float64) for t in (q, k, v))
    B, S, Hq, D = q.shape
    group = Hq // k.shape[2]
    out = np.zeros((B, S, Hq, v.shape[3]))
    start = 0
    for n in seq_lens:
        i = np.arange(n)[:, None]
        j = np.arange(n)[None, :]
        allowed = np.ones((n, n), bool)
        if mask == "causal":
            allowed = j <= i
        elif mask.startswith("sliding:"):
            w = int(mask.split(":")[1])
            allowed = (j <= i) & (j > i - w)
        for b in range(B):
            for h in range(Hq):
                s = q[b, start:start + n, h] @ k[b, start:start + n, h // group].T / np.sqrt(D)
                s = np.where(allowed, s, -np.inf)
                p = np.exp(s - s.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                out[b, start:start + n, h] = p @ v[b, start:start + n, h // group]
        start += n
    return out


CASES = [  # strategy, world, extra flags, seq_lens, Hq, Hkv, D, Dv, mask, batch, dtype
    ("uaa", 3, [], [257], 25, 5, 16, 16, "full", 1, "fp32"),
    ("ulysses", 4, [], [256], 8, 4, 16, 8, "causal", 1, "fp32"),
    ("ring-zigzag", 4, [], [301], 4, 2, 16, 16, "causal", 1, "fp32"),
    ("allgather-kv", 3, [], [77, 130], 6, 2, 8, 8, "sliding:40", 1, "fp32"),
    ("hybrid-uaa", 6, ["--ulysses", "3"], [200, 33], 7, 1, 16, 16, "causal", 2, "fp32"),
    ("hybrid", 4, ["--ulysses", "2", "--order", "ring-inner", "--ranks-per-node", "2"], [128], 4, 4, 16, 16, "causal", 1, "fp32"),
    ("uaa", 4, [], [513], 8, 2, 32, 32, "causal", 1, "bf16"),
]

failures = 0
with tempfile.TemporaryDirectory() as tmp:
    for strategy, world, extra, seq_lens, hq, hkv, d, dv, mask, batch, dtype in CASES:
        S = sum(seq_lens)
        q = rng.uniform(-1, 1, (batch, S, hq, d)).astype(np.float32)
        k = rng.uniform(-1, 1, (batch, S, hkv, d)).astype(np.float32)
        v = rng.uniform(-1, 1, (batch, S, hkv, dv)).astype(np.float32)
        paths = [os.path.join(tmp, n) for n in ("q.npy", "k.npy", "v.npy")]
        for p, t in zip(paths, (q, k, v)):
            np.save(p, t if batch > 1 else t[0])  # 3-D when batch is 1, as an engine would hand it
        out = os.path.join(tmp, "o.npy")
        seq_flag = ["--seq", str(seq_lens[0])] if len(seq_lens) == 1 else ["--seq-list", ",".join(map(str, seq_lens))]
        cmd = [CPTUNE, "run", "--world", str(world), "--strategy", strategy, *extra, *seq_flag, "--heads", str(hq),
               "--kv-heads", str(hkv), "--head-dim", str(d), "--v-head-dim", str(dv), "--mask", mask,
               "--batch", str(batch), "--dtype", dtype, "--iterations", "1", "--warmups", "0", "--verify",
               "--inputs", ",".join(paths), "--out", out]
        r = subprocess.run(cmd, capture_output=True, text=True)
        name = f"{strategy} P={world} {extra} seq={seq_lens} {hq}/{hkv} {mask} batch={batch} {dtype}"
        if r.returncode != 0:
            print(f"FAIL {name}: exit {r.returncode}\n{r.stdout}{r.stderr}")
            failures += 1
            continue
        got = np.load(out)
        if batch == 1:
            got = got[None]
        if dtype == "bf16":
            q, k, v = to_bf16(q), to_bf16(k), to_bf16(v)
        want = reference(q, k, v, seq_lens, mask)
        tol = 1e-4 if dtype == "fp32" else 2 * 2.0 ** -7
        err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        ok = got.shape == want.shape and err <= tol
        print(f"{'PASS' if ok else 'FAIL'} {name}: max |O - O_numpy| = {err:.3g} (tolerance {tol:.3g}), shape {got.shape}")
        failures += not ok
sys.exit(1 if failures else 0)
