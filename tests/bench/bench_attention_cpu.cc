// Compute phase of the CPU executor: attend() of one rank, and reference_attention() as the
// baseline it is a ratio to. One sequence of S tokens, Q and K,V of all of it in one call,
// bf16 storage (conversion to fp32 included in the time), Hq = 2 sharing one KV head, D = Dv.
// GFLOP/s counts 2 (D + Dv) FLOPs per visible (query, key) pair per q head, the rule of
// core::Layout; masked pairs are not counted. One thread; GFLOP/s is per CPU second of the
// mean iteration (Google Benchmark's rate counters), which a busy machine disturbs less than
// wall time. Run: build/bench/bench_attention_cpu
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/dtype_convert.h"
#include "core/layout.h"

namespace {

using namespace cptune;
using namespace cptune::backends;

constexpr int64_t kQHeads = 2, kKvHeads = 1;
constexpr DType kDtype = DType::bf16;

std::vector<std::byte> random_bf16(int64_t elems, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(elems));
  for (float& x : values) x = uniform(rng);
  std::vector<std::byte> out(values.size() * sizeof(uint16_t));
  from_float(values.data(), kDtype, out.data(), elems);
  return out;
}

template <typename Attention>
void run(benchmark::State& state, MaskKind mask_kind, Attention attention) {
  const int64_t S = state.range(0), D = state.range(1);
  std::mt19937_64 rng(1);
  const std::vector<std::byte> q = random_bf16(S * kQHeads * D, rng), k = random_bf16(S * kKvHeads * D, rng),
                               v = random_bf16(S * kKvHeads * D, rng);
  const std::vector<int64_t> seq_lens{S};
  const std::vector<StoredRun> runs = packed_runs(seq_lens);
  const Queries queries{{q.data(), kDtype, S, kQHeads, D}, runs};
  const KvBlock block{{k.data(), kDtype, S, kKvHeads, D}, {v.data(), kDtype, S, kKvHeads, D}, runs};
  const AttentionParams params{{mask_kind, 0}, {0, 0, kQHeads / kKvHeads}, {}};
  AttentionState out(S, kQHeads, D);
  for (auto _ : state) {
    out.clear();
    attention(queries, block, params, out);
    benchmark::DoNotOptimize(out.out().data());
  }
  const double flops =
      2.0 * static_cast<double>(D + D) * static_cast<double>(mask_pairs(params.mask, 0, S, 0, S)) * kQHeads;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Attend(benchmark::State& state, MaskKind mask) { run(state, mask, attend); }
void BM_Reference(benchmark::State& state, MaskKind mask) { run(state, mask, reference_attention); }

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t D : {64, 128})
    for (int64_t S : {1024, 2048, 4096}) b->Args({S, D});
  b->ArgNames({"S", "D"})->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_Attend, full, MaskKind::full)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_Attend, causal, MaskKind::causal)->Apply(Shapes);
// The naive reference is slow by design: one timed iteration per shape.
BENCHMARK_CAPTURE(BM_Reference, full, MaskKind::full)->Apply(Shapes)->Iterations(1);
BENCHMARK_CAPTURE(BM_Reference, causal, MaskKind::causal)->Apply(Shapes)->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
