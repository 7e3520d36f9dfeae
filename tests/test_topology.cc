// Topology levels in the simulator: a two-level file written as levels predicts exactly what
// the intra/inter file predicts; the O(P) per-level traffic equals a brute-force sum over every
// pair; bytes over a level's links add up to what the Layout sends; a shared uplink, an
// injection port or a host bounce never makes anything faster; ring steps in O(segments) equal
// Layout::ring_step_max; per-operation costs add exactly what they say.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include "core/error.h"
#include "core/layout.h"
#include "sim/candidates.h"
#include "sim/cost_model.h"
#include "sim/hardware.h"
#include "sim/prepared_layout.h"
#include "sim/topology.h"
#include "tests/layout_sweep.h"

namespace cptune::sim {
namespace {


AttentionShape make_shape(std::vector<int64_t> seqs, int64_t hq, int64_t hkv, Mask mask, int64_t D = 16,
                          int64_t Dv = 16, int64_t batch = 1) {
  return AttentionShape{batch, std::move(seqs), hq, hkv, D, Dv, DType::bf16, mask};
}

// Small shapes (GQA, uneven and packed lengths, every mask) on P <= 16 and several node sizes.
void for_each_small_layout(const std::function<void(const Layout&)>& fn) {
  const std::vector<AttentionShape> shapes = {
      make_shape({64}, 8, 8, {MaskKind::full, 0}),
      make_shape({61}, 12, 4, {MaskKind::causal, 0}, 32, 16),
      make_shape({37, 90}, 6, 2, {MaskKind::causal, 0}, 16, 16, 2),
      make_shape({100}, 24, 8, {MaskKind::sliding_window, 9}),
      make_shape({203}, 48, 8, {MaskKind::causal, 0}, 8, 8, 3),
  };
  testing::for_each_layout_of(shapes, fn);
}

double log_uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::exp(std::uniform_real_distribution<double>(std::log(lo), std::log(hi))(rng));
}

Hardware base_hardware(std::mt19937_64& rng) {
  Hardware hw;
  hw.name = "random";
  hw.source = "test";
  hw.intra = {log_uniform(rng, 1e-7, 1e-4), log_uniform(rng, 1e8, 1e12)};
  hw.inter = {log_uniform(rng, 1e-7, 1e-4), log_uniform(rng, 1e8, 1e12)};
  for (DType d : {DType::bf16, DType::fp16, DType::fp32}) {
    hw.attention_flops_per_s.at(d) = log_uniform(rng, 1e9, 1e15);
    hw.peak_flops_per_s.at(d) = hw.attention_flops_per_s.of(d) * 2;
  }
  hw.memory_bandwidth_bytes_per_s = log_uniform(rng, 1e9, 1e13);
  hw.device_memory_bytes = int64_t{1} << 40;
  hw.device_sync_s = log_uniform(rng, 1e-7, 1e-4);
  hw.host_gather_alpha_s = log_uniform(rng, 1e-7, 1e-4);
  hw.operation_latency_s = log_uniform(rng, 1e-7, 1e-4);
  hw.overlap_exposed_fraction = std::uniform_real_distribution<double>(0, 1)(rng);
  return hw;
}

// A random hierarchy for `world` ranks around a node of G ranks: levels below the node divide it,
// levels above hold whole nodes; random links, no uplinks (tests add them).
Hardware random_levels(std::mt19937_64& rng, int64_t G, int64_t world) {
  Hardware hw = base_hardware(rng);
  hw.ranks_per_node = G;
  hw.nodes = (world + G - 1) / G;
  std::vector<int64_t> sizes;
  for (int64_t d = 1; d < G; ++d)
    if (G % d == 0 && (sizes.empty() || d % sizes.back() == 0) && rng() % 2) sizes.push_back(d);
  sizes.push_back(G);
  for (int64_t n = 2; n * G < world && sizes.size() + 1 < kMaxLevels; n *= 2)
    if (rng() % 2) sizes.push_back(n * G);
  for (int64_t s : sizes) {
    const std::string name = "level" + std::to_string(hw.levels.size());
    hw.levels.push_back(Level{name, s, {log_uniform(rng, 1e-7, 1e-4), log_uniform(rng, 1e8, 1e12)}});
  }
  hw.levels.push_back(Level{"top", 0, {log_uniform(rng, 1e-7, 1e-4), log_uniform(rng, 1e8, 1e12)}});
  validate(hw, "random levels");
  return hw;
}

Prediction predict_on(const Layout& l, const Hardware& hw, Pass pass = Pass::forward_backward) {
  const Topology t = topology_of(hw, l.cluster().ranks_per_node, l.world());
  return predict(prepare(l, t), hw, {pass, MetadataChannel::device});
}

// ---------------------------------------------------------------------------------------------

TEST(TopologyTwoLevel, LevelsFileEqualsIntraInterFileExactly) {
  std::mt19937_64 rng(3);
  int checked = 0;
  for_each_small_layout([&](const Layout& l) {
    const Hardware legacy = base_hardware(rng);
    Hardware levels = legacy;
    levels.ranks_per_node = l.cluster().ranks_per_node;
    levels.levels = {Level{"node", levels.ranks_per_node, legacy.intra}, Level{"network", 0, legacy.inter}};
    validate(levels, "two levels");
    for (Pass pass : {Pass::forward, Pass::forward_backward})
      for (MetadataChannel channel : {MetadataChannel::cpu, MetadataChannel::device}) {
        const Prediction a = predict(l, legacy, {pass, channel});
        const Prediction b = predict(l, levels, {pass, channel});
        ASSERT_EQ(a.phase_s, b.phase_s) << to_string(l.choice());
        ASSERT_EQ(a.total_s, b.total_s);
        ASSERT_EQ(a.bytes_intra, b.bytes_intra);
        // The two levels are the two link classes, byte for byte.
        ASSERT_EQ(a.levels, 2u);
        ASSERT_EQ(a.level_bytes[0], a.bytes_intra);
        ASSERT_EQ(a.level_bytes[1], a.bytes_inter);
        ASSERT_EQ(a.level_bytes, b.level_bytes);
      }
    ++checked;
  });
  EXPECT_GT(checked, 2000);
}

// Brute force over every ordered pair of one Ulysses group: sent/received/peers per level and
// the busiest uplink per level, as exchange_traffic defines them.
ExchangeTraffic brute_exchange(const Layout& l, const Topology& t, Exchange which) {
  ExchangeTraffic out;
  const bool gathers = l.strategy() == Strategy::uaa || l.strategy() == Strategy::hybrid_uaa;
  if (l.ulysses() < 2 || (which == Exchange::gather && !gathers)) return out;
  const size_t P = size_t(l.world()), L = t.levels();
  out.sent.assign(P, LevelBytes{});
  out.received.assign(P, LevelBytes{});
  out.peers.assign(P, LevelBytes{});
  std::vector<std::vector<int64_t>> up(L), down(L);
  for (size_t i = 0; i < L; ++i) up[i].assign(P, 0), down[i].assign(P, 0);
  for (int64_t a = 0; a < l.world(); ++a)
    for (int64_t b = 0; b < l.world(); ++b) {
      if (a == b || l.rank(a).r != l.rank(b).r) continue;
      int64_t bytes = 0;
      if (which == Exchange::qkv)
        for (Tensor x : {Tensor::q, Tensor::k, Tensor::v}) bytes += l.exchange_elems(x, a, b) * l.elem_bytes();
      if (which == Exchange::o) bytes = l.exchange_elems(Tensor::o, a, b) * l.elem_bytes();
      if (which == Exchange::gather) bytes = 8 * int64_t(l.shape().seq_lens.size());
      const size_t m = t.meet(a, b);
      out.sent[size_t(a)][m] += bytes;
      out.received[size_t(b)][m] += bytes;
      ++out.peers[size_t(a)][m];
      for (size_t i = 0; i + 1 < L; ++i)
        if (t.instance(a, i) != t.instance(b, i) || (m == i && t.staged(i))) {
          up[i][size_t(t.instance(a, i))] += bytes;
          down[i][size_t(t.instance(b, i))] += bytes;
        }
    }
  for (size_t i = 0; i + 1 < L; ++i)
    out.uplink_bytes[i] = std::max(*std::max_element(up[i].begin(), up[i].end()), *std::max_element(down[i].begin(), down[i].end()));
  return out;
}

TEST(TopologyTraffic, LinearCountsEqualBruteForceOverPairs) {
  std::mt19937_64 rng(5);
  int checked = 0;
  for_each_small_layout([&](const Layout& l) {
    Hardware hw = random_levels(rng, l.cluster().ranks_per_node, l.world());
    for (Level& level : hw.levels) level.host_bounce = rng() % 3 == 0;
    for (size_t i = 0; i + 1 < hw.levels.size(); ++i) hw.levels[i].uplink_bytes_per_s = rng() % 2 ? 1e10 : 0;
    const Topology t = topology_of(hw, hw.ranks_per_node, l.world());
    for (Exchange which : {Exchange::qkv, Exchange::o, Exchange::gather}) {
      const ExchangeTraffic fast = exchange_traffic(l, t, which), slow = brute_exchange(l, t, which);
      ASSERT_EQ(fast.sent, slow.sent) << to_string(l.choice());
      ASSERT_EQ(fast.received, slow.received);
      ASSERT_EQ(fast.peers, slow.peers);
      ASSERT_EQ(fast.uplink_bytes, slow.uplink_bytes) << to_string(l.choice());
    }
    // The ring: the level each hop meets at, and the heads crossing each uplink.
    const RingTraffic ring = ring_traffic(l, t);
    if (l.ring() > 1) {
      for (size_t i = 0; i + 1 < t.levels(); ++i) {
        std::vector<int64_t> up(size_t(l.world()), 0), down(size_t(l.world()), 0);
        for (const RankLayout& rl : l.ranks()) {
          const int64_t next = l.ring_next(rl.rank);
          ASSERT_EQ(ring.hop_level[size_t(rl.rank)], t.meet(rl.rank, next));
          if (t.instance(rl.rank, i) != t.instance(next, i) || (t.meet(rl.rank, next) == i && t.staged(i))) {
            up[size_t(t.instance(rl.rank, i))] += rl.kv_heads.count();
            down[size_t(t.instance(next, i))] += rl.kv_heads.count();
          }
        }
        ASSERT_EQ(ring.uplink_heads[i], std::max(*std::max_element(up.begin(), up.end()), *std::max_element(down.begin(), down.end())));
      }
    }
    ++checked;
  });
  EXPECT_GT(checked, 2000);
}

TEST(TopologyTraffic, BytesOverEachLevelAddUpToWhatTheLayoutSends) {
  std::mt19937_64 rng(9);
  for_each_small_layout([&](const Layout& l) {
    const Hardware hw = random_levels(rng, l.cluster().ranks_per_node, l.world());
    const Prediction p = predict_on(l, hw);
    int64_t all = 0, inside_node = 0;
    for (size_t i = 0; i < p.levels; ++i) {
      all += p.level_bytes[i];
      if (hw.levels[i].ranks != 0 && hw.levels[i].ranks <= hw.ranks_per_node) inside_node += p.level_bytes[i];
    }
    ASSERT_EQ(all, p.bytes_intra + p.bytes_inter) << to_string(l.choice());
    ASSERT_EQ(inside_node, p.bytes_intra) << to_string(l.choice());
  });
}

TEST(TopologyMonotone, SharedUplinksInjectionAndBouncesNeverMakeACandidateFaster) {
  std::mt19937_64 rng(13);
  int slower = 0, checked = 0;
  for_each_small_layout([&](const Layout& l) {
    Hardware hw = random_levels(rng, l.cluster().ranks_per_node, l.world());
    Prediction before = predict_on(l, hw);
    for (int change = 0; change < 4; ++change) {
      Hardware next = hw;
      const size_t i = size_t(rng() % (next.levels.size() - 1));
      switch (change) {
        case 0: next.levels[i].uplink_bytes_per_s = log_uniform(rng, 1e8, 1e12); break;
        case 1: next.levels[i].oversubscription = 1 + log_uniform(rng, 0.1, 8); break;
        case 2: next.injection_bytes_per_s = log_uniform(rng, 1e8, 1e12); break;
        case 3: next.levels[i].host_bounce = true; break;
      }
      if (change == 1 && next.levels[i].uplink_bytes_per_s == 0) next.levels[i].uplink_bytes_per_s = 1e11;
      const Prediction after = predict_on(l, next);
      for (Phase ph : kAllPhases)
        ASSERT_GE(after.phase(ph), before.phase(ph) * (1 - 1e-12)) << to_string(ph) << " change " << change;
      ASSERT_GE(after.total_s, before.total_s * (1 - 1e-12));
      slower += after.total_s > before.total_s;
      ++checked;
      hw = next;
      before = after;
    }
  });
  EXPECT_GT(slower, checked / 10);  // the property is not vacuous: the changes do slow things
}

// Ring steps come from O(segments) per step (equal chunk sizes share a block); they must be
// Layout::ring_step_max's brute-force maxima, step by step, with or without node work.
TEST(TopologyRing, SegmentedStepsEqualLayoutRingStepMax) {
  int checked = 0;
  for_each_small_layout([&](const Layout& l) {
    if (!rotates_kv(l.strategy()) || l.ring() < 2) return;
    for (bool node_work : {true, false}) {
      const PreparedLayout p = prepare(l, Topology{{l.cluster().ranks_per_node, l.world()}, {}}, {node_work});
      int64_t k = 0;
      for (const RingStepLoad& s : p.ring_steps)
        for (int64_t i = 0; i < s.repeat; ++i, ++k) {
          const RingStepMax m = l.ring_step_max(k);
          ASSERT_EQ(s.flops, m.flops) << to_string(l.choice()) << " step " << k;
          ASSERT_EQ(s.bytes[0], m.send_bytes_intra) << to_string(l.choice()) << " step " << k;
          ASSERT_EQ(s.bytes[1], m.send_bytes_inter) << to_string(l.choice()) << " step " << k;
        }
      ASSERT_EQ(k, l.ring());
    }
    ++checked;
  });
  EXPECT_GT(checked, 500);
}

TEST(TopologyRing, LargeSingleSequenceRingsMatchBruteForceToo) {
  // Uneven chunk sizes (S mod 2R != 0) at R = 64 and 96: the segment boundaries matter.
  for (int64_t P : {64, 96})
    for (Mask mask : {Mask{MaskKind::causal, 0}, Mask{MaskKind::full, 0}})
      for (Strategy s : {Strategy::ring, Strategy::ring_zigzag}) {
        const Layout l = Layout::build(LayoutSpec{make_shape({100003}, 4, 2, mask), Cluster{P, 8}, LayoutChoice{s, 1, P, RankOrder::ulysses_inner, HeadPolicy::balanced}});
        const PreparedLayout p = prepare(l, Topology{{8, P}, {}}, {false});
        int64_t k = 0;
        for (const RingStepLoad& step : p.ring_steps)
          for (int64_t i = 0; i < step.repeat; ++i, ++k) {
            ASSERT_EQ(step.flops, l.ring_step_max(k).flops) << P << " step " << k;
            ASSERT_EQ(step.bytes[0], l.ring_step_max(k).send_bytes_intra);
            ASSERT_EQ(step.bytes[1], l.ring_step_max(k).send_bytes_inter);
          }
      }
}

TEST(TopologyOperations, KernelLaunchAndCallOverheadAddWhatTheySay) {
  std::mt19937_64 rng(17);
  const Layout l = Layout::build(
      LayoutSpec{make_shape({4096}, 8, 8, {MaskKind::causal, 0}), Cluster{8, 8}, LayoutChoice{Strategy::ulysses, 8, 1, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  Hardware hw = base_hardware(rng);
  hw.ranks_per_node = 8;
  const Prediction before = predict(l, hw);
  hw.kernel_launch_s = 4e-6;
  hw.call_overhead_s = 1e-5;
  const Prediction after = predict(l, hw);
  EXPECT_NEAR(after.phase(Phase::attention) - before.phase(Phase::attention), 4e-6 + 1e-5, 1e-12);
  EXPECT_NEAR(after.phase(Phase::qkv) - before.phase(Phase::qkv), 2 * 4e-6, 1e-12);  // pack + unpack
  EXPECT_NEAR(after.phase(Phase::o) - before.phase(Phase::o), 2 * 4e-6, 1e-12);
}

TEST(TopologyFiles, LevelsRescaleToTheClusterAndBadLevelsNameTheField) {
  const Hardware h100 = load_hardware("h100-sxm");
  ASSERT_EQ(levels_of(h100, 8).size(), 3u);
  EXPECT_EQ(levels_of(h100, 4)[0].ranks, 4);
  EXPECT_EQ(levels_of(h100, 4)[1].ranks, 128);  // a scalable unit keeps its 32 nodes
  const Hardware l20 = load_hardware("l20");
  EXPECT_EQ(levels_of(l20, 4)[0].ranks, 2);  // the switch stays 2 GPUs
  try {
    levels_of(l20, 3);
    ADD_FAILURE() << "3 ranks per node under 2-GPU switches";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("switch"), std::string::npos) << e.what();
  }
  Hardware bad = l20;
  bad.levels[1].ranks = 3;
  EXPECT_THROW(validate(bad, "bad"), Error);
  bad = l20;
  bad.levels[0].oversubscription = 0.5;
  EXPECT_THROW(validate(bad, "bad"), Error);
  bad = l20;
  bad.ranks_per_node = 16;  // no level is the node
  EXPECT_THROW(validate(bad, "bad"), Error);
  // Presets round-trip through JSON with their levels.
  for (const std::string& name : preset_names()) {
    const Hardware hw = load_hardware(name);
    const Hardware again = hardware_from_json(to_json(hw), name);
    EXPECT_EQ(again.levels, hw.levels) << name;
    EXPECT_EQ(again.injection_bytes_per_s, hw.injection_bytes_per_s) << name;
    EXPECT_EQ(again.kernel_launch_s, hw.kernel_launch_s) << name;
  }
}

// The PCIe symptom: with shared switch uplinks and host-staged cross-socket traffic,
// Ulysses over all 8 L20s no longer ties the best hybrid at 32k tokens.
TEST(TopologyPresets, PcieUlyssesOverEightNoLongerTiesTheHybrid) {
  const AttentionShape shape = make_shape({32768}, 32, 32, {MaskKind::causal, 0}, 128, 128);
  for (const char* name : {"l20", "l20-p2p-off"}) {
    const Hardware hw = load_hardware(name);
    const Ranking r = rank_candidates(shape, cluster_of(hw), hw);
    double ulysses = 0, hybrid = 1e30;
    for (const RankedCandidate& c : r.candidates) {
      if (c.candidate.strategy == Strategy::ulysses) ulysses = c.prediction.total_s;
      if (c.candidate.strategy == Strategy::hybrid) hybrid = std::min(hybrid, c.prediction.total_s);
    }
    EXPECT_GT(ulysses / hybrid, 1.03) << name;
    // Without the shared uplinks and the injection port it would be the old near-tie.
    Hardware open = hw;
    for (Level& level : open.levels) level.uplink_bytes_per_s = 0;
    open.injection_bytes_per_s = 0;
    const Ranking o = rank_candidates(shape, cluster_of(open), open);
    EXPECT_LT(o.best()->prediction.total_s, r.best()->prediction.total_s) << name;
  }
}

}  // namespace
}  // namespace cptune::sim
