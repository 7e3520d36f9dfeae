"""C ABI audit (issue 15): bad values through cptune_lookup_* and the status db/cptune_lookup.h
promises for each; prints the cases that get another code and the count.
  python3 scripts/c-abi-cases.py build/db/libcptune_lookup.so tune.db
tune.db: any database written by `cptune tune --world 2 --seq 256 --heads 4 --head-dim 16`.
SKIP_FIFO=1 leaves out the FIFO case (a library that blocks on it hangs there). Each case runs in
a forked child with a time limit, so a crash or a hang is counted as one, not the end of the run
(issue 26: NULL text buffers with a size, open_local's world, a num_seqs past the array)."""
import ctypes as C, os, signal, sys, tempfile
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
def open_local(world, rpn=1, hw=b"cpu-gloo"):
    h = C.c_void_p()
    st = lib.cptune_lookup_open_local(db.encode(), b"gloo", C.c_int64(world), C.c_int64(rpn), hw, None, C.byref(h))
    if h: lib.cptune_lookup_close(h)
    return st
def text_into_null(fn, *args, size=64):
    needed = C.c_size_t(0)
    return fn(*args, None, C.c_size_t(size), C.byref(needed))
def a_mask():
    m = C.c_void_p(); assert lib.cptune_lookup_mask_create(b"star:4", C.byref(m)) == 0
    return m
def query_num_seqs(n):
    seq = (C.c_int64*1)(256)
    s = SH(C.sizeof(SH), 1, seq, n, 4, 4, 16, 16, b"bf16", b"full"); out = CH(); out.struct_size = C.sizeof(CH)
    return lib.cptune_lookup_query(h, C.byref(s), C.byref(out))
lib.cptune_lookup_open_local.argtypes = [C.c_char_p, C.c_char_p, C.c_int64, C.c_int64, C.c_char_p, C.c_char_p, C.c_void_p]
lib.cptune_lookup_mask_text.argtypes = [C.c_void_p, C.c_char_p, C.c_size_t, C.c_void_p]
lib.cptune_lookup_list_fingerprints.argtypes = [C.c_char_p, C.c_char_p, C.c_size_t, C.c_void_p]
NULLARG = -1
os.mkfifo(fifo)
cases = [
  ("mask_text into a NULL buffer of size 64", lambda: text_into_null(lib.cptune_lookup_mask_text, a_mask()), NULLARG),
  ("list_fingerprints into a NULL buffer of size 64",
   lambda: text_into_null(lib.cptune_lookup_list_fingerprints, db.encode()), NULLARG),
  ("open_local world INT64_MAX", lambda: open_local(2**63-1), INV),
  ("open_local world 2^32 over 8 ranks per node", lambda: open_local(2**32, 8), INV),
  ("open_local ranks_per_node INT64_MAX", lambda: open_local(4, 2**63-1), INV),
  ("open_local world 0", lambda: open_local(0), INV),
  ("query num_seqs SIZE_MAX over a 1-element array", lambda: query_num_seqs(2**64-1), INV),
  ("open_local world 2, the same database", lambda: open_local(2, 2), OK),
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
def isolated(call, limit_s=20):
    """The call's status from a forked child: ("status", n), ("crash", signal) or ("hang", limit)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r); signal.alarm(limit_s)
        os.write(w, str(call()).encode()); os._exit(0)
    os.close(w)
    out = os.read(r, 64); os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ("hang", limit_s) if sig == signal.SIGALRM else ("crash", signal.Signals(sig).name)
    return ("status", int(out))
wrong = crashes = hangs = 0
for name, call, want in cases:
    kind, got = isolated(call)
    if kind == "crash": crashes += 1; print(f"CRASH {name}: {got}")
    elif kind == "hang": hangs += 1; print(f"HANG {name}: over {got} s")
    elif got != want: wrong += 1; print(f"WRONG {name}: {got}, header says {want}")
print(f"C ABI cases {len(cases)}, wrong codes {wrong}, crashes {crashes}, hangs {hangs}")
os.remove(fifo); os.rmdir(tmp)
