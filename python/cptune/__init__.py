"""cptune: which context-parallel layout to run for an attention shape, from a tuning database.

    import cptune
    answer = cptune.Lookup("tune.db", world=8).best(cptune.Shape([4096], q_heads=24, kv_heads=8),
                                                    engine="diffusers")
    answer.config  # 'ContextParallelConfig(ulysses_degree=8)'
"""
from ._lookup import (ABI_VERSION, Answer, Lookup, CptuneError, Mask, NotFound, Shape, engines, fingerprints,
                      library_path, library_version, use_library)

__all__ = ["ABI_VERSION", "Answer", "ENGINES", "Lookup", "CptuneError", "Mask", "NotFound", "Shape", "engines",
           "fingerprints", "library_path", "library_version", "use_library"]
try:
    from ._version import VERSION as __version__  # written by setup.py: the bundled library's release
except ImportError:  # a source tree or a cmake install: the library's own
    __version__ = None


def __getattr__(name):
    # ENGINES: the library's own list (cptune_lookup_engines), read when first asked for.
    if name == "ENGINES":
        return tuple(engines())
    raise AttributeError(f"module 'cptune' has no attribute {name!r}")
