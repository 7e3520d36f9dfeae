// Compute phase of the GPU executor: one rank's CUDA attention over a whole sequence, the
// number scripts/bench_attention_sdpa.py puts beside PyTorch's scaled_dot_product_attention on
// the same GPU. Shapes: batch 1, S = 8k and 32k, Hq = Hkv = 16, D = Dv = 128, bf16 (and fp16),
// full and causal; block masks star:16 and strided:16,4 in bf16, whose EMPTY cells the plan skips
// (their TFLOP/s near causal's says time follows the visible pairs).
//
// TFLOP/s counts 2 (D + Dv) FLOPs per visible (query, key) pair per head, the rule of
// core::Layout (full: 4 S^2 H D; causal: S (S + 1) / 2 pairs, about half). Time: CUDA events
// around one forward as the executor runs it (clear the O / LSE state, attend, store O in the
// dtype), Google Benchmark's manual time; TFLOP/s is the mean over its iterations. Ask for
// medians with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true.
// Run: build/bench/bench_attention_cuda   (skips every shape where no GPU is found)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/dtype_convert.h"
#include "core/layout.h"

#if CPTUNE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backends/kernels/cuda/attention_cuda.h"
#endif

namespace {

using namespace cptune;
using namespace cptune::backends;

constexpr int64_t kHeads = 16, kDim = 128;

double forward_flops(int64_t S, const Mask& mask) {
  return 2.0 * static_cast<double>(kDim + kDim) * static_cast<double>(mask_pairs(mask, S, 0, S, 0, S)) * kHeads;
}

#if CPTUNE_HAVE_CUDA

std::string no_device_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);  // leaves count unset on failure
  if (status != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(status);
  if (count == 0) return "no CUDA device: cudaGetDeviceCount found 0";
  return "";
}

// Uniform values in [-1, 1) stored in `dtype`, uploaded to the GPU (xorshift: fast for 10^8).
void* random_on_gpu(int64_t elems, DType dtype, uint64_t seed) {
  std::vector<float> values(static_cast<size_t>(elems));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& v : values) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = static_cast<float>(static_cast<double>(x >> 11) * 0x1.0p-52 - 1.0);
  }
  std::vector<std::byte> stored(values.size() * static_cast<size_t>(dtype_bytes(dtype)));
  from_float(values.data(), dtype, stored.data(), elems);
  void* device = nullptr;
  if (cudaMalloc(&device, stored.size()) != cudaSuccess) return nullptr;
  cudaMemcpy(device, stored.data(), stored.size(), cudaMemcpyHostToDevice);
  return device;
}

void BM_AttendCuda(benchmark::State& state, const char* mask_text, DType dtype) {
  const Mask mask = parse_mask(mask_text);
  const std::string why = no_device_reason();
  if (!why.empty()) {
    state.SkipWithError(why.c_str());
    for (auto _ : state) {
    }
    return;
  }
  const int64_t S = state.range(0);
  void* q = random_on_gpu(S * kHeads * kDim, dtype, 1);
  void* k = random_on_gpu(S * kHeads * kDim, dtype, 2);
  void* v = random_on_gpu(S * kHeads * kDim, dtype, 3);
  void* out = nullptr;
  cudaMalloc(&out, static_cast<size_t>(S * kHeads * kDim * dtype_bytes(dtype)));
  cudaStream_t stream = nullptr;
  cudaStreamCreate(&stream);
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  {
    const std::vector<int64_t> lens{S};
    const std::vector<StoredRun> runs = packed_runs(lens);
    const Queries queries{{q, dtype, S, kHeads, kDim}, runs};
    const KvBlock block{{k, dtype, S, kHeads, kDim}, {v, dtype, S, kHeads, kDim}, runs};
    const AttentionParams params{mask, {0, 0, 1}, {}, lens};
    CudaAttentionState attention(S, kHeads, kDim, stream);
    const CudaAttentionPlan plan(runs, runs, params.mask, params.seq_lens, stream);
    auto forward = [&] {
      attention.clear();
      attend_cuda(plan, queries, block, params, attention);
      store_output_cuda(attention, dtype, out, S * kHeads * kDim * dtype_bytes(dtype));
    };
    try {
      forward();  // warm-up: first launch, shared-memory attribute
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
    }
    cudaStreamSynchronize(stream);
    double total_s = 0;
    for (auto _ : state) {
      cudaEventRecord(start, stream);
      forward();
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      state.SetIterationTime(ms * 1e-3);
      total_s += ms * 1e-3;
    }
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) state.SkipWithError(cudaGetErrorString(status));
    const double mean_s = total_s / static_cast<double>(state.iterations());
    state.counters["TFLOP/s"] = forward_flops(S, mask) / mean_s * 1e-12;
    state.counters["S"] = static_cast<double>(S);
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    state.SetLabel(prop.name);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  cudaFree(q);
  cudaFree(k);
  cudaFree(v);
  cudaFree(out);
}

#else

void BM_AttendCuda(benchmark::State& state, const char*, DType) {
  state.SkipWithError("built without CUDA and NCCL: the CUDA kernel is not compiled");
  for (auto _ : state) {
  }
}

#endif

void Shapes(benchmark::internal::Benchmark* b) {
  b->Arg(8192)->Arg(32768)->ArgName("S")->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
}

BENCHMARK_CAPTURE(BM_AttendCuda, bf16_full, "full", DType::bf16)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_AttendCuda, bf16_causal, "causal", DType::bf16)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_AttendCuda, fp16_full, "full", DType::fp16)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_AttendCuda, fp16_causal, "causal", DType::fp16)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_AttendCuda, bf16_star16, "star:16", DType::bf16)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_AttendCuda, bf16_strided16_4, "strided:16,4", DType::bf16)->Apply(Shapes);

}  // namespace

BENCHMARK_MAIN();
