"""C ABI audit (issue 15): bad values through cptune_lookup_* and the status db/cptune_lookup.h
promises for each; prints the cases that get another code and the count.
  python3 scripts/c-abi-cases.py build/db/libcptune_lookup.so tune.db
tune.db: any database written by `cptune tune --world 2 --seq 256 --heads 4 --head-dim 16`.
SKIP_FIFO=1 leaves out the FIFO case (a library that blocks on it hangs there)."""
import ctypes as C, os, sys, tempfile
lib = C.CDLL(sys.argv[1]); db = sys.argv[2]
tmp = tempfile.mkdtemp(prefix="cptune_cabi_"); fifo = os.path.join(tmp, "fifo").encode()
class FP(C.Structure): _fields_=[("struct_size",C.c_size_t),("backend",C.c_char_p),("device_model",C.c_char_p),("world",C.c_int64),("ranks_per_node",C.c_int64),("nodes",C.c_int64),("library_versions",C.c_char_p),("cptune_version",C.c_char_p)]
class SH(C.Structure): _fields_=[("struct_size",C.c_size_t),("batch",C.c_int64),("seq_lens",C.POINTER(C.c_int64)),("num_seqs",C.c_size_t),("q_heads",C.c_int64),("kv_heads",C.c_int64),("head_dim",C.c_int64),("v_head_dim",C.c_int64),("dtype",C.c_char_p),("mask",C.c_char_p)]
class CH(C.Structure): _fields_=[("struct_size",C.c_size_t),("strategy",C.c_char*32),("ulysses",C.c_int64),("ring",C.c_int64),("rank_order",C.c_char*32),("head_policy",C.c_char*32),("time_s",C.c_double),("source",C.c_int32),("measured_tokens",C.c_int64)]
OK, NF, INV, INT = 0, 1, -3, -5
def fp(world=2, rpn=2, nodes=1): return FP(C.sizeof(FP), b"gloo", b"cpu", world, rpn, nodes, None, None)
def open_hw(hw, f=None):
    h = C.c_void_p(); f = f or fp()
    st = lib.cptune_lookup_open_with_simulator(db.encode(), C.byref(f), hw, C.byref(h))
    if h: lib.cptune_lookup_close(h)
    return st
h = C.c_void_p(); assert lib.cptune_lookup_open_with_simulator(db.encode(), C.byref(fp()), b"cpu-gloo", C.byref(h)) == 0
def query(seqs, hq=4, hkv=4, d=16, mask=b"full"):
    arr = (C.c_int64*len(seqs))(*seqs)
    s = SH(C.sizeof(SH), 1, arr, len(seqs), hq, hkv, d, d, b"bf16", mask); out = CH(); out.struct_size = C.sizeof(CH)
    return lib.cptune_lookup_query(h, C.byref(s), C.byref(out))
os.mkfifo(fifo)
cases = [
  ("hardware path of 5000 characters", lambda: open_hw(b"x"*5000 + b".json"), INV),
  ("hardware name of 5000 characters", lambda: open_hw(b"x"*5000), INV),
  ("hardware is a directory", lambda: open_hw(tmp.encode()), INV),
  *([] if os.environ.get("SKIP_FIFO") else [("hardware is a FIFO", lambda: open_hw(fifo), INV)]),
  ("fingerprint world INT64_MAX", lambda: open_hw(b"", fp(2**63-1, 1, 2**63-1)), INV),
  ("kv_heads 3 with q_heads 4", lambda: query([256], 4, 3), INV),
  ("seq_lens {INT64_MAX}", lambda: query([2**63-1]), INV),
  ("seq_lens {2^62, 2^62}", lambda: query([2**62, 2**62]), INV),
  ("head_dim INT64_MAX", lambda: query([256], d=2**63-1), INV),
  ("q_heads INT64_MAX", lambda: query([256], 2**63-1, 1), INV),
  ("mask sliding:INT64_MAX", lambda: query([256], mask=b"sliding:9223372036854775807"), INV),
  ("seq_lens {-5, 7}", lambda: query([-5, 7]), INV),
  ("a measured shape", lambda: query([256]), OK),
]
wrong = 0
for name, call, want in cases:
    got = call()
    if got != want: wrong += 1; print(f"WRONG {name}: {got}, header says {want}")
print(f"C ABI cases {len(cases)}, wrong codes {wrong}")
os.remove(fifo); os.rmdir(tmp)
