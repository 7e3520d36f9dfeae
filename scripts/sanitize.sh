#!/bin/sh
# Builds cptune with AddressSanitizer and UndefinedBehaviorSanitizer in build-asan (no CUDA) and
# runs a subset of the suite there within a time bound. Any sanitizer report is fatal
# (-fno-sanitize-recover), so it fails its test.
#   scripts/sanitize.sh                     # the default subset, 30 minutes at most
#   TESTS='Store|Lookup' LIMIT=600 scripts/sanitize.sh
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-asan}
JOBS=${JOBS:-2}
LIMIT=${LIMIT:-1800}
TESTS=${TESTS:-'RanksDie|TuneLease|CAbiCodes|DamagedDatabase|BadInput|ShapesFile|Store|Lookup|PythonClient|Cli|Layout'}
TARGETS=${TARGETS:-"cptune test_reliability test_store test_lookup test_lookup_python test_cli test_layout"}
# Left out: the C program built against the installed library is compiled without the sanitizer
# runtime the library needs, and so is the Python interpreter that loads the installed package's
# library (ASan must come first in the process).
EXCLUDE=${EXCLUDE:-'InstalledLookup.ACProgramBuilds|InstalledLookup.ThePythonPackageFindsTheLibraryOfItsPrefix'}
launcher=""
command -v ccache >/dev/null && launcher="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
# Paths relative to the checkout, so another clone's sanitizer build is a cache hit.
CCACHE_BASEDIR=$(pwd)
CCACHE_NOHASHDIR=1
export CCACHE_BASEDIR CCACHE_NOHASHDIR
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCPTUNE_WITH_CUDA=OFF \
  -DCPTUNE_SANITIZE=address,undefined $launcher >/dev/null
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$JOBS" --target $TARGETS
# Leaks are left out: third-party libraries keep some allocations for the process's lifetime.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
cd "$BUILD"
timeout "$LIMIT" ctest -j"$JOBS" -R "$TESTS" -E "$EXCLUDE" --timeout 600 --output-on-failure
