#!/usr/bin/env bash
# Real launchers start cptune ranks: torchrun (Debian's python3-torch) and mpirun (openmpi-bin),
# each with and without the flags a user forgets. Asserts one run of `world` ranks (rank 0's
# report printed exactly once), or exit 2 with a message naming the fix; never a silent fork of
# world x world ranks. Exits 77 (skipped) when neither launcher is installed.
# usage: check_launchers.sh path/to/cptune
set -uo pipefail
CPTUNE=$(readlink -f "$1")
SHAPE=(--strategy uaa --seq 257 --heads 8 --kv-heads 2 --head-dim 16 --iterations 1 --warmups 0 --verify --timeout 20)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failures=0 ran=0

# expect NAME WANT_RC WANT_REPORTS GREP -- command...: WANT_REPORTS lines "cptune run:" in stdout.
expect() {
  local name=$1 want_rc=$2 want_reports=$3 pattern=$4
  shift 5
  ran=$((ran + 1))
  timeout 180 "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  local reports
  reports=$(grep -c "cptune run:" "$WORK/out")
  # Launchers wrap a child's exit code in their own; only 0 versus non-zero is compared for them.
  local ok=1
  if [[ $want_rc == 0 ]]; then [[ $rc == 0 ]] || ok=0; else [[ $rc != 0 ]] || ok=0; fi
  [[ $reports == "$want_reports" ]] || ok=0
  if [[ -n $pattern ]] && ! grep -q -- "$pattern" "$WORK/out" "$WORK/err"; then ok=0; fi
  if ((ok)); then
    echo "PASS $name (exit $rc, $reports report(s))"
  else
    echo "FAIL $name: exit $rc (want $want_rc), $reports report(s) (want $want_reports), pattern '$pattern'"
    tail -n 15 "$WORK/out" "$WORK/err"
    failures=$((failures + 1))
  fi
}

TORCHRUN=(/usr/bin/python3 -m torch.distributed.run --nproc_per_node 4 -r 1 -t 1 --no_python)
if /usr/bin/python3 -c "import torch.distributed.run" 2>/dev/null; then
  cd "$WORK"
  expect "torchrun, no flags (env:// default, world from WORLD_SIZE)" 0 1 "PASSED" -- \
    env MASTER_PORT=29611 "${TORCHRUN[@]}" --master_port 29611 "$CPTUNE" run "${SHAPE[@]}"
  expect "torchrun, --world 4 (agrees)" 0 1 "PASSED" -- \
    "${TORCHRUN[@]}" --master_port 29621 "$CPTUNE" run --world 4 "${SHAPE[@]}"
  expect "torchrun, --world 2 (disagrees: exit 2)" 2 0 "disagrees with the launcher's world size 4" -- \
    "${TORCHRUN[@]}" --master_port 29631 "$CPTUNE" run --world 2 "${SHAPE[@]}"
  mkdir -p "$WORK/tr-file"
  expect "torchrun, --rendezvous file://" 0 1 "PASSED" -- \
    "${TORCHRUN[@]}" --master_port 29641 "$CPTUNE" run --rendezvous "file://$WORK/tr-file" "${SHAPE[@]}"
  cd - >/dev/null
else
  echo "SKIP torchrun: /usr/bin/python3 has no torch (apt-get install --no-install-recommends python3-torch)"
fi

if command -v mpirun >/dev/null; then
  MPIRUN=(mpirun --allow-run-as-root --oversubscribe -np 4)
  expect "mpirun, no flags (exit 2, says what to pass)" 2 0 "pass --rendezvous" -- \
    "${MPIRUN[@]}" "$CPTUNE" run "${SHAPE[@]}"
  mkdir -p "$WORK/mpi-file"
  expect "mpirun, --rendezvous file://" 0 1 "PASSED" -- \
    "${MPIRUN[@]}" "$CPTUNE" run --rendezvous "file://$WORK/mpi-file" "${SHAPE[@]}"
  expect "mpirun, MASTER_ADDR/MASTER_PORT exported (env://)" 0 1 "PASSED" -- \
    env MASTER_ADDR=127.0.0.1 MASTER_PORT=29651 "${MPIRUN[@]}" -x MASTER_ADDR -x MASTER_PORT "$CPTUNE" run "${SHAPE[@]}"
  expect "mpirun, --world 8 (disagrees: exit 2)" 2 0 "disagrees with the launcher's world size 4" -- \
    "${MPIRUN[@]}" "$CPTUNE" run --world 8 --rendezvous "file://$WORK/mpi-file" "${SHAPE[@]}"
else
  echo "SKIP mpirun: not installed (apt-get install openmpi-bin)"
fi

((ran > 0)) || exit 77
echo "$((ran - failures)) of $ran launcher cases passed"
((failures == 0))
