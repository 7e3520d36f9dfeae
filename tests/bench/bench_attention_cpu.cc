// Compute phase of the CPU executor: attend() of one rank per instruction-set variant this
// processor runs (backends/kernels/cpu_isa.h), reference_attention() as the baseline it is a ratio
// to, and the roofline: single-core SGEMM of the same variant at the kernel's tile shape.
// One sequence of S tokens, Q and K,V of all of it in one call, bf16 or fp32 storage (conversion
// to fp32 included in the time), Hq = 2 sharing one KV head, D = Dv.
// GFLOP/s counts 2 (D + Dv) FLOPs per visible (query, key) pair per q head, the rule of
// core::Layout; masked pairs are not counted. One thread; GFLOP/s is per CPU second of the
// mean iteration (Google Benchmark's rate counters), which a busy machine disturbs less than
// wall time.
//   sgemm_GFLOP/s  Eigen C = A.B^T, A 64xD, B 64xD (the Q.K^T tile of attend()), same variant,
//                  operands in cache, measured in the same benchmark right after the kernel
//   of_sgemm       the kernel's GFLOP/s as a fraction of sgemm_GFLOP/s
//   pairs_M        visible (query, key) pairs in millions (the FLOPs' count)
// Block masks (attend_blocks/<variant>/<mask>): star:16 and strided:16,4 beside causal at
// S = 8192; EMPTY tiles are skipped, so time should follow pairs_M.
// The backward (attend_backward/<variant>/<mask>/<dtype>): D = rowsum(dO o O) and
// attend_backward() over the same shapes, gradients zeroed each iteration (in the time), the
// forward's LSE and O made once outside it. GFLOP/s counts the five tile products per visible
// pair and q head: S = Q K^T recomputed (2D), dV += P^T dO (2Dv), dP = dO V^T (2Dv),
// dQ += dS K (2D), dK += dS^T Q (2D), i.e. 2 (3D + 2Dv) FLOPs, 2.5x the forward's at D = Dv.
// Run on one core: taskset -c 1 build/bench/bench_attention_cpu [--benchmark_filter=attend/v3]
#include <benchmark/benchmark.h>

#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/cpu_isa.h"
#include "backends/kernels/dtype_convert.h"
#include "core/layout.h"

namespace {

using namespace cptune;
using namespace cptune::backends;

constexpr int64_t kQHeads = 2, kKvHeads = 1;
constexpr int64_t kTileRows = 64;  // attend()'s query and key tile

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

std::vector<std::byte> random_tensor(int64_t elems, DType dtype, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(elems));
  for (float& x : values) x = uniform(rng);
  std::vector<std::byte> out(values.size() * static_cast<size_t>(dtype_bytes(dtype)));
  from_float(values.data(), dtype, out.data(), elems);
  return out;
}

// GFLOP/s of kernels.gemm_abt on 64xD by (64xD)^T, over about `seconds` of CPU time.
double tile_sgemm_gflops(const CpuKernels& kernels, int64_t D, double seconds) {
  std::vector<float> a(static_cast<size_t>(kTileRows * D), 0.5f), b(a.size(), 0.25f),
      c(static_cast<size_t>(kTileRows * kTileRows));
  const double flops_per_call = 2.0 * kTileRows * kTileRows * static_cast<double>(D);
  int64_t calls = 0;
  const double start = thread_cpu_seconds();
  double elapsed = 0;
  while (elapsed < seconds) {
    for (int i = 0; i < 64; ++i) kernels.gemm_abt(a.data(), b.data(), c.data(), kTileRows, kTileRows, D);
    benchmark::DoNotOptimize(c.data());
    calls += 64;
    elapsed = thread_cpu_seconds() - start;
  }
  return flops_per_call * static_cast<double>(calls) / elapsed * 1e-9;
}

template <typename Attention>
void run(benchmark::State& state, const Mask& mask, DType dtype, Attention attention, const CpuKernels* roofline) {
  const int64_t S = state.range(0), D = state.range(1);
  std::mt19937_64 rng(1);
  const std::vector<std::byte> q = random_tensor(S * kQHeads * D, dtype, rng),
                               k = random_tensor(S * kKvHeads * D, dtype, rng),
                               v = random_tensor(S * kKvHeads * D, dtype, rng);
  const std::vector<int64_t> seq_lens{S};
  const std::vector<StoredRun> runs = packed_runs(seq_lens);
  const Queries queries{{q.data(), dtype, S, kQHeads, D}, runs};
  const KvBlock block{{k.data(), dtype, S, kKvHeads, D}, {v.data(), dtype, S, kKvHeads, D}, runs};
  const AttentionParams params{mask, {0, 0, kQHeads / kKvHeads}, {}, seq_lens};
  AttentionState out(S, kQHeads, D);
  double cpu_seconds = 0;
  for (auto _ : state) {
    const double start = thread_cpu_seconds();
    out.clear();
    attention(queries, block, params, out);
    benchmark::DoNotOptimize(out.out().data());
    cpu_seconds += thread_cpu_seconds() - start;
  }
  const auto pairs = static_cast<double>(mask_pairs(params.mask, S, 0, S, 0, S));
  const double flops = 2.0 * static_cast<double>(D + D) * pairs * kQHeads;
  state.counters["pairs_M"] = pairs * 1e-6;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (roofline != nullptr) {
    const double kernel = flops * static_cast<double>(state.iterations()) / cpu_seconds * 1e-9;
    const double sgemm = tile_sgemm_gflops(*roofline, D, 0.2);
    state.counters["sgemm_GFLOP/s"] = sgemm;
    state.counters["of_sgemm"] = kernel / sgemm;
  }
}

// The backward of one rank's attention: D, then dQ, dK, dV of every query against every key.
void run_backward(benchmark::State& state, const Mask& mask, DType dtype, const CpuKernels& kernels) {
  const int64_t S = state.range(0), D = state.range(1);
  std::mt19937_64 rng(1);
  const std::vector<std::byte> q = random_tensor(S * kQHeads * D, dtype, rng),
                               k = random_tensor(S * kKvHeads * D, dtype, rng),
                               v = random_tensor(S * kKvHeads * D, dtype, rng),
                               d_out = random_tensor(S * kQHeads * D, dtype, rng);
  const std::vector<int64_t> seq_lens{S};
  const std::vector<StoredRun> runs = packed_runs(seq_lens);
  const Queries queries{{q.data(), dtype, S, kQHeads, D}, runs};
  const KvBlock block{{k.data(), dtype, S, kKvHeads, D}, {v.data(), dtype, S, kKvHeads, D}, runs};
  const AttentionParams params{mask, {0, 0, kQHeads / kKvHeads}, {}, seq_lens};
  AttentionState forward(S, kQHeads, D);
  kernels.attend(queries, block, params, forward);
  const TensorView d_out_view{d_out.data(), dtype, S, kQHeads, D};
  std::vector<float> delta(static_cast<size_t>(S * kQHeads));
  GradBuffer dq(S, kQHeads, D), dk(S, kKvHeads, D), dv(S, kKvHeads, D);
  double cpu_seconds = 0;
  for (auto _ : state) {
    const double start = thread_cpu_seconds();
    dq.clear();
    dk.clear();
    dv.clear();
    compute_delta(output_view(forward), d_out_view, runs, delta);
    kernels.attend_backward(queries, block, params, {d_out_view, forward.lse(), delta}, {dq.view()},
                            {dk.view(), dv.view()});
    benchmark::DoNotOptimize(dk.values().data());
    cpu_seconds += thread_cpu_seconds() - start;
  }
  const auto pairs = static_cast<double>(mask_pairs(params.mask, S, 0, S, 0, S));
  const double flops = 2.0 * static_cast<double>(3 * D + 2 * D) * pairs * kQHeads;
  const double kernel = flops * static_cast<double>(state.iterations()) / cpu_seconds * 1e-9;
  const double sgemm = tile_sgemm_gflops(kernels, D, 0.2);
  state.counters["pairs_M"] = pairs * 1e-6;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["sgemm_GFLOP/s"] = sgemm;
  state.counters["of_sgemm"] = kernel / sgemm;
}

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t D : {64, 128})
    for (int64_t S : {1024, 2048, 4096}) b->Args({S, D});
  b->ArgNames({"S", "D"})->Unit(benchmark::kMillisecond);
}

void BM_TileSgemm(benchmark::State& state, const CpuKernels* kernels) {
  const int64_t D = state.range(0);
  std::vector<float> a(static_cast<size_t>(kTileRows * D), 0.5f), b(a.size(), 0.25f),
      c(static_cast<size_t>(kTileRows * kTileRows));
  for (auto _ : state) {
    kernels->gemm_abt(a.data(), b.data(), c.data(), kTileRows, kTileRows, D);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kTileRows * kTileRows * static_cast<double>(D) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Reference(benchmark::State& state, MaskKind mask) {
  run(state, Mask(mask), DType::bf16, reference_attention, nullptr);
}
// The naive reference is slow by design: one timed iteration per shape.
BENCHMARK_CAPTURE(BM_Reference, full, MaskKind::full)->Apply(Shapes)->Iterations(1);
BENCHMARK_CAPTURE(BM_Reference, causal, MaskKind::causal)->Apply(Shapes)->Iterations(1);

// attend/<variant>/<mask>/<dtype>, attend_backward/<variant>/<mask>/<dtype> and tile_sgemm/<variant>
// for every variant this processor runs.
void register_variants() {
  for (CpuIsa isa : runnable_cpu_isas()) {
    const CpuKernels* kernels = &cpu_kernels(isa);
    const std::string name(to_string(isa));
    benchmark::RegisterBenchmark(("tile_sgemm/" + name).c_str(), [=](benchmark::State& state) {
      BM_TileSgemm(state, kernels);
    })->Arg(64)->Arg(128)->ArgName("D");
    for (MaskKind mask : {MaskKind::full, MaskKind::causal})
      for (DType dtype : {DType::bf16, DType::fp32}) {
        const std::string full_name =
            "attend/" + name + "/" + std::string(to_string(mask)) + "/" + std::string(to_string(dtype));
        benchmark::RegisterBenchmark(full_name.c_str(), [=](benchmark::State& state) {
          run(state, Mask(mask), dtype, kernels->attend, kernels);
        })->Apply(Shapes);
        const std::string backward_name =
            "attend_backward/" + name + "/" + std::string(to_string(mask)) + "/" + std::string(to_string(dtype));
        benchmark::RegisterBenchmark(backward_name.c_str(), [=](benchmark::State& state) {
          run_backward(state, Mask(mask), dtype, *kernels);
        })->Apply(Shapes);
      }
    for (const char* mask_text : {"causal", "star:16", "strided:16,4"}) {
      const Mask mask = parse_mask(mask_text);
      benchmark::RegisterBenchmark(("attend_blocks/" + name + "/" + mask_text + "/bf16").c_str(),
                                   [=](benchmark::State& state) {
                                     run(state, mask, DType::bf16, kernels->attend, nullptr);
                                   })
          ->Args({8192, 64})
          ->ArgNames({"S", "D"})
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_variants();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
