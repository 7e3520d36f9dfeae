#!/bin/bash
# Builds the libFuzzer targets of tests/fuzz with clang (AddressSanitizer and
# UndefinedBehaviorSanitizer, every report fatal) in build-fuzz and runs each for a bounded time
# from its checked-in corpus (tests/fuzz/corpus/<target>). New inputs go to build-fuzz/corpus,
# crashes to build-fuzz/crashes; the exit code is non-zero when a target crashed.
#   scripts/fuzz.sh            # every target, 60 s each
#   SECONDS_EACH=600 scripts/fuzz.sh lookup_query
#   FUZZ_SEED=1 FUZZ_RUNS=20000 scripts/fuzz.sh   # the same inputs every time (what CI runs: a gate
#                                                 # must not fail on luck; exploration is for nightly runs)
# Needs clang (Debian: apt-get install clang) and a configured build/ (for cptune/version.h).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build-fuzz}
SECONDS_EACH=${SECONDS_EACH:-60}
CXX=${FUZZ_CXX:-clang++}
GENERATED=${GENERATED:-build/generated}
[ -f "$GENERATED/cptune/version.h" ] || { echo "configure build/ first (cmake -S . -B build)" >&2; exit 2; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(seq_lens block_mask shapes_csv hardware_json lookup_query)

flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
       -I. -I"$GENERATED" -I/usr/include/eigen3 -DCPTUNE_INSTALLED_HARDWARE_DIR=\"/nonexistent\")
core=(core/*.cc)
sim=(sim/*.cc sim/engines/*.cc)
db=(db/cptune_lookup.cc db/lease.cc db/local_fingerprint.cc db/lookup.cc db/open_lookup.cc db/records.cc db/schema.cc db/sim_fallback.cc db/sqlite.cc db/store.cc)
cli=(tuner/cli/shapes_file.cc tuner/cli/shape_options.cc)

# Each source compiled once into $OUT/obj, with libFuzzer's coverage but not its main().
objects() {
  for src in "$@"; do
    obj="$OUT/obj/${src//\//_}.o"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ]; then
      "$CXX" "${flags[@]}" -fsanitize=fuzzer-no-link -c "$src" -o "$obj"
    fi
    echo "$obj"
  done
}

mkdir -p "$OUT/obj" "$OUT/crashes"
status=0
for t in "${targets[@]}"; do
  case $t in
    seq_lens|block_mask) sources=("${core[@]}") libs=(-lfmt) ;;
    shapes_csv) sources=("${core[@]}" "${sim[@]}" "${cli[@]}") libs=(-lfmt -lboost_program_options -ldl) ;;
    hardware_json) sources=("${core[@]}" "${sim[@]}") libs=(-lfmt -ldl) ;;
    lookup_query) sources=("${core[@]}" "${sim[@]}" "${db[@]}") libs=(-lfmt -lsqlite3 -ldl) ;;
    *) echo "unknown fuzz target '$t'" >&2; exit 2 ;;
  esac
  mapfile -t objs < <(objects "${sources[@]}")
  "$CXX" "${flags[@]}" -fsanitize=fuzzer "tests/fuzz/fuzz_$t.cc" "${objs[@]}" "${libs[@]}" -o "$OUT/fuzz_$t"
  mkdir -p "$OUT/corpus/$t"
  echo "== fuzz_$t: ${SECONDS_EACH} s"
  if ! CPTUNE_HARDWARE_DIR="$PWD/sim/hardware" ASAN_OPTIONS=detect_leaks=0 \
      "$OUT/fuzz_$t" -max_total_time="$SECONDS_EACH" ${FUZZ_SEED:+-seed=$FUZZ_SEED} ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} \
      -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$OUT/crashes/$t-" "$OUT/corpus/$t" "tests/fuzz/corpus/$t" 2>"$OUT/fuzz_$t.log"; then
    echo "fuzz_$t FAILED: see $OUT/fuzz_$t.log and $OUT/crashes" >&2
    tail -30 "$OUT/fuzz_$t.log" >&2
    status=1
  else
    tail -1 "$OUT/fuzz_$t.log"
  fi
done
exit $status
