// The cost simulator: closed forms worked by hand, the physical floor and monotonicity on
// swept shapes, a rank-by-rank reference of the model, candidate enumeration, presets, CLI.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/layout.h"
#include "sim/attention_rate.h"
#include "sim/candidates.h"
#include "sim/cost_model.h"
#include "sim/hardware.h"
#include "sim/prepared_layout.h"
#include "sim/ranking_json.h"
#include "tests/layout_sweep.h"
#include "tests/round_hardware.h"
#include "tuner/cli/commands.h"

namespace cptune::sim {
namespace {

using testing::for_each_spec;
using testing::try_build;

AttentionShape make_shape(std::vector<int64_t> seqs, int64_t hq, int64_t hkv, Mask mask = {}, int64_t D = 64,
                          int64_t Dv = 64, int64_t batch = 1) {
  return AttentionShape{batch, std::move(seqs), hq, hkv, D, Dv, DType::bf16, mask};
}

using testing::round_hardware;

Hardware random_hardware(std::mt19937_64& rng) {
  auto log_uniform = [&](double lo, double hi) {
    return std::exp(std::uniform_real_distribution<double>(std::log(lo), std::log(hi))(rng));
  };
  Hardware hw = round_hardware();
  hw.intra = {log_uniform(1e-7, 1e-4), log_uniform(1e8, 1e12)};
  hw.inter = {log_uniform(1e-7, 1e-4), log_uniform(1e8, 1e12)};
  for (DType d : {DType::bf16, DType::fp16, DType::fp32}) {
    hw.attention_flops_per_s.at(d) = log_uniform(1e9, 1e15);
    hw.peak_flops_per_s.at(d) = hw.attention_flops_per_s.of(d) * log_uniform(1.0, 4.0);
  }
  hw.memory_bandwidth_bytes_per_s = log_uniform(1e9, 1e13);
  hw.device_sync_s = log_uniform(1e-7, 1e-4);
  hw.host_gather_alpha_s = log_uniform(1e-7, 1e-4);
  return hw;
}

std::string describe(const Layout& l) {
  std::string seqs;
  for (int64_t s : l.shape().seq_lens) seqs += std::to_string(s) + ",";
  return to_string(l.choice()) + " G=" + std::to_string(l.cluster().ranks_per_node) + " S=" + seqs +
         " Hq=" + std::to_string(l.shape().q_heads) + " Hkv=" + std::to_string(l.shape().kv_heads) +
         " mask=" + to_string(l.shape().mask) + " batch=" + std::to_string(l.shape().batch);
}

// A sweep of small shapes (GQA, uneven lengths, packed batches, every mask) over P <= 8 and
// several ranks-per-node, calling fn with every layout that builds.
void for_each_swept_layout(const std::function<void(const Layout&)>& fn) {
  const std::vector<AttentionShape> shapes = {
      make_shape({64}, 8, 8, {MaskKind::full, 0}),
      make_shape({61}, 12, 4, {MaskKind::causal, 0}, 32, 16),
      make_shape({37, 90}, 6, 2, {MaskKind::causal, 0}, 16, 16, 2),
      make_shape({100}, 24, 8, {MaskKind::sliding_window, 9}),
      make_shape({8, 33}, 16, 1, {MaskKind::full, 0}, 8, 24),
      make_shape({203}, 48, 8, {MaskKind::causal, 0}, 8, 8, 3),
  };
  testing::for_each_layout_of(shapes, fn);
}

// ---------------------------------------------------------------------------------------------
// Closed forms worked by hand on round_hardware().

TEST(CostModelClosedForm, UaaOnTwoRanksFullMask) {
  // S = 1000 on 2 ranks of one node, 2 heads (MHA), D = Dv = 64, bf16. Each rank holds 500
  // tokens and after the all-to-all computes 1 head over all 1000.
  const Layout l = Layout::build({make_shape({1000}, 2, 2), Cluster{2, 2}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  const Prediction p = predict(l, round_hardware());
  // Q,K,V: 500 tokens x the peer's head (Q 64 + K 64 + V 64) x 2 B = 192000 B each way, and as
  // much stays local; pack + unpack = 2 (192000 + 192000) + 2 (192000 + 192000) = 1536000 B.
  const double qkv = 1e-5 + 192000 / 1e10 + 1536000 / 1e11;
  // Attention: 1000 x 1000 pairs x 1 head x 2 (64 + 64) FLOPs at 1e12 FLOP/s.
  const double attention = 1000.0 * 1000 * 2 * 128 / 1e12;
  // O: 500 tokens x 1 head x 64 x 2 B = 64000 B each way; copies 2 (128000) + 2 (128000).
  const double o = 1e-5 + 64000 / 1e10 + 512000 / 1e11;
  // Lengths: one peer on the CPU channel, 8 bytes.
  const double gather = 2e-6 + 8 / 1e10;
  EXPECT_DOUBLE_EQ(p.phase(Phase::qkv), qkv);
  EXPECT_DOUBLE_EQ(p.phase(Phase::attention), attention);
  EXPECT_DOUBLE_EQ(p.phase(Phase::o), o);
  EXPECT_DOUBLE_EQ(p.phase(Phase::gather), gather);
  EXPECT_DOUBLE_EQ(p.total_s, gather + qkv + attention + o);
  EXPECT_EQ(p.bytes_intra, 2 * (192000 + 64000 + 8));
  EXPECT_EQ(p.bytes_inter, 0);
  EXPECT_EQ(p.padding_waste_s, 0);

  // Without a CPU channel: the lengths travel like a 1-peer all-to-all, then the device syncs.
  const Prediction d = predict(l, round_hardware(), {Pass::forward, MetadataChannel::device});
  EXPECT_DOUBLE_EQ(d.phase(Phase::gather), 1e-5 + 8 / 1e10 + 3e-5);

  // Forward + backward: dO and dQ,dK,dV mirror O and Q,K,V; attention 2.5x.
  const Prediction b = predict(l, round_hardware(), {Pass::forward_backward, MetadataChannel::cpu});
  EXPECT_DOUBLE_EQ(b.phase(Phase::grad_o), o);
  EXPECT_DOUBLE_EQ(b.phase(Phase::grad_qkv), qkv);
  EXPECT_DOUBLE_EQ(b.phase(Phase::attention_bwd), 2.5 * attention);
  EXPECT_DOUBLE_EQ(b.total_s, gather + 2 * (qkv + o) + 3.5 * attention);
  EXPECT_EQ(b.peak_bytes, 2 * p.peak_bytes);
}

TEST(CostModelClosedForm, RingOnTwoNodesFullMask) {
  // S = 1000, 1 head, ring over 2 ranks on 2 nodes (G = 1): every hop is inter-node.
  const Layout l = Layout::build({make_shape({1000}, 1, 1), Cluster{2, 1}, LayoutChoice{Strategy::ring, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  Hardware hw = round_hardware();
  // A step computes 500 x 500 pairs x 2 (64 + 64) FLOPs; the hop sends 500 tokens of K,V
  // (128 x 2 B each); step 1 also merges 500 x 1 head x (64 + 1) fp32 three times.
  const double compute = 500.0 * 500 * 256 / 1e12;
  const double hop = 2e-5 + 500.0 * 256 / 5e9;
  const double merge = 500.0 * 65 * 4 * 3 / 1e11;
  EXPECT_DOUBLE_EQ(predict(l, hw).phase(Phase::attention), std::max(hop, compute) + compute + merge);
  // A slow network: the hop, not the compute, sets step 0.
  hw.inter.bandwidth_bytes_per_s = 1e9;
  const double slow_hop = 2e-5 + 500.0 * 256 / 1e9;
  const Prediction p = predict(l, hw, {Pass::forward_backward, MetadataChannel::cpu});
  EXPECT_DOUBLE_EQ(p.phase(Phase::attention), slow_hop + compute + merge);
  // Backward: step 0 sends K,V and dK,dV (2 hops, the second in fp32: 500 x 128 x 4 B) against
  // 2.5x compute; step 1 computes and merges; then dK,dV go home in one more fp32 hop.
  const double grad_hop = 2e-5 + 500.0 * 512 / 1e9;
  EXPECT_DOUBLE_EQ(p.phase(Phase::attention_bwd),
                   std::max(slow_hop + grad_hop, 2.5 * compute) + 2.5 * compute + merge + grad_hop);
  EXPECT_EQ(p.phase(Phase::qkv), 0);
  EXPECT_EQ(p.bytes_inter, 2 * 128000 * 2 + 2 * 256000 * 2);  // K,V fwd and bwd; dK,dV (fp32) and return hops
}

TEST(CostModelClosedForm, AllGatherOnFourRanksIsAThreeStepRing) {
  // S = 400 on 4 ranks of one node, 2 KV heads: each shard is 100 tokens x 2 x 128 x 2 B.
  const Layout l = Layout::build({make_shape({400}, 2, 2), Cluster{4, 4}, LayoutChoice{Strategy::allgather_kv, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  const Prediction p = predict(l, round_hardware());
  EXPECT_DOUBLE_EQ(p.phase(Phase::allgather), 3 * (1e-5 + 100.0 * 2 * 128 * 2 / 1e10));
  // Rank 3 computes its 100 queries against all 400 keys, 2 heads.
  EXPECT_DOUBLE_EQ(p.phase(Phase::attention), 100.0 * 400 * 2 * 2 * 128 / 1e12);
}

TEST(CostModelClosedForm, ClassicUlyssesPaddingIsCountedAsWaste) {
  // S = 1001 on 2 ranks: classic Ulysses pads to 1002; UAA pads nothing.
  const AttentionShape s = make_shape({1001}, 2, 2);
  const Cluster m{2, 2};
  const Prediction classic = predict(Layout::build({s, m, LayoutChoice{Strategy::ulysses, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}}), round_hardware());
  const Prediction uaa = predict(Layout::build({s, m, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}}), round_hardware());
  EXPECT_GT(classic.padding_waste_s, 0);
  EXPECT_LT(classic.padding_waste_s, 0.01 * classic.total_s);
  EXPECT_EQ(uaa.padding_waste_s, 0);
  // The padded token is 1 of 1002 stored; its traffic share of the all-to-alls is wasted.
  EXPECT_NEAR(classic.padding_waste_s,
              (classic.phase(Phase::qkv) + classic.phase(Phase::o)) / 1002 +
                  classic.phase(Phase::attention) * (1 - 1001.0 * 1001 / (1002.0 * 1002)),
              1e-15);
}

TEST(CostModelMemory, FitsComparesTheLargestRankWithDeviceMemory) {
  const Layout l = Layout::build({make_shape({4096}, 8, 8), Cluster{4, 4}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  Hardware hw = round_hardware();
  int64_t largest = 0;
  for (const RankLayout& rl : l.ranks()) largest = std::max(largest, rl.peak_bytes);
  hw.device_memory_bytes = largest;
  EXPECT_EQ(predict(l, hw).peak_bytes, largest);
  EXPECT_TRUE(predict(l, hw).fits);
  EXPECT_FALSE(predict(l, hw, {Pass::forward_backward, MetadataChannel::cpu}).fits);
  hw.device_memory_bytes = largest - 1;
  EXPECT_FALSE(predict(l, hw).fits);
}

// ---------------------------------------------------------------------------------------------
// The model written out rank by rank from the Layout, with no pruning and no merged steps:
// the prepared prediction must match it exactly on every swept layout and random hardware.

struct Reference {
  const Layout& l;
  const Hardware& hw;

  std::pair<int64_t, int64_t> ulysses_peers(const RankLayout& rl) const {
    int64_t intra = 0, inter = 0;
    for (int64_t u = 0; u < l.ulysses(); ++u) {
      const int64_t peer = l.global_rank(u, rl.r);
      if (peer != rl.rank) ++(l.node_of(peer) == rl.node ? intra : inter);
    }
    return {intra, inter};
  }
  double links(const LinkBytes& b) const {
    return std::max(double(std::max(b.send_intra, b.recv_intra)) / hw.intra.bandwidth_bytes_per_s,
                    double(std::max(b.send_inter, b.recv_inter)) / hw.inter.bandwidth_bytes_per_s);
  }
  double exchange(const LinkBytes RankLayout::*phase, std::initializer_list<Tensor> tensors) const {
    if (l.ulysses() < 2) return 0;
    double worst = 0;
    for (const RankLayout& rl : l.ranks()) {
      const LinkBytes& b = rl.*phase;
      int64_t self = 0;
      for (Tensor t : tensors) self += l.exchange_elems(t, rl.rank, rl.rank) * l.elem_bytes();
      auto [intra, inter] = ulysses_peers(rl);
      const double copies = double(2 * (b.send() + self) + 2 * (b.recv() + self)) / hw.memory_bandwidth_bytes_per_s;
      worst = std::max(worst, intra * hw.intra.alpha_s + inter * hw.inter.alpha_s + links(b) + copies);
    }
    return worst;
  }
  double gather(MetadataChannel channel) const {
    double worst = 0;
    for (const RankLayout& rl : l.ranks()) {
      if (rl.gather_bytes.send() == 0) continue;
      auto [intra, inter] = ulysses_peers(rl);
      const double t = channel == MetadataChannel::cpu
                           ? (intra + inter) * hw.host_gather_alpha_s + links(rl.gather_bytes)
                           : intra * hw.intra.alpha_s + inter * hw.inter.alpha_s + links(rl.gather_bytes) + hw.device_sync_s;
      worst = std::max(worst, t);
    }
    return worst;
  }
  double hop(int64_t intra, int64_t inter) const {
    double t = 0;
    if (intra > 0) t = hw.intra.alpha_s + double(intra) / hw.intra.bandwidth_bytes_per_s;
    if (inter > 0) t = std::max(t, hw.inter.alpha_s + double(inter) / hw.inter.bandwidth_bytes_per_s);
    return t;
  }
  // Backward: every rank sends the dK,dV (fp32) of its next neighbour's shard home.
  double return_hop() const {
    if (!rotates_kv(l.strategy()) || l.ring() < 2) return 0;
    const AttentionShape& s = l.shape();
    int64_t intra = 0, inter = 0;
    for (const RankLayout& rl : l.ranks()) {
      const int64_t block = l.shard_padded_tokens((rl.r + 1) % l.ring()) * s.batch * rl.kv_heads.count() *
                            (s.head_dim + s.v_head_dim) * 4;
      int64_t& largest = l.node_of(l.ring_next(rl.rank)) == rl.node ? intra : inter;
      largest = std::max(largest, block);
    }
    return hop(intra, inter);
  }
  // `backward`: each step sends the K,V block and its dK,dV in fp32 (4 / elem_bytes as many bytes).
  double attention(double factor, bool backward) const {
    const double rate = hw.attention_flops_per_s.of(l.shape().dtype);
    if (!rotates_kv(l.strategy()) || l.ring() < 2) {
      int64_t most = 0;
      for (const RankLayout& rl : l.ranks()) most = std::max(most, rl.flops);
      return factor * double(most) / rate;
    }
    const AttentionShape& s = l.shape();
    int64_t merge = 0;
    for (const RankLayout& rl : l.ranks())
      merge = std::max(merge, l.shard_padded_tokens(rl.r) * s.batch * rl.q_heads.count() * (s.v_head_dim + 1) * 12);
    double total = 0;
    for (int64_t k = 0; k < l.ring(); ++k) {
      const RingStepMax m = l.ring_step_max(k);
      const double compute = factor * double(m.flops) / rate +
                             (k > 0 && m.flops > 0 ? double(merge) / hw.memory_bandwidth_bytes_per_s : 0.0);
      const int64_t eb = l.elem_bytes();
      const double hops = hop(m.send_bytes_intra, m.send_bytes_inter) +
                          (backward ? hop(m.send_bytes_intra * 4 / eb, m.send_bytes_inter * 4 / eb) : 0.0);
      total += std::max(hops, compute);
    }
    return total;
  }
};

TEST(CostModelReference, PreparedPredictionEqualsRankByRankModel) {
  std::mt19937_64 rng(7);
  int checked = 0;
  for_each_swept_layout([&](const Layout& l) {
    const Hardware hw = random_hardware(rng);
    const PreparedLayout prepared = prepare(l);
    const Reference ref{l, hw};
    for (MetadataChannel channel : {MetadataChannel::cpu, MetadataChannel::device}) {
      const Prediction p = predict(prepared, hw, {Pass::forward_backward, channel});
      // Equal up to summation order (merged ring steps multiply where the reference adds).
      auto near = [](double a, double b) { return std::fabs(a - b) <= 1e-12 * std::max(std::fabs(a), std::fabs(b)); };
      ASSERT_PRED2(near, p.phase(Phase::qkv), ref.exchange(&RankLayout::qkv_bytes, {Tensor::q, Tensor::k, Tensor::v}))
          << describe(l);
      ASSERT_PRED2(near, p.phase(Phase::o), ref.exchange(&RankLayout::o_bytes, {Tensor::o})) << describe(l);
      ASSERT_PRED2(near, p.phase(Phase::gather), ref.gather(channel)) << describe(l);
      ASSERT_PRED2(near, p.phase(Phase::attention), ref.attention(1.0, false)) << describe(l);
      ASSERT_PRED2(near, p.phase(Phase::attention_bwd), ref.attention(2.5, true) + ref.return_hop()) << describe(l);
      // Prepared once, predicted many times: the same answer as preparing afresh.
      const Prediction fresh = predict(l, hw, {Pass::forward_backward, channel});
      ASSERT_EQ(fresh.phase_s, p.phase_s);
      ASSERT_EQ(fresh.total_s, p.total_s);
      ASSERT_EQ(fresh.bytes_intra, p.bytes_intra);
      ASSERT_EQ(fresh.bytes_inter, p.bytes_inter);
    }
    ++checked;
  });
  EXPECT_GT(checked, 3000);
}

// ---------------------------------------------------------------------------------------------
// Properties over the sweep.

TEST(CostModelFloor, NoPhaseBeatsItsBytesOverBandwidthOrItsFlopsOverPeak) {
  std::mt19937_64 rng(11);
  int checked = 0;
  for_each_swept_layout([&](const Layout& l) {
    const Hardware hw = random_hardware(rng);
    const Prediction p = predict(l, hw, {Pass::forward_backward, MetadataChannel::cpu});
    const double peak = hw.peak_flops_per_s.of(l.shape().dtype);
    auto floor_of = [&](const LinkBytes& b, double times) {
      return times * std::max({double(b.send_intra) / hw.intra.bandwidth_bytes_per_s,
                               double(b.recv_intra) / hw.intra.bandwidth_bytes_per_s,
                               double(b.send_inter) / hw.inter.bandwidth_bytes_per_s,
                               double(b.recv_inter) / hw.inter.bandwidth_bytes_per_s});
    };
    const double tol = 1 + 1e-12;
    for (const RankLayout& rl : l.ranks()) {
      ASSERT_LE(floor_of(rl.qkv_bytes, 1), p.phase(Phase::qkv) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.qkv_bytes, 1), p.phase(Phase::grad_qkv) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.o_bytes, 1), p.phase(Phase::o) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.o_bytes, 1), p.phase(Phase::grad_o) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.gather_bytes, 1), p.phase(Phase::gather) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.allgather_bytes, 1), p.phase(Phase::allgather) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.allgather_bytes, 1), p.phase(Phase::reduce_scatter) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.ring_bytes, 1), p.phase(Phase::attention) * tol) << describe(l);
      ASSERT_LE(floor_of(rl.ring_bytes, 2), p.phase(Phase::attention_bwd) * tol) << describe(l);
      ASSERT_LE(double(rl.flops) / peak, p.phase(Phase::attention) * tol) << describe(l);
      ASSERT_LE(2.5 * double(rl.flops) / peak, p.phase(Phase::attention_bwd) * tol) << describe(l);
      // The tighter floor, which the valid hardware above (rate <= peak) does not imply.
      const double rate = hw.attention_flops_per_s.of(l.shape().dtype);
      ASSERT_LE(double(rl.flops) / rate, p.phase(Phase::attention) * tol) << describe(l);
    }
    double sum = 0;
    for (double t : p.phase_s) sum += t;
    ASSERT_DOUBLE_EQ(p.total_s, sum);
    ++checked;
  });
  EXPECT_GT(checked, 3000);
}

// The floor above rests on the achieved rate never beating the peak. Random hardware that breaks
// that assumption is refused naming the field; a fit that pushes a rate past the peak raises the
// peak, and the prediction keeps its FLOP floor.
TEST(CostModelFloor, HardwareFasterThanItsPeakIsRefusedOrRaisesThePeak) {
  std::mt19937_64 rng(23);
  const Layout l = Layout::build({AttentionShape{1, {4097}, 24, 8, 64, 64, DType::bf16, {MaskKind::causal, 0}},
                                  Cluster{8, 8}, LayoutChoice{Strategy::ring, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  for (int i = 0; i < 200; ++i) {
    Hardware hw = random_hardware(rng);
    const DType d = std::array{DType::bf16, DType::fp16, DType::fp32}[i % 3];
    hw.attention_flops_per_s.at(d) = hw.peak_flops_per_s.of(d) * std::exp(std::uniform_real_distribution<double>(0.01, 2.0)(rng));
    try {
      validate(hw, "random");
      FAIL() << "a rate above the peak was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("attention_flops_per_s." + std::string(to_string(d))), std::string::npos) << e.what();
    }
    const Hardware fitted = from_vector(hw, to_vector(hw));
    ASSERT_GE(fitted.peak_flops_per_s.of(d), fitted.attention_flops_per_s.of(d));
    if (d != DType::bf16) continue;
    const Prediction p = predict(l, fitted, {Pass::forward, MetadataChannel::cpu});
    for (const RankLayout& rl : l.ranks())
      ASSERT_LE(double(rl.flops) / fitted.peak_flops_per_s.of(d), p.phase(Phase::attention) * (1 + 1e-12));
  }
}

// Scales one group of parameters by `factor` (> 1 means better hardware).
Hardware improved(Hardware hw, int which, double factor) {
  switch (which) {
    case 0: hw.intra.bandwidth_bytes_per_s *= factor; break;
    case 1: hw.inter.bandwidth_bytes_per_s *= factor; break;
    case 2: hw.intra.alpha_s /= factor; hw.inter.alpha_s /= factor; break;
    case 3:
      for (DType d : {DType::bf16, DType::fp16, DType::fp32}) {
        hw.attention_flops_per_s.at(d) *= factor;
        hw.peak_flops_per_s.at(d) *= factor;
      }
      break;
    case 4: hw.memory_bandwidth_bytes_per_s *= factor; break;
    default: hw.device_sync_s /= factor; hw.host_gather_alpha_s /= factor; break;
  }
  return hw;
}

TEST(CostModelMonotone, BetterHardwareIsNeverSlower) {
  std::mt19937_64 rng(13);
  int checked = 0;
  for_each_swept_layout([&](const Layout& l) {
    const Hardware hw = random_hardware(rng);
    const PreparedLayout prepared = prepare(l);
    for (Pass pass : {Pass::forward, Pass::forward_backward})
      for (MetadataChannel channel : {MetadataChannel::cpu, MetadataChannel::device}) {
        const double base = predict(prepared, hw, {pass, channel}).total_s;
        for (int which = 0; which < 6; ++which)
          ASSERT_LE(predict(prepared, improved(hw, which, 1.7), {pass, channel}).total_s, base)
              << describe(l) << " parameter group " << which;
      }
    ++checked;
  });
  EXPECT_GT(checked, 3000);
}

// More tokens never make a layout faster. Full and causal masks: a sliding window's ring
// blocks can lose pairs when chunk boundaries move right, so one step's maximum may shrink.
TEST(CostModelMonotone, MoreTokensAreNeverFaster) {
  std::mt19937_64 rng(17);
  int checked = 0;
  for (Mask mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}})
    for (int64_t P : {2, 3, 4, 6, 8})
      for (int64_t G : {1, 2, 4})
        for (auto [hq, hkv] : {std::pair<int64_t, int64_t>{8, 8}, {12, 4}, {6, 2}}) {
          const Hardware hw = random_hardware(rng);
          for (int64_t S = P; S <= 3 * P + 20; ++S)
            for_each_spec(make_shape({S}, hq, hkv, mask, 16, 16), P, std::min(G, P), [&](const LayoutSpec& spec) {
              auto now = try_build(spec);
              if (!now) return;
              LayoutSpec longer = spec;
              longer.shape.seq_lens[0] = S + 1 + static_cast<int64_t>(rng() % 5);
              const Layout next = Layout::build(longer);
              for (Pass pass : {Pass::forward, Pass::forward_backward})
                ASSERT_LE(predict(*now, hw, {pass, MetadataChannel::cpu}).total_s,
                          predict(next, hw, {pass, MetadataChannel::cpu}).total_s * (1 + 1e-12))
                    << describe(*now) << " -> " << longer.shape.seq_lens[0];
              ++checked;
            });
        }
  EXPECT_GT(checked, 20000);
}

// ---------------------------------------------------------------------------------------------
// Candidates.

TEST(Candidates, EveryCandidateIsResolvedAndItsTextReadsBack) {
  const AttentionShape shape = make_shape({4096}, 24, 8);
  const Cluster cluster{16, 8};
  for (const LayoutChoice& c : enumerate_candidates(shape, cluster)) {
    EXPECT_EQ(resolve(c, cluster), c) << to_string(c);
    EXPECT_EQ(parse_layout_choice(to_string(c)), c) << to_string(c);
  }
  // A choice with U and R left to the strategy comes back with them filled in.
  EXPECT_EQ(resolve(LayoutChoice{Strategy::ring}, cluster),
            (LayoutChoice{Strategy::ring, 1, 16, RankOrder::ulysses_inner, HeadPolicy::balanced}));
  EXPECT_EQ(resolve(LayoutChoice{Strategy::hybrid_uaa, 4, 0}, cluster),
            (LayoutChoice{Strategy::hybrid_uaa, 4, 4, RankOrder::ulysses_inner, HeadPolicy::balanced}));
  EXPECT_THROW(parse_layout_choice("hybrid U=0 R=2 ulysses-inner balanced"), Error);
  EXPECT_THROW(parse_layout_choice("hybrid U=2 R=2 ulysses-inner"), Error);
}

// Every candidate builds; none repeats; every spec of the exhaustive sweep that builds is a
// candidate, or one the enumeration leaves out on purpose and whose prediction equals a
// candidate's (ring-inner where orders tie, kv-aligned where it places heads the same), or a
// degenerate hybrid (U = 1 or R = 1, the pure strategies' meshes).
TEST(Candidates, EnumerationIsCompleteAndFeasible) {
  std::mt19937_64 rng(19);
  int specs = 0;
  for (const AttentionShape& shape : {make_shape({50}, 8, 8, {MaskKind::causal, 0}), make_shape({47}, 12, 4),
                                      make_shape({64}, 6, 2, {MaskKind::causal, 0}), make_shape({30}, 4, 1)})
    for (int64_t P : {1, 2, 4, 6, 8})
      for (int64_t G : {1, 2, 4, 8}) {
        const Cluster cluster{P, std::min(G, P)};
        const Hardware hw = random_hardware(rng);
        std::vector<Refusal> refused;
        const std::vector<LayoutChoice> candidates = enumerate_candidates(shape, cluster, &refused);
        ASSERT_FALSE(candidates.empty());
        std::vector<double> times;
        for (const LayoutChoice& c : candidates) {
          ASSERT_NO_THROW(times.push_back(predict(Layout::build({shape, cluster, c}), hw).total_s)) << to_string(c);
          ASSERT_EQ(std::count(candidates.begin(), candidates.end(), c), 1) << to_string(c);
        }
        for (const Refusal& r : refused) {
          ASSERT_THROW(Layout::build({shape, cluster, r.candidate}), Error) << to_string(r.candidate);
          ASSERT_FALSE(r.reason.empty());
        }
        for_each_spec(shape, P, cluster.ranks_per_node, [&](const LayoutSpec& spec) {
          auto l = try_build(spec);
          if (!l) return;
          ++specs;
          const LayoutChoice c = l->choice();
          const bool hybrid = c.strategy == Strategy::hybrid || c.strategy == Strategy::hybrid_uaa;
          if (hybrid && (c.ulysses == 1 || c.ring == 1)) return;
          if (std::count(candidates.begin(), candidates.end(), c)) return;
          const double t = predict(*l, hw).total_s;
          ASSERT_TRUE(std::any_of(times.begin(), times.end(), [&](double x) { return x == t; }))
              << "left out but not equivalent: " << describe(*l);
          const bool tied_order = c.order == RankOrder::ring_inner;
          const bool tied_policy = c.head_policy == HeadPolicy::kv_aligned;
          ASSERT_TRUE(tied_order || tied_policy) << describe(*l);
        });
      }
  EXPECT_GT(specs, 500);
}

TEST(Candidates, BothOrdersOnlyAcrossNodesAndBothPoliciesOnlyWhereHeadsDiffer) {
  auto count = [](const AttentionShape& s, Cluster c, RankOrder o, HeadPolicy h) {
    int n = 0;
    for (const LayoutChoice& k : enumerate_candidates(s, c)) n += k.order == o && k.head_policy == h;
    return n;
  };
  const AttentionShape gqa = make_shape({4096}, 24, 8), mha = make_shape({4096}, 16, 16);
  EXPECT_EQ(count(gqa, {8, 8}, RankOrder::ring_inner, HeadPolicy::balanced), 0);  // one node
  EXPECT_GT(count(gqa, {16, 8}, RankOrder::ring_inner, HeadPolicy::balanced), 0);
  EXPECT_EQ(count(gqa, {16, 1}, RankOrder::ring_inner, HeadPolicy::balanced), 0);  // all inter-node
  EXPECT_EQ(count(mha, {16, 8}, RankOrder::ulysses_inner, HeadPolicy::kv_aligned), 0);
  // 24 / 8 heads on U = 16: kv-aligned needs 16 KV heads and is refused; on U = 2 (hybrid 2x8)
  // 4 KV heads each give the same heads as balanced; U = 4 too (2 each); so no kv-aligned at all.
  EXPECT_EQ(count(gqa, {16, 8}, RankOrder::ulysses_inner, HeadPolicy::kv_aligned), 0);
  // 24 / 8 heads on U = 3 (hybrid 3 x 2): balanced gives 8 Q heads each, straddling groups of
  // 3 (KV heads 0-2, 2-5, 5-7); kv-aligned gives 9, 9, 6 Q heads and no KV head twice.
  EXPECT_GT(count(gqa, {6, 6}, RankOrder::ulysses_inner, HeadPolicy::kv_aligned), 0);
}

TEST(Candidates, RankingIsFastestFirstWithSpeedups) {
  const AttentionShape shape = make_shape({131072}, 24, 8, {MaskKind::causal, 0}, 128, 128);
  const Hardware hw = load_hardware("h100-sxm");
  const Ranking r = rank_candidates(shape, {16, 8}, hw, {});
  ASSERT_GT(r.candidates.size(), 5u);
  for (size_t i = 1; i < r.candidates.size(); ++i)
    EXPECT_LE(r.candidates[i - 1].prediction.total_s, r.candidates[i].prediction.total_s);
  EXPECT_DOUBLE_EQ(r.worst_s, r.candidates.back().prediction.total_s);
  EXPECT_DOUBLE_EQ(r.best()->speedup_over_worst, r.worst_s / r.best()->prediction.total_s);
  EXPECT_GT(r.best()->speedup_over_worst, 1.0);
  // 24 heads do not split over 16 ranks: classic Ulysses is refused, so no speed-up over it.
  EXPECT_FALSE(r.ulysses_s);
  EXPECT_FALSE(r.best()->speedup_over_ulysses);
  // With 32 heads it builds and every candidate has its speed-up over it.
  const Ranking r32 = rank_candidates(make_shape({131072}, 32, 8, {MaskKind::causal, 0}, 128, 128), {16, 8}, hw, {});
  ASSERT_TRUE(r32.ulysses_s);
  for (const RankedCandidate& rc : r32.candidates)
    EXPECT_DOUBLE_EQ(*rc.speedup_over_ulysses, *r32.ulysses_s / rc.prediction.total_s);
}

TEST(Candidates, ThoseThatDoNotFitComeLast) {
  Hardware hw = load_hardware("h100-sxm");
  const AttentionShape shape = make_shape({1 << 20}, 32, 8, {MaskKind::causal, 0}, 128, 128);
  const Ranking all_fit = rank_candidates(shape, {16, 8}, hw, {});
  std::vector<int64_t> peaks;
  for (const RankedCandidate& rc : all_fit.candidates) peaks.push_back(rc.prediction.peak_bytes);
  std::sort(peaks.begin(), peaks.end());
  hw.device_memory_bytes = peaks[peaks.size() / 2];  // about half fit
  const Ranking r = rank_candidates(shape, {16, 8}, hw, {});
  bool seen_misfit = false;
  for (const RankedCandidate& rc : r.candidates) {
    if (!rc.prediction.fits) seen_misfit = true;
    EXPECT_TRUE(!seen_misfit || !rc.prediction.fits) << to_string(rc.candidate);
  }
  EXPECT_TRUE(seen_misfit);
  EXPECT_TRUE(r.best()->prediction.fits);
}

// ---------------------------------------------------------------------------------------------
// Hardware files.

class TempDir {
 public:
  TempDir() : path_(std::filesystem::temp_directory_path() / ("cptune_sim_" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string file = (path_ / name).string();
    std::ofstream(file) << text;
    return file;
  }

 private:
  std::filesystem::path path_;
};

TEST(HardwarePresets, AllLoadWithTheirSourcesAndRoundTrip) {
  const std::vector<std::string> names = preset_names();
  for (const char* want : {"h100-sxm", "h200", "a100", "l20", "cpu-gloo"})
    EXPECT_TRUE(std::count(names.begin(), names.end(), want)) << want;
  TempDir dir;
  for (const std::string& name : names) {
    const Hardware hw = load_hardware(name);
    EXPECT_EQ(hw.name, name);
    EXPECT_GT(hw.source.size(), 100u) << name;
    const Hardware again = load_hardware(dir.write(name + ".json", to_json(hw).dump()));
    EXPECT_EQ(to_json(again), to_json(hw));
    const std::string saved = dir.write("saved.json", "");
    save_hardware(hw, saved);
    EXPECT_EQ(to_json(load_hardware(saved)), to_json(hw));
  }
  // NVLink 4 and NDR as the issue states them.
  const Hardware h100 = load_hardware("h100-sxm");
  EXPECT_EQ(h100.intra.bandwidth_bytes_per_s, 450e9);
  EXPECT_EQ(h100.inter.bandwidth_bytes_per_s, 50e9);
  EXPECT_EQ(load_hardware("a100").intra.bandwidth_bytes_per_s, 300e9);
  EXPECT_EQ(load_hardware("a100").inter.bandwidth_bytes_per_s, 25e9);
}

TEST(HardwareFiles, BadFilesNameTheFileAndTheField) {
  TempDir dir;
  const nlohmann::json good = to_json(load_hardware("cpu-gloo"));  // a two-level file (intra, inter)
  auto expect_error = [&](const std::string& file, const std::vector<std::string>& needles) {
    try {
      load_hardware(file);
      ADD_FAILURE() << "expected an error for " << file;
    } catch (const Error& e) {
      for (const std::string& needle : needles)
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what() << " lacks " << needle;
    }
  };
  nlohmann::json doc = good;
  doc["intra"]["bandwidth_bytes_per_s"] = -1;
  expect_error(dir.write("negative.json", doc.dump()), {"negative.json", "intra.bandwidth_bytes_per_s", "positive"});
  doc = good;
  doc["inter"].erase("alpha_s");
  expect_error(dir.write("missing.json", doc.dump()), {"missing.json", "inter.alpha_s", "missing"});
  doc = good;
  doc["intra"]["bandwith_bytes_per_s"] = 1e9;
  expect_error(dir.write("typo.json", doc.dump()), {"typo.json", "intra.bandwith_bytes_per_s", "not a hardware field"});
  doc = good;
  doc["nodes"] = 1.5;
  expect_error(dir.write("fraction.json", doc.dump()), {"fraction.json", "nodes", "whole number"});
  doc = good;
  doc["attention_flops_per_s"]["bf16"] = 2e15;
  expect_error(dir.write("too_fast.json", doc.dump()), {"too_fast.json", "attention_flops_per_s.bf16", "peak"});
  doc = good;
  doc["memory_bandwidth_bytes_per_s"] = "fast";
  expect_error(dir.write("text.json", doc.dump()), {"text.json", "memory_bandwidth_bytes_per_s", "number"});
  expect_error(dir.write("broken.json", "{\"name\": "), {"broken.json", "not valid JSON"});
  expect_error(dir.write("list.json", "[1, 2]"), {"list.json", "JSON object"});
  expect_error("/nonexistent/hw.json", {"/nonexistent/hw.json", "cannot be read"});
  expect_error("h100", {"unknown hardware 'h100'", "h100-sxm"});
}

TEST(HardwareVector, FitParametersRoundTripAndRejectBadValues) {
  const Hardware hw = load_hardware("h100-sxm");
  const Eigen::VectorXd v = to_vector(hw);
  ASSERT_EQ(v.size(), static_cast<Eigen::Index>(kFitParameterNames.size()));
  EXPECT_EQ(v[1], hw.intra.bandwidth_bytes_per_s);
  EXPECT_EQ(to_json(from_vector(hw, v)), to_json(hw));
  Eigen::VectorXd faster = v;
  faster[4] = 2e15;  // attention bf16 past the preset's peak: the peak follows
  EXPECT_EQ(from_vector(hw, faster).peak_flops_per_s.bf16, 2e15);
  Eigen::VectorXd bad = v;
  bad[3] = -5;
  try {
    from_vector(hw, bad);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inter.bandwidth_bytes_per_s"), std::string::npos) << e.what();
  }
  EXPECT_THROW(from_vector(hw, Eigen::VectorXd::Zero(3)), Error);
}

// ---------------------------------------------------------------------------------------------
// Attention efficiency by shape (sim/attention_rate.h).

// An H100-like kernel: 132 SMs, 128-row tiles, a tile's fixed part worth 256 keys, 20 us a call.
AttentionKernel h100_like() { return {132, 128, 256, 32, 20e-6}; }

AttentionCall call_of(int64_t rows, int64_t keys, int64_t batch_heads, int64_t head_dim = 128) {
  return {rows, batch_heads, head_dim, 4 * rows * keys * batch_heads * head_dim};
}

TEST(AttentionRate, LongCallsTendToTheQuotedRateAndUnmodelledKernelsAreFlopsOverIt) {
  const double rate = 600e12;
  for (int64_t heads : {1, 24, 132}) {
    const AttentionCall big = call_of(int64_t(1) << 20, int64_t(1) << 20, heads);
    EXPECT_NEAR(attention_call_s(big, h100_like(), rate) * rate / double(big.flops), 1.0, 0.02) << heads;  // last wave, tile part
  }
  const AttentionCall small = call_of(512, 512, 8);
  EXPECT_EQ(attention_call_s(small, AttentionKernel{}, rate), double(small.flops) / rate);
  EXPECT_EQ(attention_call_s(AttentionCall{}, h100_like(), rate), 0.0);
}

TEST(AttentionRate, TilesComeInWavesOverTheUnits) {
  const AttentionKernel k = h100_like();
  const double rate = 600e12;
  // 132 tiles fill one wave; 133 need a second that costs as much as the first.
  const AttentionCall full = call_of(128, 8192, 132), one_more = call_of(128, 8192, 133);
  EXPECT_EQ(attention_waves(full, k), 1);
  EXPECT_EQ(attention_waves(one_more, k), 2);
  EXPECT_NEAR(attention_call_s(one_more, k, rate) - k.call_s, 2 * (attention_call_s(full, k, rate) - k.call_s), 1e-12);
  // A partial tile costs a whole one: 65 rows as 128.
  EXPECT_EQ(attention_call_s(call_of(65, 4096, 8), k, rate) - k.call_s,
            (attention_call_s(call_of(128, 4096, 8), k, rate) - k.call_s));
}

TEST(AttentionRate, MoreWorkIsNeverFasterAndSplittingACallIsNeverCheaper) {
  const AttentionKernel k = h100_like();
  const double rate = 600e12;
  for (int64_t rows : {64, 300, 1024, 4608, 32768})
    for (int64_t keys : {64, 577, 4608, 65536})
      for (int64_t bh : {1, 3, 24, 200}) {
        const double t = attention_call_s(call_of(rows, keys, bh), k, rate);
        EXPECT_LE(t, attention_call_s(call_of(rows + 1, keys, bh), k, rate)) << rows << " " << keys << " " << bh;
        EXPECT_LE(t, attention_call_s(call_of(rows, keys + 1, bh), k, rate)) << rows << " " << keys << " " << bh;
        EXPECT_LE(t, attention_call_s(call_of(rows, keys, bh + 1), k, rate)) << rows << " " << keys << " " << bh;
        EXPECT_GE(t * (1 + 1e-12), double(call_of(rows, keys, bh).flops) / rate);  // never above the asymptote's rate
        // A ring step's block: P calls of S/P keys cost at least the one call over S keys.
        for (int64_t P : {2, 4, 8})
          if (keys % P == 0) EXPECT_GE(P * attention_call_s(call_of(rows, keys / P, bh), k, rate), t * (1 - 1e-12));
      }
}

TEST(AttentionRate, HeadDimBelow128RunsSlowerPerFlop) {
  const AttentionKernel k = h100_like();
  const double rate = 600e12;
  const AttentionCall d64 = call_of(8192, 8192, 64, 64), d128 = call_of(8192, 8192, 32, 128);
  ASSERT_EQ(d64.flops, d128.flops);
  EXPECT_GT(attention_call_s(d64, k, rate), attention_call_s(d128, k, rate));
}

// Synthetic measurements of a known kernel over a probe's grid of shapes, with +-3% noise: the
// fit recovers the rate, the per-call cost and every point's time.
TEST(AttentionRate, FitRecoversAKnownKernelFromNoisyPoints) {
  std::mt19937_64 rng(3);
  for (const AttentionKernel truth : {h100_like(), AttentionKernel{78, 128, 64, 0, 8e-6}, AttentionKernel{108, 64, 512, 96, 35e-6}}) {
    const double rate = truth.units == 78 ? 420e12 : 500e12;
    std::vector<AttentionPoint> points;
    std::uniform_real_distribution<double> noise(-0.03, 0.03);
    for (int64_t rows : {256, 1024, 4096, 16384})
      for (int64_t keys : {256, 1024, 4096, 16384})
        for (int64_t bh : {8, 48})
          for (int64_t d : {64, 128}) {
            const AttentionCall c = call_of(rows, keys, bh, d);
            points.push_back({c, attention_call_s(c, truth, rate) * (1 + noise(rng)), "synthetic"});
          }
    const AttentionFit fit = fit_attention_kernel(points, {truth.units, truth.tile_rows, 0, 0, 0});
    SCOPED_TRACE(fmt::format("units {} rate {:.3g} -> {:.3g}, call {:.3g} -> {:.3g}, keys {} -> {}", truth.units, rate,
                             fit.flops_per_s, truth.call_s, fit.kernel.call_s, truth.tile_keys_overhead,
                             fit.kernel.tile_keys_overhead));
    EXPECT_NEAR(fit.flops_per_s, rate, 0.05 * rate);
    EXPECT_NEAR(fit.kernel.call_s, truth.call_s, 0.25 * truth.call_s + 1e-6);
    EXPECT_LT(fit.median_abs_residual, 0.03);
    EXPECT_LT(fit.max_abs_residual, 0.08);
  }
  EXPECT_THROW(fit_attention_kernel(std::vector<AttentionPoint>(2, AttentionPoint{call_of(128, 128, 1), 1e-3, "x"}), h100_like()), Error);
  std::vector<AttentionPoint> bad(3, AttentionPoint{call_of(128, 128, 1), 1e-3, "x"});
  bad[1].seconds = -1;
  EXPECT_THROW(fit_attention_kernel(bad, h100_like()), Error);
}

// The cost model prices a ring's steps at their own size: with the kernel modelled, a ring over
// P ranks loses per FLOP against Ulysses at a diffusion-size shape, and the no-kernel model is
// what it was (one rate for every FLOP).
TEST(AttentionRate, RingStepsArePricedAtTheirOwnSize) {
  Hardware hw = load_hardware("h100-sxm");
  const AttentionShape flux{1, {4608}, 24, 24, 128, 128, DType::bf16, {MaskKind::full, 0}};
  const Cluster one_node{8, 8};
  const Layout ring = Layout::build({flux, one_node, LayoutChoice{Strategy::ring, 0, 0}});
  const Layout ulysses = Layout::build({flux, one_node, LayoutChoice{Strategy::ulysses, 0, 0}});
  hw.attention_kernel = AttentionKernel{};
  const double flat_ring = predict(ring, hw).phase(Phase::attention), flat_ulysses = predict(ulysses, hw).phase(Phase::attention);
  hw.attention_kernel = h100_like();
  const double ring_s = predict(ring, hw).phase(Phase::attention), ulysses_s = predict(ulysses, hw).phase(Phase::attention);
  EXPECT_GT(ring_s / flat_ring, ulysses_s / flat_ulysses);
  EXPECT_GT(ring_s, flat_ring);
}

// ---------------------------------------------------------------------------------------------
// Per-collective rates, the compute slowdown beside NCCL, host syncs.

TEST(CollectiveRates, AMeasuredRateReplacesThePathModelAndItsAbsenceKeepsIt) {
  Hardware hw = load_hardware("l20");
  ExchangeLoad e;
  e.peers = {1, 2, 4};
  e.bytes = {1 << 20, 2 << 20, 4 << 20};
  e.injection_bytes = 7 << 20;
  const double path = exchange_time_s(e, hw);
  hw.levels[1].collective[size_t(Collective::alltoall)] = {1e-6, 1e9};  // the socket's: not the group's widest level
  EXPECT_EQ(exchange_time_s(e, hw), path);
  hw.levels[2].collective[size_t(Collective::alltoall)] = {5e-6, 4e9};
  EXPECT_NEAR(exchange_time_s(e, hw), hw.operation_latency_s + 7 * 5e-6 + double(7 << 20) / 4e9, 1e-12);
  // The device gather of UAA's lengths uses the all_gather rate, not the alltoall's.
  ExchangeLoad lengths;
  lengths.peers = {1, 2, 4};
  lengths.bytes = {8, 16, 32};
  const double before = gather_time_s(lengths, hw, MetadataChannel::device);
  hw.levels[2].collective[size_t(Collective::all_gather)] = {20e-6, 1e9};
  EXPECT_NEAR(gather_time_s(lengths, hw, MetadataChannel::device) - before, 7 * (20e-6 - hw.levels[2].link.alpha_s), 1e-7);
  // A hop uses the sendrecv rate of its level.
  const double hop = hop_time_s(LevelBytes{0, 1 << 20}, hw);
  hw.levels[1].collective[size_t(Collective::sendrecv)] = {2e-6, 2e9};
  EXPECT_GT(hop_time_s(LevelBytes{0, 1 << 20}, hw), hop);
  EXPECT_NEAR(hop_time_s(LevelBytes{0, 1 << 20}, hw), hw.operation_latency_s + 2e-6 + double(1 << 20) / 2e9, 1e-12);
  // Bad entries are refused naming the level and the collective.
  nlohmann::json doc = to_json(hw);
  doc["levels"][1]["sendrecv"]["bandwidth_bytes_per_s"] = -1;
  try {
    hardware_from_json(doc, "bad.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sendrecv"), std::string::npos) << e.what();
  }
  doc = to_json(hw);
  doc["levels"][1]["alltoal"] = doc["levels"][1]["sendrecv"];
  EXPECT_THROW(hardware_from_json(doc, "typo.json"), Error);
}

TEST(RingStepCosts, ComputeBesideNcclIsSlowedOnlyOnStepsThatSend) {
  Hardware hw = round_hardware();
  const AttentionShape shape = make_shape({4096}, 8, 8, {MaskKind::full, 0}, 128, 128);
  const Layout ring = Layout::build({shape, Cluster{4, 4}, LayoutChoice{Strategy::ring, 0, 0}});
  const PreparedLayout p = prepare(ring);
  hw.intra.bandwidth_bytes_per_s = 1e15;  // links never the bottleneck: steps are compute
  const double base = predict(p, hw).phase(Phase::attention);
  hw.comm_compute_slowdown = 1.5;
  const double slowed = predict(p, hw).phase(Phase::attention);
  // R - 1 steps send; the last computes alone at full speed.
  const double last = double(p.ring_steps.back().flops) / hw.attention_flops_per_s.bf16 +
                      double(p.ring_steps.back().merge_bytes) / hw.memory_bandwidth_bytes_per_s;
  EXPECT_NEAR(slowed, 1.5 * (base - last) + last, 1e-9 * base);
  hw.comm_compute_slowdown = 0.5;
  EXPECT_THROW(validate(hw, "x"), Error);
}

TEST(HostSync, ASyncCostsTheRoundTripAndTheLaunchesQueuedBehindIt) {
  Hardware hw = load_hardware("l20");
  EXPECT_EQ(host_sync_s(hw, 3), hw.device_sync_s + 3 * hw.kernel_launch_s + hw.call_overhead_s);
  // UAA on two PCIe GPUs (one switch of an L20 server) at a FLUX-size shape: the device path
  // pays the drain, the CPU path not.
  const AttentionShape flux{1, {4608}, 24, 24, 128, 128, DType::bf16, {MaskKind::full, 0}};
  const Layout uaa = Layout::build({flux, Cluster{2, 8}, LayoutChoice{Strategy::uaa, 0, 0}});
  const double cpu = predict(uaa, hw, {Pass::forward, MetadataChannel::cpu}).total_s;
  const double device = predict(uaa, hw, {Pass::forward, MetadataChannel::device}).total_s;
  EXPECT_GT(device - cpu, host_sync_s(hw, kLaunchesAfterLengthsSync) - 1e-6);
  // An engine without host work around the call (a CUDA graph) drains less.
  Hardware graph = hw;
  graph.call_overhead_s = 0;
  EXPECT_LT(predict(uaa, graph, {Pass::forward, MetadataChannel::device}).total_s -
                predict(uaa, graph, {Pass::forward, MetadataChannel::cpu}).total_s,
            device - cpu);
}

// ---------------------------------------------------------------------------------------------
// The CLI (cmd_simulate called directly; stdout captured).

std::string run_simulate(const cli::Args& args) {
  ::testing::internal::CaptureStdout();
  try {
    cli::cmd_simulate(args);
  } catch (...) {
    ::testing::internal::GetCapturedStdout();
    throw;
  }
  return ::testing::internal::GetCapturedStdout();
}

const cli::Args kIssueExample = {"--hardware", "h100-sxm", "--nodes", "2",      "--ranks-per-node", "8",
                                 "--seq",      "131072",   "--heads", "24",     "--kv-heads",      "8",
                                 "--head-dim", "128",      "--mask",  "causal"};

TEST(SimulateCli, TableRanksEveryCandidateAndListsRefusals) {
  const std::string out = run_simulate(kIssueExample);
  EXPECT_NE(out.find("h100-sxm: 2 node(s) x 8 ranks (world 16)"), std::string::npos) << out;
  for (const char* word : {"hybrid-uaa", "ring-zigzag", "allgather-kv", "x worst", "attention", "refused",
                           "24 query heads are not divisible by Ulysses degree 16"})
    EXPECT_NE(out.find(word), std::string::npos) << word << "\n" << out;
}

TEST(SimulateCli, JsonCandidatesAreSortedAndComplete) {
  cli::Args args = kIssueExample;
  args.insert(args.end(), {"--json", "--pass", "fwd-bwd", "--metadata", "device"});
  const nlohmann::json doc = nlohmann::json::parse(run_simulate(args));
  EXPECT_EQ(doc["pass"], "fwd-bwd");
  EXPECT_EQ(doc["metadata"], "device");
  const nlohmann::json& cands = doc["candidates"];
  ASSERT_GT(cands.size(), 5u);
  const Ranking want = rank_candidates(make_shape({131072}, 24, 8, {MaskKind::causal, 0}, 128, 128), {16, 8},
                                       load_hardware("h100-sxm"), {Pass::forward_backward, MetadataChannel::device});
  ASSERT_EQ(cands.size(), want.candidates.size());
  for (size_t i = 0; i < cands.size(); ++i) {
    for (const char* key : {"strategy", "ulysses", "ring", "order", "head_policy", "time_s", "phases", "bytes",
                            "peak_bytes", "fits"})
      ASSERT_TRUE(cands[i].contains(key)) << key;
    EXPECT_EQ(cands[i]["time_s"].get<double>(), want.candidates[i].prediction.total_s);
    EXPECT_EQ(cands[i]["phases"].size(), 9u);
    if (i > 0) {
      EXPECT_LE(cands[i - 1]["time_s"].get<double>(), cands[i]["time_s"].get<double>());
    }
  }
}

TEST(SimulateCli, RangesMakeACsvSweepWithOneBestPerConfiguration) {
  const std::string out = run_simulate({"--hardware", "a100", "--world", "2:8", "--ranks-per-node", "4", "--seq",
                                        "1k:8k", "--heads", "8:16:+8", "--kv-heads", "8", "--mask", "causal"});
  std::istringstream in(out);
  std::string header, line;
  std::getline(in, header);
  EXPECT_EQ(header.rfind("hardware,pass,metadata,world,", 0), 0u) << header;
  EXPECT_NE(header.find(",best"), std::string::npos);
  std::map<std::string, int> best_per_config;
  std::set<std::string> worlds, seqs, heads;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream row(line);
    for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
    ASSERT_GE(cells.size(), 30u) << line;
    worlds.insert(cells[3]);
    seqs.insert(cells[6]);
    heads.insert(cells[8]);
    best_per_config[cells[3] + "/" + cells[6] + "/" + cells[8]] += cells.back() == "1";
  }
  EXPECT_EQ(worlds, (std::set<std::string>{"2", "4", "8"}));
  EXPECT_EQ(seqs, (std::set<std::string>{"1024", "2048", "4096", "8192"}));
  EXPECT_EQ(heads, (std::set<std::string>{"8", "16"}));
  EXPECT_EQ(best_per_config.size(), 3u * 4 * 2);
  for (const auto& [config, bests] : best_per_config) EXPECT_EQ(bests, 1) << config;
}

TEST(SimulateCli, PackedBatchesAndTop) {
  const std::string table = run_simulate({"--world", "4", "--heads", "8", "--seq-list", "77,4097", "--top", "3"});
  EXPECT_NE(table.find("seq 77,4097"), std::string::npos) << table;
  EXPECT_NE(table.find("more (drop --top to see all)"), std::string::npos) << table;
  EXPECT_EQ(table.find("\n  4  "), std::string::npos) << table;  // rows 1-3 only
  const nlohmann::json doc =
      nlohmann::json::parse(run_simulate({"--world", "4", "--heads", "8", "--seq-list", "77,4097", "--json"}));
  EXPECT_EQ(doc["shape"]["seq_lens"], (std::vector<int64_t>{77, 4097}));
  EXPECT_EQ(doc["cluster"]["world"], 4);
  EXPECT_EQ(doc["cluster"]["ranks_per_node"], 8);  // the h100-sxm preset's, unless --ranks-per-node
}

TEST(SimulateCli, BadInputNamesTheValue) {
  auto expect_error = [](cli::Args args, const std::string& needle) {
    try {
      run_simulate(args);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const cli::Args base = {"--world", "8", "--heads", "8"};
  auto with = [&](std::initializer_list<std::string> more) {
    cli::Args a = base;
    a.insert(a.end(), more);
    return a;
  };
  expect_error(with({"--seq", "8k:1k"}), "'8k:1k'");
  expect_error(with({"--seq", "1k:8k:x1"}), "factor");
  expect_error(with({"--seq", "1k:8k:*2"}), "'1k:8k:*2'");
  expect_error(with({"--seq", "1q"}), "'1q'");
  expect_error(with({"--seq", "4k", "--hardware", "tpu"}), "unknown hardware 'tpu'");
  expect_error(with({"--seq", "4k", "--pass", "sideways"}), "unknown pass 'sideways'");
  expect_error(with({"--seq", "4k", "--metadata", "gpu"}), "unknown metadata channel 'gpu'");
  expect_error(with({"--seq", "4k", "--nodes", "2"}), "not both");
  expect_error(with({"--seq", "4"}), "sequence length 4 is smaller than world 8");
  expect_error({"--world", "8", "--seq", "4k"}, "--heads");
}

}  // namespace
}  // namespace cptune::sim
