#!/usr/bin/env bash
# Every strategy's forward + backward run for real on CPU ranks (Gloo) and verified on odd shapes
# (uneven heads and sequences, GQA, a packed batch, causal, sliding and block masks, worlds 2 to 6):
# per shape, the worst error / tolerance of O, dQ, dK, dV over every layout that lays out (both head
# policies; hybrids at every U x R and both rank orders). Exits 1 when any run fails verification.
#
#   scripts/verify_backward.sh [path/to/cptune]      # default build/tuner/cptune
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CPTUNE=${1:-$ROOT/build/tuner/cptune}
RUN=(--pass fwd+bwd --verify --json --iterations 1 --warmups 0 --head-dim 16 --v-head-dim 8)

# name | world | shape flags
SHAPES=(
  "uneven heads 25/5, S=203, full|5|--seq 203 --heads 25 --kv-heads 5"
  "GQA 32/8, S=190, causal|6|--seq 190 --heads 32 --kv-heads 8 --mask causal"
  "packed 77,150,9 x2, fp32, causal|4|--seq-list 77,150,9 --batch 2 --heads 6 --kv-heads 2 --dtype fp32 --mask causal"
  "S=1001, causal|4|--seq 1001 --heads 8 --kv-heads 8 --mask causal"
  "sliding:37, S=301, fp16|2|--seq 301 --heads 4 --kv-heads 2 --dtype fp16 --mask sliding:37"
  "block mask star:8, 77,301|4|--seq-list 77,301 --heads 6 --kv-heads 2 --mask star:8"
  "GQA 25/5 on 3, S=257, full|3|--seq 257 --heads 25 --kv-heads 5"
)

meshes() {  # strategy world -> the --ulysses values to try ("" for fixed meshes)
  case $1 in
    hybrid|hybrid-uaa) for u in $(seq 2 $(($2 - 1))); do (($2 % u == 0)) && echo "$u"; done ;;
    *) echo "-" ;;
  esac
}

failed=0
printf "%-34s %5s %5s %9s %9s %9s %9s\n" shape world runs O dQ dK dV
for entry in "${SHAPES[@]}"; do
  IFS='|' read -r name world flags <<<"$entry"
  read -ra shape <<<"$flags"
  results=$(mktemp)
  runs=0
  for strategy in ulysses uaa ring ring-zigzag allgather-kv hybrid hybrid-uaa; do
    for u in $(meshes "$strategy" "$world"); do
      orders=(ulysses-inner)
      [[ $u != - ]] && orders=(ulysses-inner ring-inner)
      for order in "${orders[@]}"; do
        for policy in balanced kv-aligned; do
          mesh=(--world "$world" --strategy "$strategy" --head-policy "$policy")
          [[ $u != - ]] && mesh+=(--ulysses "$u" --order "$order")
          set +e
          out=$("$CPTUNE" run "${mesh[@]}" "${shape[@]}" "${RUN[@]}" 2>/tmp/verify_backward.err)
          code=$?
          set -e
          if ((code == 2)) && grep -qE "^cptune( run)?: error" /tmp/verify_backward.err && ! grep -q "failed" /tmp/verify_backward.err; then
            continue  # the layout is refused for this shape (e.g. classic Ulysses, heads not divisible)
          fi
          if ((code != 0)); then
            echo "FAILED ($code): ${mesh[*]} $flags" >&2
            cat /tmp/verify_backward.err >&2
            failed=1
          fi
          [[ -n $out ]] && echo "$out" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$results"
          runs=$((runs + 1))
        done
      done
    done
  done
  python3 - "$results" "$name" "$world" "$runs" <<'PY'
import json, sys
path, name, world, runs = sys.argv[1:5]
worst = {"O": 0.0, "dQ": 0.0, "dK": 0.0, "dV": 0.0}
for line in open(path):
    r = json.loads(line)
    worst["O"] = max(worst["O"], r["error_ratio"])
    for key, g in (("dQ", "dq"), ("dK", "dk"), ("dV", "dv")):
        worst[key] = max(worst[key], r["gradients"][g]["error_ratio"])
print(f"{name:<34} {world:>5} {runs:>5} " + " ".join(f"{worst[k]:>9.3f}" for k in ("O", "dQ", "dK", "dV")))
PY
  rm -f "$results"
done
echo "worst error / tolerance over every layout of the shape (passes at <= 1)"
exit $failed
