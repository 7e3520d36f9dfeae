// Predictions per second (issue 3's goal: at least 1,000,000 per second on one core for P <= 64).
// Two numbers per strategy and P, both single-threaded, items/s = predictions per second:
//   BM_PredictPrepared: predict() on a PreparedLayout (the calibration fit and hardware what-if
//     studies re-predict the same layouts);
//   BM_PreparePredict: prepare + predict on a built Layout (the simulator's own share);
//   BM_BuildPreparePredict: Layout::build + prepare + predict, what a sweep over new shapes pays.
// BM_RankCandidates times a whole `cptune simulate` ranking (every candidate of one shape);
// BM_RankCandidatesScale the large-world example (S = 1M, P = 8 ... 16384, h100-sxm
// topology): its ns_per_candidate_per_rank counter must stay flat as P grows (O(P) per candidate).
// Shape: S = 128k causal, Hq = 64, Hkv = 8, D = Dv = 128, bf16, 8 ranks per node, H100 preset;
// hybrids use U = 8 (U = 4 at P = 8). Run: build/bench/bench_sim
#include <benchmark/benchmark.h>

#include "core/layout.h"
#include "sim/candidates.h"
#include "sim/cost_model.h"
#include "sim/hardware.h"
#include "sim/prepared_layout.h"
#include "sim/topology.h"

namespace {

using namespace cptune;

AttentionShape bench_shape() {
  AttentionShape s;
  s.seq_lens = {131072};
  s.q_heads = 64;
  s.kv_heads = 8;
  s.head_dim = s.v_head_dim = 128;
  s.mask = {MaskKind::causal, 0};
  return s;
}

LayoutSpec bench_spec(Strategy strategy, int64_t P) {
  LayoutChoice choice{strategy};
  if (strategy == Strategy::hybrid || strategy == Strategy::hybrid_uaa) {
    choice.ulysses = P > 8 ? 8 : 4;
    choice.ring = P / choice.ulysses;
  }
  return LayoutSpec{bench_shape(), Cluster{P, 8}, choice};
}

const sim::Hardware& h100() {
  static const sim::Hardware hw = sim::load_hardware("h100-sxm");
  return hw;
}

// The layout prepared on the preset's topology, as rank_candidates prepares it.
sim::PreparedLayout prepare_on_h100(const Layout& layout) {
  return sim::prepare(layout, sim::topology_of(h100(), layout.cluster().ranks_per_node, layout.world()));
}

void BM_PredictPrepared(benchmark::State& state, Strategy strategy) {
  const sim::PreparedLayout prepared = prepare_on_h100(Layout::build(bench_spec(strategy, state.range(0))));
  const sim::PredictOptions options{sim::Pass::forward_backward, MetadataChannel::cpu};
  for (auto _ : state) benchmark::DoNotOptimize(sim::predict(prepared, h100(), options));
  state.SetItemsProcessed(state.iterations());
}

void BM_PreparePredict(benchmark::State& state, Strategy strategy) {
  const Layout layout = Layout::build(bench_spec(strategy, state.range(0)));
  const sim::PredictOptions options{sim::Pass::forward_backward, MetadataChannel::cpu};
  for (auto _ : state) benchmark::DoNotOptimize(sim::predict(prepare_on_h100(layout), h100(), options));
  state.SetItemsProcessed(state.iterations());
}

void BM_BuildPreparePredict(benchmark::State& state, Strategy strategy) {
  const LayoutSpec spec = bench_spec(strategy, state.range(0));
  const sim::PredictOptions options{sim::Pass::forward_backward, MetadataChannel::cpu};
  for (auto _ : state) benchmark::DoNotOptimize(sim::predict(prepare_on_h100(Layout::build(spec)), h100(), options));
  state.SetItemsProcessed(state.iterations());
}

void BM_RankCandidates(benchmark::State& state) {
  const Cluster cluster{state.range(0), 8};
  int64_t candidates = 0;
  for (auto _ : state) {
    const sim::Ranking r = sim::rank_candidates(bench_shape(), cluster, h100(), {});
    candidates += static_cast<int64_t>(r.candidates.size());
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(candidates);  // candidates ranked per second
}

void BM_RankCandidatesScale(benchmark::State& state) {
  AttentionShape shape = bench_shape();
  shape.seq_lens = {1 << 20};
  const Cluster cluster{state.range(0), 8};
  int64_t candidates = 0;
  for (auto _ : state) {
    const sim::Ranking r = sim::rank_candidates(shape, cluster, h100(), {});
    candidates += static_cast<int64_t>(r.candidates.size());
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(candidates);
  state.counters["candidates"] = double(candidates) / double(state.iterations());
  state.counters["ns_per_candidate_per_rank"] = benchmark::Counter(
      double(candidates) * double(state.range(0)), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void Worlds(benchmark::internal::Benchmark* b) {
  for (int64_t P : {8, 16, 64}) b->Arg(P);
}

#define CPTUNE_SIM_BENCH(name, strategy)                                                                  \
  BENCHMARK_CAPTURE(BM_PredictPrepared, name, strategy)->Apply(Worlds)->Unit(benchmark::kNanosecond);     \
  BENCHMARK_CAPTURE(BM_PreparePredict, name, strategy)->Apply(Worlds)->Unit(benchmark::kMicrosecond);     \
  BENCHMARK_CAPTURE(BM_BuildPreparePredict, name, strategy)->Apply(Worlds)->Unit(benchmark::kMicrosecond)

CPTUNE_SIM_BENCH(ulysses, Strategy::ulysses);
CPTUNE_SIM_BENCH(uaa, Strategy::uaa);
CPTUNE_SIM_BENCH(ring, Strategy::ring);
CPTUNE_SIM_BENCH(ring_zigzag, Strategy::ring_zigzag);
CPTUNE_SIM_BENCH(allgather_kv, Strategy::allgather_kv);
CPTUNE_SIM_BENCH(hybrid, Strategy::hybrid);
CPTUNE_SIM_BENCH(hybrid_uaa, Strategy::hybrid_uaa);
BENCHMARK(BM_RankCandidates)->Apply(Worlds)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RankCandidatesScale)->Arg(8)->Arg(64)->Arg(1024)->Arg(16384)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
