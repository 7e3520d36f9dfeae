#!/usr/bin/env python3
"""Python client of the cptune lookup library (libcptune_lookup.so), over ctypes.

How an engine written in Python asks which context-parallel layout to run:

    from cptune_lookup import CptuneLookup
    fp = {"backend": "gloo", "device_model": "cpu", "world": 4, "ranks_per_node": 4, "nodes": 1}
    with CptuneLookup("libcptune_lookup.so", "tune.db", fp) as lookup:
        choice = lookup.query(seq_lens=[4096], q_heads=32, kv_heads=8, head_dim=128, mask="causal")
        # {"source": "exact", "strategy": "uaa", "ulysses": 4, "ring": 1, ...} or None

Only the standard library is used. Run as a program it prints one answer (see --help); exit
code 0 with an answer, 1 without one, 2 on an error.
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import sys

ABI_VERSION = 1  # CPTUNE_LOOKUP_ABI_VERSION this client was written for

OK = 0
NOT_FOUND = 1
NAME_SIZE = 32


class CptuneLookupError(Exception):
    """A failed call: status is the library's negative status code."""

    def __init__(self, status, status_name, message):
        super().__init__(f"{status_name}: {message}")
        self.status = status


class _Fingerprint(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("backend", ctypes.c_char_p),
        ("device_model", ctypes.c_char_p),
        ("world", ctypes.c_int64),
        ("ranks_per_node", ctypes.c_int64),
        ("nodes", ctypes.c_int64),
        ("library_versions", ctypes.c_char_p),
        ("cptune_version", ctypes.c_char_p),
    ]


class _Shape(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("batch", ctypes.c_int64),
        ("seq_lens", ctypes.POINTER(ctypes.c_int64)),
        ("num_seqs", ctypes.c_size_t),
        ("q_heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("v_head_dim", ctypes.c_int64),
        ("dtype", ctypes.c_char_p),
        ("mask", ctypes.c_char_p),
    ]


class _Choice(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("strategy", ctypes.c_char * NAME_SIZE),
        ("ulysses", ctypes.c_int64),
        ("ring", ctypes.c_int64),
        ("rank_order", ctypes.c_char * NAME_SIZE),
        ("head_policy", ctypes.c_char * NAME_SIZE),
        ("time_s", ctypes.c_double),
        ("source", ctypes.c_int32),
        ("measured_tokens", ctypes.c_int64),
    ]


def _load(lib_path):
    """Loads the library and declares the C signatures (ctypes would otherwise guess int)."""
    lib = ctypes.CDLL(lib_path)
    lib.cptune_lookup_version.restype = ctypes.c_int
    lib.cptune_lookup_version.argtypes = []
    lib.cptune_lookup_open.restype = ctypes.c_int
    lib.cptune_lookup_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Fingerprint), ctypes.POINTER(ctypes.c_void_p)]
    lib.cptune_lookup_open_with_simulator.restype = ctypes.c_int
    lib.cptune_lookup_open_with_simulator.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Fingerprint), ctypes.c_char_p,
                                                      ctypes.POINTER(ctypes.c_void_p)]
    lib.cptune_lookup_query.restype = ctypes.c_int
    lib.cptune_lookup_query.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Shape), ctypes.POINTER(_Choice)]
    lib.cptune_lookup_shapes.restype = ctypes.c_size_t
    lib.cptune_lookup_shapes.argtypes = [ctypes.c_void_p]
    lib.cptune_lookup_close.restype = None
    lib.cptune_lookup_close.argtypes = [ctypes.c_void_p]
    for name in ("cptune_lookup_last_error", "cptune_lookup_library_version"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = []
    for name in ("cptune_lookup_status_name", "cptune_lookup_source_name"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_int]
    if lib.cptune_lookup_version() != ABI_VERSION:
        raise RuntimeError(f"{lib_path} has ABI {lib.cptune_lookup_version()}, this client speaks {ABI_VERSION}")
    return lib


def default_library_path():
    """$CPTUNE_LOOKUP_LIB, else the library the system linker finds."""
    path = os.environ.get("CPTUNE_LOOKUP_LIB") or ctypes.util.find_library("cptune_lookup")
    if not path:
        raise RuntimeError("libcptune_lookup.so not found; pass its path or set CPTUNE_LOOKUP_LIB")
    return path


def _text(value):
    return value.encode() if value else None


class CptuneLookup:
    """One open lookup: the database's rows for one fingerprint, held by the C library."""

    def __init__(self, lib_path, db_path, fingerprint, hardware=None):
        """hardware: a preset name or hardware JSON path; shapes of unmeasured families then get
        the simulator's pick (source "simulated"). None: measured answers only."""
        self._lib = _load(lib_path or default_library_path())
        fp = _Fingerprint(
            ctypes.sizeof(_Fingerprint),
            _text(fingerprint["backend"]),
            _text(fingerprint["device_model"]),
            int(fingerprint["world"]),
            int(fingerprint.get("ranks_per_node", fingerprint["world"])),
            int(fingerprint.get("nodes", 1)),
            _text(fingerprint.get("library_versions")),
            _text(fingerprint.get("cptune_version")),
        )
        self._handle = ctypes.c_void_p()
        self._check(self._lib.cptune_lookup_open_with_simulator(os.fsencode(db_path), ctypes.byref(fp), _text(hardware),
                                                                ctypes.byref(self._handle)))

    def _check(self, status):
        if status < 0:
            raise CptuneLookupError(status, self._lib.cptune_lookup_status_name(status).decode(),
                               self._lib.cptune_lookup_last_error().decode())
        return status

    @property
    def shapes(self):
        """Shapes measured under the fingerprint."""
        return self._lib.cptune_lookup_shapes(self._handle)

    def query(self, seq_lens, q_heads, kv_heads=0, head_dim=128, v_head_dim=0, dtype="bf16", mask="full", batch=1):
        """The layout to run for this shape as a dict, or None when there is no answer."""
        if self._handle is None or not self._handle.value:
            raise RuntimeError("the lookup is closed")
        seqs = (ctypes.c_int64 * len(seq_lens))(*seq_lens)
        shape = _Shape(ctypes.sizeof(_Shape), batch, seqs, len(seq_lens), q_heads, kv_heads, head_dim, v_head_dim,
                       _text(dtype), _text(mask))
        choice = _Choice(ctypes.sizeof(_Choice))
        if self._check(self._lib.cptune_lookup_query(self._handle, ctypes.byref(shape), ctypes.byref(choice))) != OK:
            return None
        return {
            "source": self._lib.cptune_lookup_source_name(choice.source).decode(),
            "strategy": choice.strategy.decode(),
            "ulysses": choice.ulysses,
            "ring": choice.ring,
            "order": choice.rank_order.decode(),
            "head_policy": choice.head_policy.decode(),
            "time_s": choice.time_s,
            "measured_tokens": choice.measured_tokens,
        }

    def close(self):
        if self._handle is not None and self._handle.value:
            self._lib.cptune_lookup_close(self._handle)
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="Ask the cptune lookup library which layout to run for one shape.")
    p.add_argument("--lib", help="path of libcptune_lookup.so (default: $CPTUNE_LOOKUP_LIB or the system's)")
    p.add_argument("--db", required=True, help="database written by cptune tune")
    p.add_argument("--backend", default="gloo")
    p.add_argument("--device-model", default="cpu")
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--ranks-per-node", type=int, default=0, help="default: world (one node)")
    p.add_argument("--nodes", type=int, default=0, help="default: world / ranks per node")
    p.add_argument("--library-versions", default="", help="default: any")
    p.add_argument("--cptune-version", default="", help="default: any")
    p.add_argument("--seq", required=True, help="sequence length, or lengths of a packed batch: 77,4097")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--kv-heads", type=int, default=0, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--v-head-dim", type=int, default=0, help="default: --head-dim")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--mask", default="full", help="full, causal, sliding:W, a block pattern (star:16) or blocks:N:ROWS")
    p.add_argument("--hardware", default="", help="simulate unmeasured families on this preset or JSON file")
    p.add_argument("--json", action="store_true", help="print JSON instead of one line")
    args = p.parse_args(argv)

    ranks_per_node = args.ranks_per_node or args.world
    fingerprint = {
        "backend": args.backend,
        "device_model": args.device_model,
        "world": args.world,
        "ranks_per_node": ranks_per_node,
        "nodes": args.nodes or -(-args.world // ranks_per_node),
        "library_versions": args.library_versions,
        "cptune_version": args.cptune_version,
    }
    try:
        seq_lens = [int(s) for s in args.seq.split(",")]
        with CptuneLookup(args.lib, args.db, fingerprint, args.hardware or None) as lookup:
            choice = lookup.query(seq_lens, args.heads, args.kv_heads, args.head_dim, args.v_head_dim, args.dtype,
                                  args.mask, args.batch)
    except (CptuneLookupError, RuntimeError, OSError, ValueError) as e:
        print(f"cptune_lookup.py: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(choice if choice else {"source": "not-found"}))
    elif choice:
        print(f"{choice['source']} {choice['strategy']} U={choice['ulysses']} R={choice['ring']} "
              f"{choice['order']} {choice['head_policy']} {choice['time_s']:.9g} s")
    else:
        print("not-found")
    return 0 if choice else 1


if __name__ == "__main__":
    sys.exit(main())
