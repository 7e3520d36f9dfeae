#!/usr/bin/env bash
# Every speed number docs/speed.md quotes, measured in one run and printed with the date, the machine
# and the commit: the docs' numbers are copies of this script's output (rerun it to refresh them).
#   scripts/bench_report.sh [build-dir]     (after scripts/build.sh; ~3 minutes)
# Medians of 3 repetitions, pinned to one core; "cpu" is CPU time, which a busy machine
# disturbs less than wall time (both are printed: compare them to see how busy it was).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
bench=$build/bench
cpu=$(( $(nproc) > 1 ? 1 : 0 ))
echo "cptune bench report: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
run() {  # name binary filter
  echo
  echo "== $1 (taskset -c $cpu $(basename "$2") --benchmark_filter='$3')"
  taskset -c "$cpu" "$2" --benchmark_filter="$3" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
    2>/dev/null | awk '/_median/ {sub(/_median/, ""); print}'
}
run "layout build (P = 8 ... 1024)" "$bench/bench_layout" '.'
run "simulator: prepared predict, whole rankings" "$bench/bench_sim" 'Predict|RankCandidates'
run "lookup: open 5k / 100k shapes, queries, C ABI" "$bench/bench_lookup" '.'
run "CPU attention kernel, S = 2k, per instruction set" "$bench/bench_attention_cpu" 'tile_sgemm|attend/.*/S:2048'
