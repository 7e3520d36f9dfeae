// Time to build a Layout (what the tuner and simulator pay per candidate).
// Goal (issue 2): well under 1 ms at P = 1024, S up to 1M. Run: build/bench/bench_layout
#include <benchmark/benchmark.h>

#include "core/layout.h"

namespace {

using namespace cptune;

void BM_BuildLayout(benchmark::State& state, Strategy strategy) {
  const int64_t P = state.range(0), S = state.range(1);
  AttentionShape shape;
  shape.seq_lens = {S};
  shape.q_heads = 1536;  // enough heads for U = P = 1024 with uneven shares
  shape.kv_heads = 256;
  shape.head_dim = shape.v_head_dim = 128;
  shape.mask = {MaskKind::causal, 0};
  LayoutChoice choice{strategy};
  if (strategy == Strategy::hybrid_uaa) choice.ulysses = 8, choice.ring = P / 8;
  const LayoutSpec spec{shape, Cluster{P, 8}, choice};
  for (auto _ : state) benchmark::DoNotOptimize(Layout::build(spec));
  state.SetItemsProcessed(state.iterations());
}

// Issue 16: a block mask (N = 64) at P = 64 against causal: what the balanced placement and the
// ring's skip plan cost per candidate. Args: strategy's U (1: ring; 8: hybrid-uaa 8 x 8), S.
void BM_BuildMaskedLayout(benchmark::State& state, const char* mask) {
  const int64_t U = state.range(0), S = state.range(1), P = 64;
  AttentionShape shape;
  shape.seq_lens = {S};
  shape.q_heads = 64;
  shape.kv_heads = 8;
  shape.head_dim = shape.v_head_dim = 128;
  shape.mask = parse_mask(mask);
  LayoutChoice choice{U == 1 ? Strategy::ring : Strategy::hybrid_uaa};
  if (U > 1) choice.ulysses = U, choice.ring = P / U;
  const LayoutSpec spec{shape, Cluster{P, 8}, choice};
  for (auto _ : state) benchmark::DoNotOptimize(Layout::build(spec));
  state.SetItemsProcessed(state.iterations());
}

void MaskArgs(benchmark::internal::Benchmark* b) {
  for (int64_t U : {1, 8})
    for (int64_t S : {int64_t{32768}, int64_t{1} << 20}) b->Args({U, S});
}

BENCHMARK_CAPTURE(BM_BuildMaskedLayout, causal, "causal")->Apply(MaskArgs)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_BuildMaskedLayout, strided_64_8, "strided:64,8")->Apply(MaskArgs)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_BuildMaskedLayout, star_64, "star:64")->Apply(MaskArgs)->Unit(benchmark::kMicrosecond);

void Args(benchmark::internal::Benchmark* b) {
  for (int64_t P : {8, 64, 1024})
    for (int64_t S : {int64_t{32768}, int64_t{1} << 20}) b->Args({P, S});
}

BENCHMARK_CAPTURE(BM_BuildLayout, uaa, Strategy::uaa)->Apply(Args)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_BuildLayout, ring_zigzag, Strategy::ring_zigzag)->Apply(Args)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_BuildLayout, hybrid_uaa, Strategy::hybrid_uaa)->Apply(Args)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_BuildLayout, allgather_kv, Strategy::allgather_kv)->Apply(Args)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
