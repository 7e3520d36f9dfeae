#!/usr/bin/env bash
# Builds cptune and runs every test (ctest). The test command of README.md and .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${CPTUNE_BUILD_DIR:-$root/build}
"$root/scripts/build.sh"
cd "$build"
ctest --output-on-failure -j"${CPTUNE_JOBS:-2}" "$@"
