// Issue 4's executor ratios, measured side by side in one launch per case: both layouts live
// in the same rank processes and alternate iteration by iteration (execute_interleaved), so
// the noise of this shared 2-core machine hits both alike. Reports, per case, the median of
// the per-iteration ratios A/B (slowest rank each) and both medians.
//   build/bench/bench_executor_pairs [iterations]
#include <algorithm>
#include <cstdlib>
#include <iostream>

#include <fmt/format.h>

#include "backends/comm/comm.h"
#include "backends/exec/executor.h"
#include "backends/comm/launcher.h"
#include "core/layout.h"

using namespace cptune;

namespace {

AttentionShape shape(int64_t seq, int64_t hq, int64_t hkv) {
  AttentionShape s;
  s.seq_lens = {seq};
  s.q_heads = hq;
  s.kv_heads = hkv;
  s.head_dim = s.v_head_dim = 64;
  s.mask = {MaskKind::causal, 0};
  return s;
}

struct Case {
  std::string title, a_name, b_name;
  LayoutSpec a, b;
};

int run_case(const Case& c, int iterations) {
  const Layout a = Layout::build(c.a), b = Layout::build(c.b);
  backends::RankLaunch launch;
  launch.world = static_cast<int>(a.world());
  launch.timeout = std::chrono::seconds(120);
  return backends::run_ranks(launch, [&](backends::Comm& world) {
    backends::ExecutorOptions options;
    options.warmups = 2;
    options.iterations = iterations;
    const std::vector<Layout> layouts{a, b};
    const auto r = backends::execute_interleaved(layouts, world, options);
    if (world.rank() == 0) {
      std::vector<double> ratios;
      for (size_t i = 0; i < r[0].samples.size(); ++i) ratios.push_back(r[0].samples[i] / r[1].samples[i]);
      const backends::Spread ratio = backends::spread_of(ratios);
      std::cout << fmt::format("{}\n  {}: median {:.2f} ms   {}: median {:.2f} ms\n"
                               "  ratio {}/{}: median of {} paired iterations {:.4f} ({:+.2f}%), range {:.3f}..{:.3f}\n",
                               c.title, c.a_name, r[0].time.median_s * 1e3, c.b_name, r[1].time.median_s * 1e3, c.a_name,
                               c.b_name, ratios.size(), ratio.median_s, (ratio.median_s - 1) * 100, ratio.min_s,
                               ratio.max_s);
      for (size_t k = 0; k < 2; ++k) {
        std::cout << "  " << (k ? c.b_name : c.a_name) << " phases:";
        for (const auto& p : r[k].phases) std::cout << fmt::format(" {} {:.2f} ms", to_string(p.phase), p.time.median_s * 1e3);
        std::cout << "\n";
      }
      std::cout << std::flush;
    }
    return 0;
  }, std::cerr);
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 15;
  // Two ranks for (1) and (2a): this machine has two cores, so no rank waits for a core.
  const Cluster m2{2, 2}, m3{3, 3};
  const HeadPolicy bal = HeadPolicy::balanced;
  const std::vector<Case> cases{
      {"(1) no padding needed: S=4096 Hq=8 Hkv=8 D=64 causal, 2 ranks", "uaa", "ulysses",
       {shape(4096, 8, 8), m2, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, bal}}, {shape(4096, 8, 8), m2, LayoutChoice{Strategy::ulysses, 0, 0, RankOrder::ulysses_inner, bal}}},
      {"(2a) token padding: S=4097 (classic pads to 4098) Hq=8 Hkv=8, 2 ranks", "uaa", "ulysses-padded",
       {shape(4097, 8, 8), m2, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, bal}}, {shape(4097, 8, 8), m2, LayoutChoice{Strategy::ulysses, 0, 0, RankOrder::ulysses_inner, bal}}},
      {"(2b) head padding: 25 heads on 3 ranks, run by peers as 27 padded heads, S=2048", "uaa-25", "ulysses-27",
       {shape(2048, 25, 25), m3, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, bal}}, {shape(2048, 27, 27), m3, LayoutChoice{Strategy::ulysses, 0, 0, RankOrder::ulysses_inner, bal}}},
  };
  std::cout << fmt::format("cptune executor pairs: {} interleaved iterations after 2 warm-ups, slowest rank\n\n", iterations);
  for (const Case& c : cases)
    if (int rc = run_case(c, iterations); rc != 0) return rc;
  return 0;
}
