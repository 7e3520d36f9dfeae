#!/usr/bin/env bash
# The main job on this machine's default: install, build, tune the shapes of
# scripts/shapes-default.csv (or $CPTUNE_SHAPES) on $CPTUNE_WORLD (4) local CPU ranks over Gloo
# into the SQLite file $CPTUNE_DB (./cptune.db), then show the store and one lookup.
# Rerunning skips the shapes already stored for this machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${CPTUNE_BUILD_DIR:-$root/build}
db=${CPTUNE_DB:-$PWD/cptune.db}
world=${CPTUNE_WORLD:-4}
"$root/scripts/build.sh"
cptune="$build/tuner/cptune"
"$cptune" tune --db "$db" --world "$world" --shapes "${CPTUNE_SHAPES:-$root/scripts/shapes-default.csv}" \
  --iterations "${CPTUNE_ITERATIONS:-5}"
echo
"$cptune" db show --db "$db"
echo
echo "lookup of a shape that was not measured (S=3000, nearest measured sequence of its family):"
"$cptune" lookup --db "$db" --world "$world" --seq 3000 --heads 8 --head-dim 64 --mask causal
