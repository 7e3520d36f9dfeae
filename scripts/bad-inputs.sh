#!/bin/bash
# Feeds cptune the bad inputs of the reliability audits (issues 15 and 26) and counts the outcomes:
# a clean error is exit code 2 with no "internal error" (exit 1 for an input that must fail
# verification); "accepted" is exit 0 on an input that must be refused (a wrong answer); a crash
# is a signal or an "internal error"; a hang is still running after 20 s. Prints one line per
# input that is not a clean error, then the totals; then the env:// store's hostile peers
# (scripts/store_peers.py) with their own totals.
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
# Issue 26: crafted .npy files (R is the run they feed), NCCL topology XML, nccl-tests logs.
/usr/bin/python3 - "$DIR" <<'PY'
import struct, sys
d = sys.argv[1]
def npy(name, header, data=b"", version=(1, 0)):
    h = header.encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    with open(f"{d}/{name}.npy", "wb") as f:
        f.write(b"\x93NUMPY" + bytes(version) + struct.pack("<H", len(h)) + h + data)
shape = "'shape': (8, 2, 4), }"
npy("ok", "{'descr': '<f4', 'fortran_order': False, " + shape, b"\0" * 256)
npy("huge", "{'descr': '<f4', 'fortran_order': False, 'shape': (1073741824,), }", b"\0" * 4000)
npy("neg", "{'descr': '<f4', 'fortran_order': False, 'shape': (-8, 2, 4), }", b"\0" * 256)
npy("v0", "{'descr': '<f4', 'fortran_order': False, " + shape, b"\0" * 256, (0, 0))
npy("v9", "{'descr': '<f4', 'fortran_order': False, " + shape, b"\0" * 256, (9, 0))
npy("fortran7", "{'descr': '<f4', 'fortran_order': 7, " + shape, b"\0" * 256)
npy("overflow", "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 8), }", b"\0" * 64)
nan = bytearray(256); nan[4 * 13:4 * 14] = struct.pack("<f", float("nan"))
npy("nan", "{'descr': '<f4', 'fortran_order': False, " + shape, bytes(nan))
gpu = '<pci busid="0000:01:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"><gpu dev="0" sm="80">{}</gpu></pci>'
def xml(name, body):
    open(f"{d}/{name}.xml", "w").write('<system version="1"><cpu numaid="0">' + body + "</cpu></system>")
xml("negnvlink", gpu.format('<nvlink target="0000:02:00.0" count="-12" tclass="0x030200"/>'))
xml("negnic", gpu.format("") + '<nic><net name="ib0" speed="-100000"/></nic>')
xml("negwidth", gpu.replace('link_width="16"', 'link_width="-16"').format(""))
open(f"{d}/deep.xml", "w").write('<system version="1">' + "<a>" * 30000 + "</a>" * 30000 + "</system>")
open(f"{d}/mismatch.xml", "w").write('<system version="1">\n<cpu numaid="0">\n</pci>\n</system>\n')
PY
LOG=$(dirname "$0")/../tests/fixtures/nccl_tests_alltoall_1node.txt
awk '/^ +[0-9]/ && !done { $6 = "nan"; done = 1 } { print }' "$LOG" >"$DIR/nan_time.txt"
awk '/^ +[0-9]/ { $7 = -$7 } { print }' "$LOG" >"$DIR/neg_algbw.txt"
awk '/^ +[0-9]/ { $6 = "10.00" } { print }' "$LOG" >"$DIR/const_time.txt"
R="run --world 1 --seq 8 --heads 2 --head-dim 4"
T="topology import"
O="--base a100-pcie --out $DIR/topo.json"
C="calibrate --base h100-sxm --out $DIR/cal.json --nccl-tests"
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
  "$R --inputs $DIR/huge.npy,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR/neg.npy,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR/v0.npy,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR/v9.npy,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR/fortran7.npy,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR/overflow.npy,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR/fifo,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs /dev/zero,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR,$DIR/ok.npy,$DIR/ok.npy"
  "$R --inputs $DIR/ok.npy,$DIR/ok.npy,$DIR/ok.npy --out $DIR/fifo"
  "$R --inputs $DIR/ok.npy,$DIR/ok.npy,$DIR/ok.npy --out /dev/full"
  "$R --inputs $DIR/nan.npy,$DIR/ok.npy,$DIR/ok.npy --verify"
  "$T $DIR/negnvlink.xml $O"
  "$T $DIR/negnic.xml $O"
  "$T $DIR/negwidth.xml $O"
  "$T $DIR/deep.xml $O"
  "$T $DIR/mismatch.xml $O"
  "$T $DIR/fifo $O"
  "$T /dev/zero $O"
  "$C $DIR/fifo"
  "$C /dev/zero"
  "$C $DIR/nan_time.txt"
  "$C $DIR/neg_algbw.txt"
  "$C $DIR/const_time.txt"
)
tried=0 clean=0 accepted=0 crashes=0 hangs=0 other=0
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
  # An input that must fail verification (a NaN) is clean at exit 1.
  want=2; [[ $c == *nan.npy* ]] && want=1
  if [ $rc -eq 124 ]; then hangs=$((hangs + 1)); echo "HANG   $c"
  elif [ $rc -eq $want ] && [[ $out != *"internal error"* ]]; then clean=$((clean + 1))
  elif [ $rc -eq 0 ]; then accepted=$((accepted + 1)); echo "ACCEPTED $c"
  elif [ $rc -ge 128 ] || [[ $out == *"internal error"* ]]; then crashes=$((crashes + 1)); echo "CRASH  $c: ${out:0:200}"
  else other=$((other + 1)); echo "EXIT $rc $c: ${out:0:200}"
  fi
done
dup_start=$(date +%s.%N)
timeout 60 $BIN tune --db "$DIR/dup.db" --world 2 --shapes "$DIR/dup.csv" --iterations 1 --warmups 0 --no-verify >/dev/null 2>&1
echo "1.7M identical shape rows: exit $? in $(echo "$(date +%s.%N) - $dup_start" | bc) s"
echo "bad inputs tried $tried, clean errors $clean, accepted $accepted, crashes $crashes, hangs $hangs, other exits $other"
/usr/bin/python3 "$(dirname "$0")/store_peers.py" "$BIN"
