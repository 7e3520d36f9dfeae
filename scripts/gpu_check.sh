#!/usr/bin/env bash
# The GPU checks of docs/gpu.md in one run, from a bundle made by scripts/gpu_bundle.sh (run from
# the repository root of the same commit): the GPU test programs, `cptune run --backend nccl
# --verify` on every strategy, and the kernel against PyTorch's SDPA. Logs go to $OUT (or
# ./gpu-logs). TESTS picks test programs; REST=0 stops after them.
set -u
root=$PWD
bundle=$(cd "${1:-.gpu-bundle}" && pwd)
logs=${OUT:-$root/gpu-logs}; mkdir -p "$logs"
nccl=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null)
# cuDNN 9 for the cuDNN kernel, loaded when first used: PyTorch's wheel brings one.
cudnn=$(python3 -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null)
export LD_LIBRARY_PATH=$bundle/lib${nccl:+:$nccl}${cudnn:+:$cudnn}:${LD_LIBRARY_PATH:-}
mkdir -p build/tuner build/bench build/tests build/share/cptune/hardware
# The tests name cptune, the presets and the sources by the absolute paths of the build they
# came from: link those paths here when this machine lacks them.
for pair in "source_dir:$root" "build_dir:$root/build"; do
  want=$(cat "$bundle/${pair%%:*}"); here=${pair#*:}
  if [ "$want" != "$here" ] && [ ! -e "$want" ]; then mkdir -p "$(dirname "$want")"; ln -sfn "$here" "$want"; fi
done
cp "$bundle"/bin/cptune build/tuner/; cp "$bundle"/bin/bench_attention_cuda build/bench/
cp "$bundle"/bin/test_* build/tests/; cp sim/hardware/*.json build/share/cptune/hardware/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; build/tuner/cptune --version
for t in ${TESTS:-test_attention_cuda test_attention_cudnn test_nccl_comm test_gpu_executor test_nccl_import}; do
  echo "=== $t"; timeout 300 build/tests/$t --gtest_brief=1 >"$logs/$t.log" 2>&1; echo "rc=$?"
  grep -E "FAILED|PASSED|SKIPPED|tests ran" "$logs/$t.log" | head -20
done
[ "${REST:-1}" = 0 ] && exit 0
echo "=== executor end to end"
{ for s in ulysses uaa ring ring-zigzag allgather-kv; do
    build/tuner/cptune run --backend nccl --world 1 --strategy $s --seq 8k --heads 32 --kv-heads 8 --head-dim 128 \
      --mask causal --verify; echo "rc=$?"; done
  for m in sliding:512 star:16 strided:16,4; do
    build/tuner/cptune run --backend nccl --world 1 --strategy hybrid-uaa --ulysses 1 --ring 1 --seq-list 77,4097,1000 \
      --batch 2 --heads 24 --kv-heads 8 --head-dim 128 --mask $m --verify; echo "rc=$?"; done
} >"$logs/executor.log" 2>&1
grep -E "cptune run:|verify|rc=|error" "$logs/executor.log"
echo "=== kernel vs SDPA"
timeout 300 python3 scripts/bench_attention_sdpa.py --bench build/bench/bench_attention_cuda >"$logs/sdpa.log" 2>&1
echo "rc=$?"; cat "$logs/sdpa.log"
