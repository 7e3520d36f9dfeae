#!/usr/bin/env bash
# Packs what the GPU checks need from a CUDA build into one folder (default .gpu-bundle/) that can
# be copied to a GPU machine which has the driver, CUDA and NCCL (e.g. PyTorch's wheel) but none
# of this project's Debian libraries: the stripped test programs, cptune, the kernel benchmark and
# the shared libraries they need beyond libc, libstdc++, CUDA's driver and NCCL (about 16 MiB).
# Then, on that machine, from a checkout of the same commit: scripts/gpu_check.sh .gpu-bundle
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
out=${2:-$root/.gpu-bundle}
rm -rf "$out"; mkdir -p "$out/bin" "$out/lib"
for b in tests/test_attention_cuda tests/test_attention_cudnn tests/test_nccl_comm tests/test_gpu_executor tests/test_nccl_import \
         tuner/cptune bench/bench_attention_cuda; do
  [ -x "$build/$b" ] || { echo "gpu_bundle: $build/$b missing: build with CUDA and NCCL first" >&2; exit 2; }
  strip -o "$out/bin/$(basename "$b")" "$build/$b"
done
# Every library the programs load, except the C/C++ runtime and NCCL (the GPU machine has its own).
for b in "$out"/bin/*; do ldd "$b"; done | awk '$3 ~ /^\// {print $1, $3}' | sort -u |
  grep -Ev '^(libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libgcc_s\.so|libstdc\+\+\.so|libnccl\.so|linux-vdso|ld-linux)' |
  while read -r name path; do cp -L "$path" "$out/lib/$name"; done
# The tests name cptune, the presets and the sources by this build's absolute paths.
echo "$root" >"$out/source_dir"; echo "$(cd "$build" && pwd)" >"$out/build_dir"
du -sh "$out"
