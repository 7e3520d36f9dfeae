// Multi-rank executor tests: every strategy and head policy on the odd shapes peers fail on,
// run for real over Gloo with 2 to 8 processes and verified against the independent reference;
// faults injected into the pipeline (tests/faulty_comm.h) must fail that verification.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <random>
#include <set>
#include <sstream>

#include "backends/comm/comm.h"
#include "backends/exec/device.h"
#include "backends/exec/executor.h"
#include "backends/comm/gloo_comm.h"
#include "backends/comm/launcher.h"
#include "backends/comm/rendezvous.h"
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
  launch.timeout = std::chrono::seconds(20);
  return launch;
}

// Runs the layout on layout.world() local ranks; 0 when every rank verified. `wrap` may put a
// fault into a rank's pipeline: it gets the rank's world and returns the Comm to run on.
int run_verified(const Layout& layout, backends::ExecutorOptions options, std::string* log = nullptr,
                 const std::function<Comm&(Comm&)>& wrap = nullptr) {
  options.verify = true;
  options.warmups = 0;
  options.iterations = 1;
  std::ostringstream err;
  const int code = backends::run_ranks(local_launch(layout.world()), [&](Comm& world) {
    const backends::RunResult r = backends::execute(layout, wrap ? wrap(world) : world, options);
    if (!r.verified())
      std::fprintf(stderr, "rank %d: max_abs_err %.3e, worst error / tolerance %.3g over %lld rows\n", world.rank(),
                   *r.max_abs_err, r.worst_ratio, static_cast<long long>(r.verified_rows));
    return r.verified() ? 0 : 1;
  }, err);
  if (log) *log = err.str();
  return code;
}

struct OddShape {
  const char* name;
  AttentionShape shape;
  int64_t world;
};

std::vector<OddShape> odd_shapes() {
  return {
      {"24 heads on 7 ranks", shape_of({203}, 24, 24, {MaskKind::full, 0}), 7},
      {"GQA 32/8 on 6 ranks", shape_of({190}, 32, 8, {MaskKind::causal, 0}), 6},
      {"S=1001 causal on 4 ranks", shape_of({1001}, 8, 8, {MaskKind::causal, 0}), 4},
      {"packed batch on 4 ranks", shape_of({77, 150, 9}, 6, 2, {MaskKind::causal, 0}, 2, DType::fp32), 4},
      {"sliding window on 2 ranks", shape_of({301}, 4, 2, {MaskKind::sliding_window, 37}, 1, DType::fp16), 2},
      {"25 heads on 3 ranks", shape_of({257}, 25, 5, {MaskKind::full, 0}), 3},
  };
}

// Every strategy, U x R, rank order and head policy that lays out, on every odd shape.
TEST(Executor, EveryStrategyAndPolicyVerifiesOnOddShapes) {
  int runs = 0;
  for (const OddShape& odd : odd_shapes()) {
    testing::for_each_spec(odd.shape, odd.world, 2, [&](const LayoutSpec& spec) {
      if (::testing::Test::HasFailure()) return;  // the first failure says it; the rest would only repeat
      // Rank order changes only which links are intra-node, not the result: run ring-inner
      // for the hybrids, where it changes the rank numbering.
      if (spec.choice.order == RankOrder::ring_inner && !(spec.choice.ulysses > 1 && spec.choice.ring > 1)) return;
      auto layout = testing::try_build(spec);
      if (!layout) return;
      ++runs;
      std::string log;
      EXPECT_EQ(run_verified(*layout, {}, &log), 0)
          << odd.name << ": " << to_string(spec.choice.strategy) << " " << to_string(spec.choice.head_policy) << " U="
          << layout->ulysses() << " R=" << layout->ring() << " " << to_string(spec.choice.order) << "\n" << log;
    });
  }
  if (!::testing::Test::HasFailure()) {
    EXPECT_GT(runs, 60);
  }
}

TEST(Executor, HybridUaaThreeByTwoVerifies) {
  for (RankOrder order : {RankOrder::ulysses_inner, RankOrder::ring_inner}) {
    auto layout = Layout::build({shape_of({1001}, 24, 8, {MaskKind::causal, 0}), Cluster{6, 3}, LayoutChoice{Strategy::hybrid_uaa, 3, 2, order, HeadPolicy::balanced}});
    EXPECT_EQ(run_verified(layout, {}), 0) << to_string(order);
  }
}

// Block masks (issue 16): three patterns and a random table under UAA, ring, zigzag ring and the
// hybrid U=2 x R=2 at P = 4, a packed batch of odd lengths (two samples for the random table),
// every row verified against the reference with the same mask.
TEST(Executor, BlockMasksVerifyUnderUaaRingAndHybrid) {
  std::mt19937_64 rng(16);
  std::vector<BlockKind> cells(100);
  for (BlockKind& c : cells) c = static_cast<BlockKind>(rng() % 3);
  struct Case {
    Mask mask;
    int64_t batch;
  };
  const Case cases[] = {{parse_mask("star:8"), 1},
                        {parse_mask("strided:8,3"), 1},
                        {parse_mask("stream:8,1,2"), 1},
                        {block_mask(BlockTable(10, cells)), 2}};
  const LayoutChoice choices[] = {LayoutChoice{Strategy::uaa}, LayoutChoice{Strategy::ring},
                                  LayoutChoice{Strategy::ring_zigzag}, LayoutChoice{Strategy::hybrid_uaa, 2, 2}};
  for (const Case& c : cases)
    for (const LayoutChoice& choice : choices) {
      auto layout = Layout::build({shape_of({77, 1001}, 6, 2, c.mask, c.batch), Cluster{4, 4}, choice});
      std::string log;
      EXPECT_EQ(run_verified(layout, {}, &log), 0) << to_string(c.mask) << " " << to_string(choice) << "\n" << log;
    }
}

// The ring moves what the Layout's schedule forwards and nothing else (under a block mask a step
// sends only the runs a later rank needs, packed; Layout::ring_forward_runs), and still verifies;
// for star and stream that is less than whole shards, for causal the whole shards.
TEST(Executor, RingSendsExactlyTheForwardedRuns) {
  for (const char* mask : {"star:8", "stream:8,1,2", "causal"})
    for (const LayoutChoice& choice : {LayoutChoice{Strategy::ring}, LayoutChoice{Strategy::hybrid_uaa, 2, 2}}) {
      auto layout = Layout::build({shape_of({77, 1001}, 6, 2, parse_mask(mask)), Cluster{4, 4}, choice});
      // Under these block masks some K,V runs stop early: fewer tokens travel than whole shards.
      int64_t forwarded = 0, whole = 0;
      for (int64_t r = 0; r < layout.ring(); ++r)
        for (int64_t step = 0; step + 1 < layout.ring(); ++step) {
          for (const TokenRun& run : layout.ring_forward_runs(r, step)) forwarded += run.padded;
          whole += layout.shard_padded_tokens(layout.ring_kv_source(r, step));
        }
      if (std::string(mask) == "causal") {
        EXPECT_EQ(forwarded, whole) << to_string(choice);
      } else {
        EXPECT_LT(forwarded, whole) << mask << " " << to_string(choice);
      }
      std::ostringstream err;
      const int code = backends::run_ranks(local_launch(4), [&](Comm& world) {
        const auto plan = std::make_shared<testing::FaultPlan>(testing::FaultPlan{testing::Fault::flip, testing::FaultOp::ring, -1, 0});
        testing::FaultyComm counting(world, plan);  // nth = -1: counts, damages nothing
        backends::ExecutorOptions options;
        options.verify = true;
        options.warmups = 0;
        options.iterations = 1;
        if (!backends::execute(layout, counting, options).verified()) return 1;
        const RankLayout& me = layout.rank(world.rank());
        int64_t want = 0;
        for (int64_t step = 0; step + 1 < layout.ring(); ++step)
          for (const TokenRun& run : layout.ring_forward_runs(me.r, step))
            want += layout.kv_block_bytes(run.padded, me.kv_heads.count());
        return plan->ring_sent_bytes == want ? 0 : 3;
      }, err);
      EXPECT_EQ(code, 0) << mask << " " << to_string(choice) << "\n" << err.str();
    }
}

// The layout on 3 Gloo ranks, verified, rank 2's kernel faulted at its nth attend() call (the
// others never): exit code 0 when every rank verified.
int run_with_faulty_kernel(const Layout& layout, testing::KernelFault fault, int nth, std::ostringstream& err) {
  return backends::run_ranks(local_launch(3), [&](Comm& world) {
    testing::FaultyDevice device(backends::make_host_device(), fault, world.rank() == 2 ? nth : 1000);
    backends::ExecutorOptions options;
    options.verify = true;
    options.warmups = 0;
    options.iterations = 1;
    options.device = &device;
    return backends::execute(layout, world, options).verified() ? 0 : 1;
  }, err);
}

// A kernel that misses one block of the table (one rank, one call: the diagonal cell of its
// first query's block) fails verification; the same device with nothing to inject passes.
TEST(Executor, AKernelMissingOneMaskBlockFailsVerification) {
  for (Strategy strategy : {Strategy::ring, Strategy::uaa})
    for (int nth : {0, 1000}) {
      auto layout = Layout::build({shape_of({203}, 4, 2, parse_mask("star:8"), 1, DType::fp32), Cluster{3, 3},
                                   LayoutChoice{strategy, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
      std::ostringstream err;
      const int code = run_with_faulty_kernel(layout, testing::KernelFault::drop_block, nth, err);
      if (nth == 1000) {
        EXPECT_EQ(code, 0) << to_string(strategy) << "\n" << err.str();
      } else {
        EXPECT_NE(code, 0) << to_string(strategy) << "\n" << err.str();
        EXPECT_NE(err.str().find("rank 2 failed"), std::string::npos) << err.str();
      }
    }
}

// Faults in the pipeline, never in the verifier: one damaged message on one rank (Ulysses'
// Q,K,V and O all-to-alls, a ring step, the K,V all-gather) must fail --verify, and the same
// decorator with no fault to inject must pass.
TEST(Executor, ADamagedMessageFailsVerification) {
  struct Case {
    Strategy strategy;
    testing::FaultOp op;
    int nth;
  };
  const Case cases[] = {{Strategy::uaa, testing::FaultOp::alltoallv, 0},
                        {Strategy::uaa, testing::FaultOp::alltoallv, 1},
                        {Strategy::ring, testing::FaultOp::ring, 0},
                        {Strategy::ring_zigzag, testing::FaultOp::ring, 1},
                        {Strategy::allgather_kv, testing::FaultOp::allgatherv, 0}};
  for (const Case& c : cases) {
    // bf16 (the flipped odd byte is an exponent bit), no padding: every byte is a real value.
    auto layout = Layout::build({shape_of({203}, 6, 3, {MaskKind::causal, 0}), Cluster{3, 3}, LayoutChoice{c.strategy, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
    for (testing::Fault fault : {testing::Fault::flip, testing::Fault::drop, testing::Fault::reorder}) {
      for (int nth : {c.nth, 1000}) {  // 1000: the decorator alone, nothing to inject
        std::unique_ptr<testing::FaultyComm> faulty;
        const auto wrap = [&](Comm& world) -> Comm& {
          if (world.rank() != 1) return world;
          // The part rank 1 receives from rank 0: under the causal mask rank 1's queries see rank
          // 0's keys (rank 2's are all in their future), and it is not rank 1's own local copy.
          faulty = std::make_unique<testing::FaultyComm>(world,
                                                         std::make_shared<testing::FaultPlan>(testing::FaultPlan{fault, c.op, nth, 0}));
          return *faulty;
        };
        std::string log;
        const int code = run_verified(layout, {}, &log, wrap);
        const std::string what = std::string(to_string(c.strategy)) + " fault " + std::to_string(int(fault)) +
                                 " on message " + std::to_string(nth) + "\n" + log;
        if (nth == 1000) {
          EXPECT_EQ(code, 0) << what;
        } else {
          // Exit code 1: the ranks ran to the end and the verification failed (an Error exits 2).
          EXPECT_NE(log.find("failed with exit code 1"), std::string::npos) << what;
        }
      }
    }
  }
}

// The kernel perturbed on one rank for one K,V block: one key missing, or one key negated.
TEST(Executor, APerturbedKernelBlockFailsVerification) {
  for (Strategy strategy : {Strategy::ring, Strategy::uaa})
    for (testing::KernelFault fault : {testing::KernelFault::drop_last_key, testing::KernelFault::perturb_key}) {
      auto layout = Layout::build({shape_of({150}, 4, 2, {MaskKind::full, 0}, 1, DType::fp32),
                                   Cluster{3, 3}, LayoutChoice{strategy, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
      std::ostringstream err;
      const int code = run_with_faulty_kernel(layout, fault, 0, err);
      EXPECT_NE(code, 0) << to_string(strategy) << " kernel fault " << int(fault) << "\n" << err.str();
      EXPECT_NE(err.str().find("rank 2 failed"), std::string::npos) << err.str();
    }
}

// --phase-barriers times each phase alone: the results still verify, every phase the strategy
// has is reported, and no phase can take longer than the iteration that holds it.
TEST(Executor, PhaseBarriersKeepResultsAndTimeEveryPhase) {
  for (const LayoutChoice& choice : {LayoutChoice{Strategy::uaa}, LayoutChoice{Strategy::hybrid_uaa, 2, 2}}) {
    auto layout = Layout::build({shape_of({301}, 4, 2, {MaskKind::causal, 0}), Cluster{4, 4}, choice});
    std::ostringstream err;
    const int code = backends::run_ranks(local_launch(4), [&](Comm& world) {
      backends::ExecutorOptions options;
      options.verify = true;
      options.iterations = 3;
      options.phase_barriers = true;
      const backends::RunResult r = backends::execute(layout, world, options);
      std::set<Phase> seen;
      for (const auto& p : r.phases) {
        seen.insert(p.phase);
        if (p.time.max_s > r.time.max_s) return 3;
      }
      if (seen != std::set<Phase>{Phase::gather, Phase::qkv, Phase::attention, Phase::o}) return 2;
      return r.verified() ? 0 : 1;
    }, err);
    EXPECT_EQ(code, 0) << to_string(choice) << "\n" << err.str();
  }
}

// Beyond the every-row size --verify samples rows on every rank; a wrong sliding window (one key
// too many, every row) is caught by any sample, and the right one passes.
TEST(Executor, SampledVerificationChecksEveryRank) {
  auto layout = Layout::build({shape_of({301, 40}, 4, 2, {MaskKind::sliding_window, 37}, 2, DType::fp16),
                               Cluster{4, 4}, LayoutChoice{Strategy::ring, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  backends::ExecutorOptions options;
  options.verify_rows = 40;
  std::ostringstream err;
  const int code = backends::run_ranks(local_launch(4), [&](Comm& world) {
    options.verify = true;
    const backends::RunResult r = backends::execute(layout, world, options);
    // Each rank's share (10) plus the first and last token of each of its runs, both samples.
    if (r.verified_rows < 40 || r.verified_rows > 40 + 4 + 2 * 2 * 2 * 8) return 3;
    return r.verified() ? 0 : 1;
  }, err);
  EXPECT_EQ(code, 0) << err.str();
}

TEST(Executor, RanksWithDifferentArgumentsRefuseToRun) {
  auto layout = Layout::build({shape_of({100}, 4, 4, {MaskKind::full, 0}), Cluster{3, 3}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  std::ostringstream err;
  const int code = backends::run_ranks(local_launch(3), [&](Comm& world) {
    backends::ExecutorOptions options;
    options.seed = world.rank() == 2 ? 7 : 1;
    try {
      backends::execute(layout, world, options);
    } catch (const Error& e) {
      const bool named = std::string(e.what()).find("rank 2 was started with different arguments") != std::string::npos;
      return named ? 2 : 1;
    }
    return 0;
  }, err);
  EXPECT_EQ(code, 2) << err.str();
}

TEST(Executor, ADeadRankMakesTheOthersFailWithinTheTimeout) {
  auto layout = Layout::build({shape_of({100}, 4, 4, {MaskKind::full, 0}), Cluster{4, 4}, LayoutChoice{Strategy::ring, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  backends::RankLaunch launch = local_launch(4);
  launch.timeout = std::chrono::seconds(2);
  std::ostringstream err;
  const auto start = std::chrono::steady_clock::now();
  const int code = backends::run_ranks(launch, [&](Comm& world) {
    if (world.rank() == 2) _exit(9);  // dies after joining, before the run
    backends::execute(layout, world, {});
    return 0;
  }, err);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(code, 0);
  EXPECT_NE(err.str().find("rank 2 failed with exit code 9"), std::string::npos) << err.str();
  EXPECT_LT(seconds, 15.0) << "the survivors must give up after their 2 s timeout, not hang";
}

}  // namespace
}  // namespace cptune
