"""The lookup library (libcptune_lookup.so, C ABI 1) over ctypes: typed answers in engines' terms."""
import ctypes
import ctypes.util
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

ABI_VERSION = 1
_OK, _NOT_FOUND = 0, 1
_NAME_SIZE = 32
_SOURCES = {0: "exact", 1: "nearest", 2: "simulated"}


class CptuneError(Exception):
    """A call the library refused: a bad argument, an unreadable database, an unknown engine."""


class NotFound(CptuneError):
    """No measured layout and no simulator answer for the shape; the message names the closest
    fingerprint the database holds and the rule that refused the simulator's last candidate."""


@dataclass(frozen=True)
class Shape:
    """One attention call. kv_heads 0 means q_heads, v_head_dim 0 means head_dim."""
    seq_lens: Sequence[int]
    q_heads: int
    kv_heads: int = 0
    head_dim: int = 128
    v_head_dim: int = 0
    dtype: str = "bf16"
    mask: Union[str, "Mask"] = "full"  # "full", "causal", "sliding:W", "star:16", ... or a Mask
    batch: int = 1


@dataclass(frozen=True)
class Answer:
    """The layout to run. config / args / config_json: the engine's own configuration (None
    without an engine). allgather-kv is its own strategy, never a ring."""
    strategy: str
    ulysses: int
    ring: int
    order: str
    head_policy: str
    time_s: float          # measured median (exact, nearest) or predicted (simulated)
    source: str            # "exact", "nearest", "simulated"
    measured_tokens: int   # tokens of the shape measured; 0 when simulated
    engine: Optional[str] = None
    config: Optional[str] = None
    args: Optional[str] = None
    config_json: Dict[str, object] = field(default_factory=dict)

    @property
    def rank_order(self) -> str:
        """The C ABI's and the store's name of `order` (the dict client of cptune 0.2 said "order")."""
        return self.order

    def as_dict(self) -> Dict[str, object]:
        """The answer as the command line's JSON prints it: every field, rank_order beside order."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["rank_order"] = self.order
        return out


class _Shape(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("batch", ctypes.c_int64),
                ("seq_lens", ctypes.POINTER(ctypes.c_int64)), ("num_seqs", ctypes.c_size_t),
                ("q_heads", ctypes.c_int64), ("kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64),
                ("v_head_dim", ctypes.c_int64), ("dtype", ctypes.c_char_p), ("mask", ctypes.c_char_p)]


class _Choice(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("strategy", ctypes.c_char * _NAME_SIZE),
                ("ulysses", ctypes.c_int64), ("ring", ctypes.c_int64),
                ("rank_order", ctypes.c_char * _NAME_SIZE), ("head_policy", ctypes.c_char * _NAME_SIZE),
                ("time_s", ctypes.c_double), ("source", ctypes.c_int32), ("measured_tokens", ctypes.c_int64)]


_BLOCK_CELLS = {".": 0, "F": 1, "f": 1, "C": 2, "c": 2}  # CPTUNE_LOOKUP_BLOCK_EMPTY, _FULL, _CAUSAL


class Mask:
    """A mask made once and passed to many queries (cptune_lookup_query_masked): any text --mask
    takes ("star:16", "strided:16,4", "blocks:table.txt", "blocks:4:C.../FC../F.C./F..C"), or a
    block table given as rows, one string of '.', 'F', 'C' per query block (or lists of 0 empty,
    1 full, 2 causal). text: the canonical text the store and `cptune mask show` print."""

    def __init__(self, text: Optional[str] = None, rows: Optional[Sequence[Union[str, Sequence[int]]]] = None):
        if (text is None) == (rows is None):
            raise CptuneError("give exactly one of text= and rows=")
        self._lib = _library()
        self._handle = ctypes.c_void_p()
        if text is not None:
            status = self._lib.cptune_lookup_mask_create(text.encode(), ctypes.byref(self._handle))
        else:
            n = len(rows)
            try:
                cells = [_BLOCK_CELLS[c] if isinstance(c, str) else int(c)
                         for row in rows for c in (row.replace(" ", "") if isinstance(row, str) else row)]
            except KeyError as e:
                raise CptuneError(f"a block table cell is '.', 'F' or 'C', not {e}") from None
            if len(cells) != n * n or not all(0 <= c <= 255 for c in cells):
                raise CptuneError(f"a table of {n} rows needs {n} x {n} cells of 0, 1 or 2; got {len(cells)}")
            array = (ctypes.c_uint8 * len(cells))(*cells)
            status = self._lib.cptune_lookup_mask_from_cells(n, array, ctypes.byref(self._handle))
        if status != _OK:
            _fail(self._lib, status)
        self.text = _text_call(self._lib, self._lib.cptune_lookup_mask_text, self._handle)

    def __repr__(self):
        return f"Mask({self.text if len(self.text) <= 60 else self.text[:57] + '...'!r})"

    def __del__(self):
        if getattr(self, "_handle", None):
            self._lib.cptune_lookup_mask_free(self._handle)
            self._handle = None


_library_override: Optional[str] = None


def use_library(path: Union[str, os.PathLike]) -> None:
    """Load this libcptune_lookup.so instead of the package's own (a build tree's, for
    scripts/cptune_lookup.py --lib). Call before the first lookup."""
    global _library_override
    if _lib is not None:
        raise CptuneError("the library is already loaded; call use_library() before the first lookup")
    _library_override = os.fspath(path)


def library_path() -> str:
    """The library this package uses: one given to use_library(); the one bundled beside it (a
    wheel); the one of the prefix it was installed into (cmake --install writes _prefix.py);
    else the one the system linker finds."""
    if _library_override:
        return _library_override
    here = os.path.dirname(os.path.abspath(__file__))
    bundled = os.path.join(here, "libcptune_lookup.so")
    if os.path.isfile(bundled):
        return bundled
    try:
        from ._prefix import LIBRARY  # relative to this folder
        installed = os.path.normpath(os.path.join(here, LIBRARY))
        if os.path.isfile(installed):
            return installed
    except ImportError:
        pass
    found = ctypes.util.find_library("cptune_lookup")
    if not found:
        raise CptuneError("libcptune_lookup.so is neither bundled in the cptune package nor installed; reinstall "
                          "the package after building the repository (pip install ./python)")
    return found


def library_version() -> str:
    """The cptune release the loaded library was built from (the package has the same)."""
    return _library().cptune_lookup_library_version().decode()


_lib = None


def _library():
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(library_path())
    p, i64, c = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p
    sz, psz = ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)
    signatures = {
        "cptune_lookup_version": (ctypes.c_int, []),
        "cptune_lookup_library_version": (c, []),
        "cptune_lookup_open_local": (ctypes.c_int, [c, c, i64, i64, c, c, ctypes.POINTER(p)]),
        "cptune_lookup_open_local_pass": (ctypes.c_int, [c, c, i64, i64, c, c, c, ctypes.POINTER(p)]),
        "cptune_lookup_query": (ctypes.c_int, [p, ctypes.POINTER(_Shape), ctypes.POINTER(_Choice)]),
        "cptune_lookup_close": (None, [p]),
        "cptune_lookup_last_error": (c, []),
        "cptune_lookup_status_name": (c, [ctypes.c_int]),
        "cptune_lookup_list_fingerprints": (ctypes.c_int, [c, ctypes.c_char_p, sz, psz]),
        "cptune_lookup_engine_config": (ctypes.c_int, [c, ctypes.POINTER(_Shape), ctypes.POINTER(_Choice), c,
                                                       ctypes.c_char_p, sz, psz]),
        "cptune_lookup_mask_create": (ctypes.c_int, [c, ctypes.POINTER(p)]),
        "cptune_lookup_mask_from_cells": (ctypes.c_int, [i64, ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(p)]),
        "cptune_lookup_mask_text": (ctypes.c_int, [p, ctypes.c_char_p, sz, psz]),
        "cptune_lookup_mask_free": (None, [p]),
        "cptune_lookup_query_masked": (ctypes.c_int, [p, ctypes.POINTER(_Shape), p, ctypes.POINTER(_Choice)]),
        "cptune_lookup_engines": (ctypes.c_int, [ctypes.c_char_p, sz, psz]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    if lib.cptune_lookup_version() != ABI_VERSION:
        raise CptuneError(f"{library_path()} speaks ABI {lib.cptune_lookup_version()}, this package {ABI_VERSION}")
    _lib = lib
    return lib


def _fail(lib, status):
    raise CptuneError(f"{lib.cptune_lookup_status_name(status).decode()}: {lib.cptune_lookup_last_error().decode()}")


def _text_call(lib, fn, *args) -> str:
    needed = ctypes.c_size_t(0)
    status = fn(*args, None, 0, ctypes.byref(needed))
    if needed.value == 0:  # failed before sizing the text: the status and message say why
        _fail(lib, status)
    buffer = ctypes.create_string_buffer(needed.value)
    status = fn(*args, buffer, needed.value, ctypes.byref(needed))
    if status != _OK:
        _fail(lib, status)
    return buffer.value.decode()


def engines() -> List[str]:
    """The engines with a profile (the library's one list), e.g. "diffusers", "megatron"."""
    lib = _library()
    return _text_call(lib, lib.cptune_lookup_engines).splitlines()


def fingerprints(db: Union[str, os.PathLike]) -> List[str]:
    """One line per fingerprint the database holds ("1 gloo cpu P=4 G=4 nodes=1 shapes=3 (...)")."""
    lib = _library()
    return _text_call(lib, lib.cptune_lookup_list_fingerprints, os.fsencode(db)).splitlines()


class Lookup:
    """A tuning database opened for this machine: backend "gloo" (device "cpu") or "nccl" (the GPU
    model the driver reports), world and ranks per node (defaults: $WORLD_SIZE, $LOCAL_WORLD_SIZE,
    as torchrun sets them). db None: no database, every answer is the simulator's. hardware: a
    preset or hardware JSON for the simulator's answer when nothing of a shape's family was
    measured; "auto" the preset this machine's device names (an engine's or an nccl question on a
    CPU machine needs a GPU preset: CptuneError otherwise); None for measured answers only.
    pass_: "fwd" (default), "bwd" or "fwd+bwd": only that pass's measurements answer, the simulator
    prices that pass, and an engine's forward-only layouts are never answered with a backward."""

    def __init__(self, db: Optional[Union[str, os.PathLike]] = None, world: Optional[int] = None,
                 ranks_per_node: Optional[int] = None, backend: str = "gloo",
                 hardware: Optional[str] = "auto", pass_: str = "fwd"):
        if world is None:
            if "WORLD_SIZE" not in os.environ:
                raise CptuneError("give world= (ranks in the context-parallel group); $WORLD_SIZE is not set")
            world = int(os.environ["WORLD_SIZE"])
        if ranks_per_node is None:
            ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        self.db = os.fspath(db) if db is not None else None
        self.world, self.ranks_per_node = int(world), int(ranks_per_node)
        self.backend, self.hardware, self.pass_ = backend, hardware, pass_
        self._lib = _library()
        self._handles: Dict[str, ctypes.c_void_p] = {}

    def _handle(self, engine: Optional[str]) -> ctypes.c_void_p:
        key = engine or ""
        if key not in self._handles:
            handle = ctypes.c_void_p()
            status = self._lib.cptune_lookup_open_local_pass(
                os.fsencode(self.db) if self.db is not None else None, self.backend.encode(), self.world, self.ranks_per_node,
                self.hardware.encode() if self.hardware else None, key.encode(), self.pass_.encode(),
                ctypes.byref(handle))
            if status != _OK:
                _fail(self._lib, status)
            self._handles[key] = handle
        return self._handles[key]

    def best(self, shape: Union[Shape, dict], engine: Optional[str] = None) -> Answer:
        """The fastest layout for the shape that `engine` can run (any layout without one).
        Raises NotFound when there is none, CptuneError on a bad argument."""
        if isinstance(shape, dict):
            shape = Shape(**shape)
        seqs = (ctypes.c_int64 * len(shape.seq_lens))(*shape.seq_lens)
        mask = shape.mask if isinstance(shape.mask, Mask) else None
        c_shape = _Shape(ctypes.sizeof(_Shape), shape.batch, seqs, len(shape.seq_lens), shape.q_heads,
                         shape.kv_heads, shape.head_dim, shape.v_head_dim, shape.dtype.encode(),
                         (mask.text if mask else shape.mask).encode())
        choice = _Choice(ctypes.sizeof(_Choice))
        if mask:  # made once: the query does not parse its text again
            status = self._lib.cptune_lookup_query_masked(self._handle(engine), ctypes.byref(c_shape), mask._handle,
                                                          ctypes.byref(choice))
        else:
            status = self._lib.cptune_lookup_query(self._handle(engine), ctypes.byref(c_shape), ctypes.byref(choice))
        if status == _NOT_FOUND:
            raise NotFound(self._lib.cptune_lookup_last_error().decode())
        if status != _OK:
            _fail(self._lib, status)
        config = args = None
        config_json: Dict[str, object] = {}
        if engine:
            def render(fmt):
                return _text_call(self._lib, self._lib.cptune_lookup_engine_config, engine.encode(),
                                  ctypes.byref(c_shape), ctypes.byref(choice), fmt.encode())
            config, args, config_json = render("python"), render("args"), json.loads(render("json"))
        return Answer(choice.strategy.decode(), choice.ulysses, choice.ring, choice.rank_order.decode(),
                      choice.head_policy.decode(), choice.time_s, _SOURCES.get(choice.source, "unknown"),
                      choice.measured_tokens, engine, config, args, config_json)

    def close(self):
        for handle in self._handles.values():
            self._lib.cptune_lookup_close(handle)
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handles", None):
            self.close()
