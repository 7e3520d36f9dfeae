#!/usr/bin/env bash
# Runs one GoogleTest test many times outside ctest and counts the runs that fail, to show a
# once-flaky multi-process test no longer flakes (issue 26: a rank died of SIGPIPE 2 in 40).
#   scripts/flake_loop.sh [RUNS] [FILTER] [BINARY]
# Defaults: 200 runs of GlooCommFailure.RankThatDiesAfterRendezvousFailsTheOthersWithErrorWithinTheTimeout
# in build/tests/test_gloo_comm. Prints each failure's output and "RUNS runs, N failures"; exits 1
# when any run failed.
set -uo pipefail
runs=${1:-200}
filter=${2:-GlooCommFailure.RankThatDiesAfterRendezvousFailsTheOthersWithErrorWithinTheTimeout}
binary=${3:-build/tests/test_gloo_comm}
[[ -x $binary ]] || { echo "flake_loop: $binary is not built (cmake --build build --target $(basename "$binary"))" >&2; exit 2; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
failures=0
start=$(date +%s)
for ((i = 1; i <= runs; ++i)); do
  if ! timeout 120 "$binary" --gtest_filter="$filter" >"$log" 2>&1 || ! grep -q '\[  PASSED  \] 1 test' "$log"; then
    failures=$((failures + 1))
    echo "--- run $i failed:"
    grep -E 'killed|FAILED|rank [0-9]+:|error' "$log" | head -20
  fi
done
echo "$filter: $runs runs, $failures failures, $(( $(date +%s) - start )) s"
((failures == 0))
