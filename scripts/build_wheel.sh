#!/usr/bin/env bash
# Builds the Python wheel that stands alone: a Release libcptune_lookup.so with libstdc++ and fmt
# compiled in and no debug info (-DCPTUNE_WHEEL=ON, its own build folder), SQLite's library
# bundled beside it (RUNPATH $ORIGIN), the package's version the library's, tagged
# py3-none-<platform>. Offline: setuptools and wheel come from Debian (python3-setuptools,
# python3-wheel). Prints the wheel's path.
#   scripts/build_wheel.sh [OUT_DIR]      (default build-wheel/dist)
#   pip install --no-index OUT_DIR/cptune-*.whl
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${CPTUNE_WHEEL_BUILD_DIR:-$root/build-wheel}
out=$(mkdir -p "${1:-$build/dist}" && cd "${1:-$build/dist}" && pwd)
export CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1
launcher=$(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache || true)
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCPTUNE_WHEEL=ON -DCPTUNE_WITH_CUDA=OFF \
  -DCPTUNE_BUILD_TESTS=OFF $launcher >/dev/null
cmake --build "$build" -j"${CPTUNE_JOBS:-2}" --target cptune_lookup >&2
library=$(ls "$build"/db/libcptune_lookup.so.[0-9] | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/python" "$work/src"  # pip builds in the tree: keep the repository clean
CPTUNE_LOOKUP_LIBRARY=$library /usr/bin/python3 -m pip wheel --quiet --no-deps --no-index --no-build-isolation \
  -w "$out" "$work/src" >&2
ls -t "$out"/cptune-*.whl | head -1
