#!/bin/bash
# Feeds cptune the bad inputs of the reliability audit (issue 15) and counts the outcomes: a
# clean error is exit code 2 with no "internal error"; a crash is a signal or exit 1; a hang is
# still running after 20 s. Prints one line per input that is not a clean error, then the totals.
#   scripts/bad-inputs.sh [build/tuner/cptune]
set -u
BIN=${1:-build/tuner/cptune}
DIR=$(mktemp -d /tmp/cptune_bad_XXXXXX)
trap 'rm -rf "$DIR"' EXIT
mkfifo "$DIR/fifo"
printf 'seq,heads\n256,4\n' >"$DIR/ok.csv"
printf '\xef\xbb\xbfseq,heads\n' >"$DIR/bom_only.csv"
python3 -c "print('seq,heads'); print('256,4\n' * 1700000, end='')" >"$DIR/dup.csv"
"$BIN" tune --db "$DIR/ok.db" --world 2 --seq 256 --heads 4 --head-dim 16 --iterations 1 --warmups 0 --no-verify >/dev/null 2>&1
S="--world 2 --seq 256 --heads 4 --head-dim 16"
cases=(
  "simulate --nodes 99999999999 --gpus-per-node 99999999 --seq 4096 --heads 8"
  "simulate --world 99999999999 --seq 4096 --heads 8"
  "layout --world 2 --seq 9223372036854775807 --heads 8"
  "layout --world 2 --seq-list 4611686018427387904,4611686018427387904 --heads 8"
  "layout --world 2 --seq 4096 --heads 8 --head-dim 9223372036854775807"
  "layout --world 2 --seq 4096 --heads 8 --mask sliding:9223372036854775807"
  "layout --world 2 --seq 4096 --heads 9223372036854775807 --kv-heads 1"
  "layout --world 2 --seq 4096 --heads 8 --batch 9223372036854775807"
  "run --world 2 --seq 4096 --heads 100000000"
  "run --world 2 --seq 4096 --heads 8 --head-dim 1000000000"
  "run --world 2 --seq 16M --heads 64"
  "run --world 2 --seq 1M --heads 4096"
  "tune --db $DIR/t.db --world 2 --seq 256 --heads 100000000"
  "tune --db $DIR/t.db --world 2 --shapes $DIR/fifo"
  "tune --db $DIR/t.db --world 2 --shapes /dev/zero"
  "tune --db $DIR/t.db --world 2 --shapes $DIR"
  "tune --db $DIR/t.db --world 2 --shapes $DIR/bom_only.csv"
  "tune --db $DIR/fifo $S"
  "tune --db $DIR $S"
  "tune --db $DIR/t.db $S --hardware $DIR/fifo"
  "simulate --hardware $DIR/fifo --world 2 --seq 4096 --heads 8"
  "simulate --hardware $DIR --world 2 --seq 4096 --heads 8"
  "simulate --hardware $(printf 'x%.0s' {1..5000}) --world 2 --seq 4096 --heads 8"
  "simulate --world 2 --seq 4096 --heads 8 --top 0"
  "simulate --world 2 --seq 4096 --heads 8 --top -1"
  "lookup --db $DIR/fifo $S"
  "lookup --db $DIR/ok.db --world 2 --seq-list -5,7 --heads 4 --head-dim 16"
  "lookup --db $DIR/ok.db --world 2 --seq 99999999999999 --heads 4 --head-dim 16"
  "lookup --db $DIR/ok.db --world 2 --seq 256 --heads 4 --kv-heads 3 --head-dim 16"
  "lookup --db $DIR/ok.db $S --backend x"
  "layout $S stray"
  "layout $S --ranks-per-node 3"
  "run --world 1 --seq 256 --heads 4 --rendezvous file://$DIR/ok.csv"
  "db check --db $DIR/fifo"
  "db show --db $DIR"
)
tried=0 clean=0 crashes=0 hangs=0 other=0
for c in "${cases[@]}"; do
  tried=$((tried + 1))
  # The rendezvous case is one rank of an outside launch (torchrun's variables).
  if [[ $c == *rendezvous* ]]; then
    RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 timeout 20 $BIN $c >/dev/null 2>"$DIR/err" </dev/null
  else
    timeout 20 $BIN $c >/dev/null 2>"$DIR/err" </dev/null
  fi
  rc=$?
  out=$(head -c 4000 "$DIR/err")
  if [ $rc -eq 124 ]; then hangs=$((hangs + 1)); echo "HANG   $c"
  elif [ $rc -eq 2 ] && [[ $out != *"internal error"* ]]; then clean=$((clean + 1))
  elif [ $rc -ge 128 ] || [[ $out == *"internal error"* ]]; then crashes=$((crashes + 1)); echo "CRASH  $c: ${out:0:200}"
  else other=$((other + 1)); echo "EXIT $rc $c: ${out:0:200}"
  fi
done
dup_start=$(date +%s.%N)
timeout 60 $BIN tune --db "$DIR/dup.db" --world 2 --shapes "$DIR/dup.csv" --iterations 1 --warmups 0 --no-verify >/dev/null 2>&1
echo "1.7M identical shape rows: exit $? in $(echo "$(date +%s.%N) - $dup_start" | bc) s"
echo "bad inputs tried $tried, clean errors $clean, crashes $crashes, hangs $hangs, other exits $other"
