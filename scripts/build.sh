#!/usr/bin/env bash
# Installs dependencies, configures and builds cptune into ./build (or $CPTUNE_BUILD_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${CPTUNE_BUILD_DIR:-$root/build}
"$root/scripts/install-deps.sh"
# ccache with paths relative to the checkout: scripts/mutants.sh builds a copy of the tree with the
# same flags and finds every object it does not mutate already compiled.
export CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build "$build" -j"${CPTUNE_JOBS:-2}"
