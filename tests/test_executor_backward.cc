// Multi-rank backward tests: every strategy's backward (Ulysses and UAA all-to-alls of dO and
// dQ, dK, dV; ring and zigzag dK, dV travelling with their blocks and home; all-gather's
// reduce-scatter; hybrids in both rank orders; both head policies) run for real over Gloo and
// dQ, dK, dV of every rank verified against the independent backward reference; faults in the
// backward's messages and kernel calls must fail that verification.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <set>
#include <sstream>

#include "backends/comm/comm.h"
#include "backends/comm/launcher.h"
#include "backends/exec/device.h"
#include "backends/exec/executor.h"
#include "core/error.h"
#include "core/layout.h"
#include "tests/faulty_comm.h"
#include "tests/layout_sweep.h"

namespace cptune {
namespace {

using backends::Comm;

AttentionShape shape_of(std::vector<int64_t> seqs, int64_t hq, int64_t hkv, Mask mask, int64_t batch = 1,
                        DType dtype = DType::bf16) {
  return AttentionShape{batch, std::move(seqs), hq, hkv, 16, 8, dtype, mask};
}

backends::RankLaunch local_launch(int64_t world) {
  backends::RankLaunch launch;
  launch.world = static_cast<int>(world);
  launch.timeout = std::chrono::seconds(30);
  return launch;
}

// Runs forward + backward of the layout on its ranks, every rank verified; 0 when every rank's
// O, dQ, dK and dV passed. `wrap` and `device` may put a fault into a rank's pipeline.
int run_backward(const Layout& layout, std::string* log = nullptr, const std::function<Comm&(Comm&)>& wrap = nullptr,
                 const std::function<backends::Device*(int rank)>& device = nullptr) {
  std::ostringstream err;
  const int code = backends::run_ranks(local_launch(layout.world()), [&](Comm& world) {
    backends::ExecutorOptions options;
    options.verify = true;
    options.warmups = 0;
    options.iterations = 1;
    options.pass = Pass::forward_backward;
    if (device) options.device = device(world.rank());
    const backends::RunResult r = backends::execute(layout, wrap ? wrap(world) : world, options);
    if (!r.grad_q_err || !r.grad_k_err || !r.grad_v_err) return 4;
    if (!r.verified())
      std::fprintf(stderr, "rank %d: O %.3g, dQ %.3g, dK %.3g, dV %.3g (worst error / tolerance)\n", world.rank(),
                   r.worst_ratio, r.grad_q_err->worst_ratio, r.grad_k_err->worst_ratio, r.grad_v_err->worst_ratio);
    return r.verified() ? 0 : 1;
  }, err);
  if (log) *log = err.str();
  return code;
}

std::string name_of(const Layout& layout) {
  return std::string(to_string(layout.choice())) + " on " + to_string(layout.shape());
}

struct OddShape {
  const char* name;
  AttentionShape shape;
  int64_t world;
};

// Shapes where a backward goes wrong: uneven heads and sequences, GQA groups split over ranks,
// packed batches, causal, sliding and block masks, worlds 2 to 6.
std::vector<OddShape> odd_shapes() {
  return {
      {"GQA 12/4, S=97 causal on 3 ranks", shape_of({97}, 12, 4, {MaskKind::causal, 0}), 3},
      {"packed batch on 4 ranks", shape_of({37, 60, 9}, 6, 2, {MaskKind::causal, 0}, 2, DType::fp32), 4},
      {"sliding window on 2 ranks", shape_of({101}, 4, 2, {MaskKind::sliding_window, 13}, 1, DType::fp16), 2},
      {"5 heads, S=77 full on 5 ranks", shape_of({77}, 5, 5, {MaskKind::full, 0}), 5},
      {"star block mask on 4 ranks", shape_of({61, 130}, 6, 2, parse_mask("star:8")), 4},
      {"GQA 8/2, S=131 causal on 6 ranks", shape_of({131}, 8, 2, {MaskKind::causal, 0}), 6},
  };
}

// Every strategy, U x R, rank order (for hybrids) and head policy that lays out, on every odd
// shape: O, dQ, dK, dV of every rank within their tolerances.
TEST(ExecutorBackward, EveryStrategyAndPolicyVerifiesOnOddShapes) {
  int runs = 0;
  for (const OddShape& odd : odd_shapes()) {
    testing::for_each_spec(odd.shape, odd.world, 2, [&](const LayoutSpec& spec) {
      if (::testing::Test::HasFailure()) return;
      if (spec.choice.order == RankOrder::ring_inner && !(spec.choice.ulysses > 1 && spec.choice.ring > 1)) return;
      auto layout = testing::try_build(spec);
      if (!layout) return;
      ++runs;
      std::string log;
      EXPECT_EQ(run_backward(*layout, &log), 0) << odd.name << ": " << to_string(spec.choice) << "\n" << log;
    });
  }
  if (!::testing::Test::HasFailure()) {
    EXPECT_GT(runs, 50);
  }
}

// One layout per motion of the backward, small enough to run under every mutant: Ulysses with a
// GQA group split over ranks (dK, dV of a shared KV head add up on the way home), ring and zigzag
// (dK, dV travel and return), a ring under a block mask that forwards less than whole shards
// (partial blocks add into their shard's dK, dV), all-gather (reduce-scatter), a hybrid.
std::vector<Layout> one_layout_per_motion() {
  const AttentionShape gqa = shape_of({97}, 12, 4, {MaskKind::causal, 0});
  const AttentionShape star = shape_of({61, 130}, 6, 2, parse_mask("star:8"));
  return {Layout::build({gqa, Cluster{3, 3}, LayoutChoice{Strategy::uaa}}),
          Layout::build({gqa, Cluster{3, 3}, LayoutChoice{Strategy::ring}}),
          Layout::build({gqa, Cluster{3, 3}, LayoutChoice{Strategy::ring_zigzag}}),
          Layout::build({star, Cluster{4, 4}, LayoutChoice{Strategy::ring}}),
          Layout::build({gqa, Cluster{3, 3}, LayoutChoice{Strategy::allgather_kv}}),
          Layout::build({gqa, Cluster{6, 2}, LayoutChoice{Strategy::hybrid_uaa, 3, 2, RankOrder::ring_inner}})};
}

TEST(ExecutorBackward, EachMotionVerifies) {
  for (const Layout& layout : one_layout_per_motion()) {
    std::string log;
    EXPECT_EQ(run_backward(layout, &log), 0) << name_of(layout) << "\n" << log;
  }
}

// --pass bwd times the backward's phases and nothing else (its forward runs untimed), --pass
// fwd+bwd both, in the simulator's phase names.
TEST(ExecutorBackward, PassSelectsTheTimedPhases) {
  auto layout = Layout::build({shape_of({97}, 6, 2, {MaskKind::causal, 0}), Cluster{4, 4},
                               LayoutChoice{Strategy::hybrid_uaa, 2, 2}});
  for (Pass pass : {Pass::forward, Pass::backward, Pass::forward_backward}) {
    std::ostringstream err;
    const int code = backends::run_ranks(local_launch(4), [&](Comm& world) {
      backends::ExecutorOptions options;
      options.iterations = 2;
      options.phase_barriers = true;
      options.pass = pass;
      const backends::RunResult r = backends::execute(layout, world, options);
      std::set<Phase> seen;
      for (const auto& p : r.phases) seen.insert(p.phase);
      const std::set<Phase> forward{Phase::gather, Phase::qkv, Phase::attention, Phase::o};  // o: O home
      const std::set<Phase> backward{Phase::grad_o, Phase::attention_bwd, Phase::grad_qkv};
      std::set<Phase> want;
      if (has_forward(pass)) want.insert(forward.begin(), forward.end());
      if (has_backward(pass)) want.insert(backward.begin(), backward.end());
      return seen == want ? 0 : 1;
    }, err);
    EXPECT_EQ(code, 0) << to_string(pass) << "\n" << err.str();
  }
}

// One damaged message of the backward on rank 1 fails verification, and the decorator with
// nothing to inject passes: Ulysses' dQ, dK, dV on their way home (its 4th all-to-all), the
// ring's first dK, dV hop and their return home, the all-gather's reduce-scatter.
TEST(ExecutorBackward, ADamagedGradientMessageFailsVerification) {
  const AttentionShape shape = shape_of({97}, 6, 3, {MaskKind::full, 0});
  struct Case {
    Strategy strategy;
    testing::FaultOp op;
    int nth;
  };
  // Ring receives on rank 1 with R = 3: the forward's K,V (0, 1), then per backward step K,V
  // and dK,dV: 2, 3 (dK,dV), 4, 5 (dK,dV), 6 (dK,dV home).
  const Case cases[] = {{Strategy::uaa, testing::FaultOp::alltoallv, 3},
                        {Strategy::ring, testing::FaultOp::ring, 3},
                        {Strategy::ring, testing::FaultOp::ring, 6},
                        {Strategy::allgather_kv, testing::FaultOp::alltoallv, 0}};
  for (const Case& c : cases) {
    auto layout = Layout::build({shape, Cluster{3, 3}, LayoutChoice{c.strategy}});
    // dK, dV travel as fp32, where flip's odd byte is a low mantissa byte (an honest rounding-size
    // change): drop and reorder damage every message kind.
    for (testing::Fault fault : {testing::Fault::drop, testing::Fault::reorder}) {
      for (int nth : {c.nth, 1000}) {
        std::unique_ptr<testing::FaultyComm> faulty;
        const auto wrap = [&](Comm& world) -> Comm& {
          if (world.rank() != 1) return world;
          faulty = std::make_unique<testing::FaultyComm>(
              world, std::make_shared<testing::FaultPlan>(testing::FaultPlan{fault, c.op, nth, 0}));
          return *faulty;
        };
        std::string log;
        const int code = run_backward(layout, &log, wrap);
        const std::string what = name_of(layout) + " fault " + std::to_string(int(fault)) + " on message " +
                                 std::to_string(nth) + "\n" + log;
        if (nth == 1000) {
          EXPECT_EQ(code, 0) << what;
        } else {
          EXPECT_NE(code, 0) << what;
        }
      }
    }
  }
}

// The backward kernel faulted on rank 2 for one K,V block (its contribution lost, or counted
// twice) fails verification under every motion; the same device with nothing to inject passes.
TEST(ExecutorBackward, ALostOrDoubledBlockContributionFailsVerification) {
  const AttentionShape shape = shape_of({97}, 6, 3, {MaskKind::full, 0}, 1, DType::fp32);
  for (Strategy strategy : {Strategy::uaa, Strategy::ring, Strategy::allgather_kv})
    for (testing::KernelFault fault : {testing::KernelFault::skip_backward_block, testing::KernelFault::double_backward_block})
      for (int nth : {0, 1000}) {
        auto layout = Layout::build({shape, Cluster{3, 3}, LayoutChoice{strategy}});
        std::unique_ptr<testing::FaultyDevice> faulty;
        const auto device = [&](int rank) -> backends::Device* {
          faulty = std::make_unique<testing::FaultyDevice>(backends::make_host_device(), fault, rank == 2 ? nth : 1000);
          return faulty.get();
        };
        std::string log;
        const int code = run_backward(layout, &log, nullptr, device);
        if (nth == 1000) {
          EXPECT_EQ(code, 0) << name_of(layout) << "\n" << log;
        } else {
          EXPECT_NE(log.find("rank 2 failed with exit code 1"), std::string::npos) << name_of(layout) << "\n" << log;
        }
      }
}

}  // namespace
}  // namespace cptune
