#!/usr/bin/env python3
"""The Python client's command line from a source checkout: `python -m cptune` with the package
of this repository (python/cptune), no install needed. Engines import the package itself
(`pip install ./python`, docs/tuning.md); this script only saves the install when trying it.

    scripts/cptune_lookup.py --lib build/db/libcptune_lookup.so --db tune.db --world 4 --seq 4096 --heads 32
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from cptune.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
