// Block-sparse masks in core::Layout and the simulator (issue 16): over random block tables, every
// strategy and every U x R on P <= 8, each visible (query, key) pair is computed exactly once by
// the ring schedule (held runs, skipped steps, Ulysses head split); FLOPs add up to the single
// device's; the balanced placement is never worse than contiguous chunks; forwarded runs are held
// runs and every run a holder's queries see reaches it; the simulator charges only what moves.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "core/block_mask.h"
#include "core/block_placement.h"
#include "core/layout.h"
#include "sim/cost_model.h"
#include "sim/prepared_layout.h"
#include "tests/layout_sweep.h"
#include "tests/round_hardware.h"

namespace cptune {
namespace {

using testing::for_each_spec;
using testing::try_build;

// Random cells; some rows and columns EMPTY more often, so whole blocks go unseen.
Mask random_mask(std::mt19937_64& rng) {
  const int64_t n = 1 + static_cast<int64_t>(rng() % 16);
  const uint64_t empty_weight = 1 + rng() % 4;
  std::vector<BlockKind> cells(static_cast<size_t>(n * n));
  for (auto& c : cells) {
    const uint64_t x = rng() % (2 + empty_weight);
    c = x < empty_weight ? BlockKind::empty : x == empty_weight ? BlockKind::full : BlockKind::causal;
  }
  return block_mask(BlockTable(n, std::move(cells)));
}

// Odd single lengths and packed lists, at least P tokens each.
std::vector<int64_t> random_lens(std::mt19937_64& rng, int64_t P) {
  std::vector<int64_t> lens;
  const size_t count = 1 + rng() % 2;
  for (size_t i = 0; i < count; ++i) lens.push_back((P + static_cast<int64_t>(rng() % 24)) | 1);
  return lens;
}

AttentionShape make_shape(std::vector<int64_t> lens, Mask mask, int64_t hq = 8, int64_t hkv = 2) {
  return AttentionShape{1, std::move(lens), hq, hkv, 4, 4, DType::bf16, std::move(mask)};
}

std::string describe(const Layout& l) { return to_string(l.choice()) + " " + to_string(l.shape()); }

// The keys ring index r attends at each step of its schedule (allgather-kv: every shard at once).
std::vector<std::vector<TokenRun>> steps_of(const Layout& l, int64_t r) {
  std::vector<std::vector<TokenRun>> out;
  if (!rotates_kv(l.strategy())) {
    out.emplace_back();
    for (int64_t src = 0; src < l.ring(); ++src)
      for (const TokenRun& run : l.shard_runs(src)) out.back().push_back(run);
    return out;
  }
  for (int64_t step = 0; step < l.ring(); ++step) {
    const auto held = l.ring_held_runs(r, step);
    out.emplace_back(held.begin(), held.end());
    if (!l.ring_step_computes(r, step)) out.back().clear();
  }
  return out;
}

bool same_run(const TokenRun& a, const TokenRun& b) {
  return a.seq == b.seq && a.begin == b.begin && a.count == b.count && a.padded == b.padded;
}

// Every visible pair exactly once per query head; FLOPs exact; the schedule's invariants.
void check_schedule(const Layout& l) {
  const AttentionShape& s = l.shape();
  const int64_t R = l.ring();
  // count[h][seq][i * len + j]: how often head h computes the real pair (i, j).
  std::vector<std::vector<std::vector<int>>> count(static_cast<size_t>(s.q_heads));
  for (auto& by_seq : count)
    for (int64_t len : s.seq_lens) by_seq.emplace_back(static_cast<size_t>(len * len), 0);
  int64_t useful = 0;
  for (const RankLayout& rl : l.ranks()) {
    int64_t padded_pairs = 0;
    for (const auto& keys : steps_of(l, rl.r)) {
      padded_pairs += l.run_pairs(l.shard_runs(rl.r), keys, true);
      for (const TokenRun& q : l.shard_runs(rl.r)) {
        const int64_t len = s.seq_lens[size_t(q.seq)];
        for (const TokenRun& k : keys) {
          if (k.seq != q.seq) continue;
          for (int64_t i = q.begin; i < q.end(); ++i)
            for (int64_t j = k.begin; j < k.end(); ++j)
              if (s.mask.sees(i, j, len))
                for (int64_t h = rl.q_heads.begin; h < rl.q_heads.end; ++h) ++count[size_t(h)][size_t(q.seq)][size_t(i * len + j)];
        }
      }
    }
    ASSERT_EQ(rl.flops, l.attention_flops(padded_pairs, rl.q_heads.count())) << describe(l) << " rank " << rl.rank;
    useful += rl.useful_flops;
  }
  int64_t single = 0;
  for (size_t seq = 0; seq < s.seq_lens.size(); ++seq) {
    const int64_t len = s.seq_lens[seq];
    single += mask_pairs(s.mask, len, 0, len, 0, len);
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t i = 0; i < len; ++i)
        for (int64_t j = 0; j < len; ++j)
          ASSERT_EQ(count[size_t(h)][seq][size_t(i * len + j)], s.mask.sees(i, j, len) ? 1 : 0)
              << describe(l) << " head " << h << " seq " << seq << " pair " << i << "," << j;
  }
  ASSERT_EQ(useful, l.attention_flops(single, s.q_heads)) << describe(l);

  if (!rotates_kv(l.strategy()) || R < 2) return;
  ASSERT_TRUE(l.ring_skips());
  for (int64_t r = 0; r < R; ++r) {
    const int64_t prev = (r + R - 1) % R;
    int64_t sent = 0;
    for (int64_t step = 0; step < R; ++step) {
      const auto held = l.ring_held_runs(r, step);
      const auto fwd = l.ring_forward_runs(r, step);
      const auto source = l.shard_runs(l.ring_kv_source(r, step));
      if (step == 0) {
        ASSERT_EQ(held.size(), source.size());
      }
      if (step + 1 == R) {
        ASSERT_TRUE(fwd.empty());
      }
      // Held runs are source runs in order, forwarded runs held runs in order.
      size_t at = 0;
      for (const TokenRun& run : held) {
        while (at < source.size() && !same_run(source[at], run)) ++at;
        ASSERT_LT(at++, source.size()) << describe(l) << " r " << r << " step " << step;
      }
      at = 0;
      int64_t tokens = 0;
      for (const TokenRun& run : fwd) {
        while (at < held.size() && !same_run(held[at], run)) ++at;
        ASSERT_LT(at++, held.size()) << describe(l) << " r " << r << " step " << step;
        tokens += run.padded;
        // ... and only runs a later holder sees travel on.
        bool needed = false;
        for (int64_t d = 1; d < R - step; ++d) needed |= l.run_pairs(l.shard_runs((r + d) % R), std::span(&run, 1), true) > 0;
        ASSERT_TRUE(needed) << describe(l) << " r " << r << " step " << step << " sends an unseen run";
      }
      ASSERT_EQ(l.ring_forward_tokens(r, step), tokens);
      sent += tokens;
      // What the predecessor forwards is what this index holds next.
      if (step > 0) {
        const auto before = l.ring_forward_runs(prev, step - 1);
        ASSERT_EQ(before.size(), held.size());
        for (size_t i = 0; i < held.size(); ++i) ASSERT_TRUE(same_run(before[i], held[i]));
      }
      // Every source run the queries see (padding included) is held; a skipped step sees none.
      for (const TokenRun& run : source) {
        if (l.run_pairs(l.shard_runs(r), std::span(&run, 1), true) == 0) continue;
        ASSERT_TRUE(std::any_of(held.begin(), held.end(), [&](const TokenRun& h) { return same_run(h, run); }))
            << describe(l) << " r " << r << " step " << step << " drops s" << run.seq << "[" << run.begin << ")";
      }
      ASSERT_EQ(l.ring_step_computes(r, step), l.run_pairs(l.shard_runs(r), held, true) > 0);
    }
    for (int64_t u = 0; u < l.ulysses(); ++u)
      ASSERT_EQ(l.at(u, r).ring_bytes.send(), l.kv_block_bytes(sent, l.at(u, r).kv_heads.count())) << describe(l);
  }
}

TEST(BlockLayout, EveryVisiblePairOnceOverEveryStrategyAndMesh) {
  std::mt19937_64 rng(16);
  int64_t built = 0, skipping = 0;
  for (int trial = 0; trial < 80; ++trial) {
    const int64_t P = 1 + static_cast<int64_t>(rng() % 8);
    const AttentionShape shape = make_shape(random_lens(rng, P), random_mask(rng));
    for_each_spec(shape, P, 4, [&](const LayoutSpec& spec) {
      const std::optional<Layout> l = try_build(spec);
      if (!l) return;
      ++built;
      skipping += l->ring_skips();
      check_schedule(*l);
    });
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(built, 500);
  EXPECT_GT(skipping, 100);
}

// R contiguous chunks of each (padded) sequence: per ring index its pairs, by brute force, and
// the ring's lockstep compute (sum over steps of the largest block of pairs).
struct Contiguous {
  std::vector<int64_t> pairs;
  int64_t step_pairs = 0;
};

Contiguous contiguous_of(const Layout& l) {
  const AttentionShape& s = l.shape();
  const bool classic = pads_classic(l.strategy());
  const int64_t R = l.ring(), U = l.ulysses();
  Contiguous out;
  out.pairs.assign(static_cast<size_t>(R), 0);
  std::vector<int64_t> block(static_cast<size_t>(R * R), 0);  // [r * R + source]
  for (int64_t len : s.seq_lens) {
    const int64_t m = classic_units(s.mask.blocks->n(), R) * U;
    const int64_t plen = classic ? (len + m - 1) / m * m : len;
    auto begin = [&](int64_t r) { return classic ? r * (plen / R) : split_begin(len, R, r); };
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = begin(r); i < begin(r + 1); ++i)
        for (int64_t src = 0; src < R; ++src)
          for (int64_t j = begin(src); j < begin(src + 1); ++j) block[size_t(r * R + src)] += s.mask.sees(i, j, len);
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t src = 0; src < R; ++src) out.pairs[size_t(r)] += block[size_t(r * R + src)];
  for (int64_t k = 0; k < R; ++k) {
    int64_t most = 0;
    for (int64_t r = 0; r < R; ++r) most = std::max(most, block[size_t(r * R + l.ring_kv_source(r, k))]);
    out.step_pairs += most;
  }
  return out;
}

std::vector<int64_t> contiguous_pairs(const Layout& l) { return contiguous_of(l).pairs; }

TEST(BlockLayout, BalancedPlacementNeverWorseThanContiguous) {
  std::mt19937_64 rng(61);
  int64_t compared = 0, better = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t P = 2 + static_cast<int64_t>(rng() % 7);
    const AttentionShape shape = make_shape(random_lens(rng, P), random_mask(rng));
    for_each_spec(shape, P, 8, [&](const LayoutSpec& spec) {
      const Strategy st = spec.choice.strategy;
      if (st != Strategy::ring && st != Strategy::hybrid && st != Strategy::hybrid_uaa) return;
      const std::optional<Layout> l = try_build(spec);
      if (!l || l->ring() < 2) return;
      std::vector<int64_t> mine(static_cast<size_t>(l->ring()), 0);
      for (int64_t r = 0; r < l->ring(); ++r)
        for (int64_t u = 0; u < l->ulysses(); ++u)
          mine[size_t(r)] = l->at(u, r).flops / l->attention_flops(1, l->at(u, r).q_heads.count());
      const Contiguous contiguous = contiguous_of(*l);
      const std::vector<int64_t>& base = contiguous.pairs;
      const int64_t most = *std::max_element(mine.begin(), mine.end());
      // The ring's lockstep compute (what the simulator charges) is never above contiguous's either.
      int64_t steps = 0;
      for (int64_t k = 0; k < l->ring(); ++k) steps += l->ring_step_max(k).flops;
      int64_t max_heads = 0;
      for (const RankLayout& rl : l->ranks()) max_heads = std::max(max_heads, rl.q_heads.count());
      ASSERT_LE(steps, l->attention_flops(contiguous.step_pairs, max_heads)) << describe(*l) << " " << l->placement();
      const int64_t base_most = *std::max_element(base.begin(), base.end());
      ASSERT_LE(most, base_most) << describe(*l) << " placement " << l->placement();
      ASSERT_LE(l->placement_imbalance(), imbalance(base) + 1e-12) << describe(*l);
      ASSERT_DOUBLE_EQ(l->placement_imbalance(), imbalance(mine)) << describe(*l);
      ++compared;
      better += most < base_most;
    });
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(compared, 1000);
  EXPECT_GT(better, compared / 10);  // the heuristic does find better placements
}

// Strided rows grow heavier with their index: contiguous chunks leave the last index the most
// work, and the balanced placement (zigzag or LPT) levels it.
TEST(BlockLayout, StridedPatternIsBalanced) {
  const AttentionShape shape = make_shape({4096}, parse_mask("strided:16,4"), 8, 8);
  const Layout l = Layout::build({shape, Cluster{4, 4}, LayoutChoice{Strategy::ring}});
  const double contiguous = imbalance(contiguous_pairs(l));
  EXPECT_GT(contiguous, 1.3);
  EXPECT_LT(l.placement_imbalance(), 1.1) << l.placement();
  EXPECT_LT(l.placement_imbalance(), contiguous - 0.2);
  EXPECT_NE(l.placement(), "contiguous");
  // ring-zigzag keeps zigzag, the baseline UltraAttn compares against.
  const Layout z = Layout::build({shape, Cluster{4, 4}, LayoutChoice{Strategy::ring_zigzag}});
  EXPECT_EQ(z.placement(), "zigzag");
  EXPECT_LE(l.placement_imbalance(), z.placement_imbalance());
}

// Star: every query sees the first block. LPT spreads that block's keys over the ring indices,
// so no single step computes every index's share of it: the lockstep compute drops well below
// contiguous chunks', at the same per-index work.
TEST(BlockLayout, StarSpreadsItsSharedBlock) {
  const Mask star = parse_mask("star:16");
  PlacementProblem p{star, {131072}, {131072}, 8, 0};
  const BlockPlacement contiguous = contiguous_placement(p), best = balanced_placement(p);
  EXPECT_EQ(best.name, "lpt");
  EXPECT_LE(best.max_pairs(), contiguous.max_pairs());
  EXPECT_LT(2 * best.step_pairs, contiguous.step_pairs);
  const Layout l = Layout::build({make_shape({131072}, star, 8, 8), Cluster{8, 8}, LayoutChoice{Strategy::ring}});
  int64_t steps = 0;
  for (int64_t k = 0; k < 8; ++k) steps += l.ring_step_max(k).flops;
  EXPECT_EQ(steps, l.attention_flops(best.step_pairs, 8));
}

// Past kMaxPlacedRing the ring keeps contiguous chunks and sends every shard (O(R) per build).
TEST(BlockLayout, LongRingsKeepFixedChunks) {
  const int64_t R = 2 * kMaxPlacedRing;
  const Layout l = Layout::build({make_shape({4 * R + 1}, parse_mask("star:16"), 8, 8), Cluster{R, 8}, LayoutChoice{Strategy::ring}});
  EXPECT_FALSE(l.ring_skips());
  EXPECT_EQ(l.placement(), "contiguous");
  EXPECT_EQ(l.ring_forward_tokens(3, 0), l.shard_padded_tokens(3));
  EXPECT_TRUE(l.ring_step_computes(R - 1, R - 1));
  const Layout placed = Layout::build(
      {make_shape({4 * R + 1}, parse_mask("star:16"), 8, 8), Cluster{R, 8}, LayoutChoice{Strategy::hybrid_uaa, 2, R / 2}});
  EXPECT_TRUE(placed.ring_skips());
}

// LPT units when N < 2R, and classic slots that keep hybrid shards equal.
TEST(BlockLayout, PlacementUnits) {
  const Mask star = parse_mask("star:4");
  PlacementProblem uneven{star, {1001}, {1001}, 8, 0};
  const BlockPlacement lpt = lpt_placement(uneven);
  int64_t tokens = 0;
  for (const auto& ranges : lpt.ranges[0]) {
    EXPECT_FALSE(ranges.empty());  // every index gets a unit of the sequence
    for (auto [a, b] : ranges) {
      EXPECT_EQ(block_of(1001, 4, a), block_of(1001, 4, b - 1)) << a << "," << b;  // cut at block boundaries
      tokens += b - a;
    }
  }
  EXPECT_EQ(tokens, 1001);
  const int64_t m = classic_units(4, 8);
  EXPECT_EQ(m, 16);
  PlacementProblem classic{star, {1001}, {1024}, 8, m};
  for (const BlockPlacement& p : {lpt_placement(classic), balanced_placement(classic)}) {
    for (const auto& ranges : p.ranges[0]) {
      int64_t held = 0;
      for (auto [a, b] : ranges) held += b - a;
      EXPECT_EQ(held, 1024 / 8) << p.name;
    }
  }
  const AttentionShape shape = make_shape({1001}, star, 8, 8);
  const Layout h = Layout::build({shape, Cluster{8, 8}, LayoutChoice{Strategy::hybrid, 2, 4}});
  for (const RankLayout& rl : h.ranks()) EXPECT_EQ(rl.input_padded_tokens, h.rank(0).input_padded_tokens);
}

// Other masks keep their fixed chunks, the whole shard every step and compute every step.
TEST(BlockLayout, OtherMasksKeepTheirSchedule) {
  for (const char* mask : {"full", "causal", "sliding:5"}) {
    const AttentionShape shape = make_shape({37, 21}, parse_mask(mask));
    for_each_spec(shape, 4, 2, [&](const LayoutSpec& spec) {
      const std::optional<Layout> l = try_build(spec);
      if (!l) return;
      EXPECT_FALSE(l->ring_skips());
      EXPECT_EQ(l->placement(), l->zigzag() ? "zigzag" : "contiguous");
      for (int64_t r = 0; r < l->ring(); ++r) {
        for (int64_t step = 0; step < l->ring(); ++step) {
          const auto shard = l->shard_runs(l->ring_kv_source(r, step));
          EXPECT_EQ(l->ring_held_runs(r, step).data(), shard.data());
          EXPECT_EQ(l->ring_forward_runs(r, step).size(), step + 1 < l->ring() ? shard.size() : 0u);
          EXPECT_TRUE(l->ring_step_computes(r, step));
        }
      }
    });
  }
}

using testing::round_hardware;

int64_t ring_sent(const Layout& l) {
  int64_t total = 0;
  for (const RankLayout& rl : l.ranks()) total += rl.ring_bytes.send();
  return total;
}

TEST(BlockSim, StarOnARingMovesFewerBytesThanFull) {
  for (Strategy st : {Strategy::ring, Strategy::ring_zigzag, Strategy::hybrid_uaa}) {
    LayoutChoice choice{st};
    if (st == Strategy::hybrid_uaa) choice.ulysses = 2, choice.ring = 4;
    const Layout star = Layout::build({make_shape({8192}, parse_mask("star:16"), 8, 8), Cluster{8, 8}, choice});
    const Layout full = Layout::build({make_shape({8192}, parse_mask("full"), 8, 8), Cluster{8, 8}, choice});
    EXPECT_LT(ring_sent(star), ring_sent(full)) << to_string(choice);
    const sim::Prediction ps = sim::predict(star, round_hardware()), pf = sim::predict(full, round_hardware());
    EXPECT_LT(ps.bytes_intra + ps.bytes_inter, pf.bytes_intra + pf.bytes_inter) << to_string(choice);
    // The prepared steps send at most the forwarded runs' bytes.
    const sim::PreparedLayout prep = sim::prepare(star);
    int64_t k = 0;
    for (const sim::RingStepLoad& step : prep.ring_steps) {
      for (int64_t rep = 0; rep < step.repeat; ++rep, ++k) {
        const RingStepMax m = star.ring_step_max(k);
        EXPECT_EQ(step.bytes[0], m.send_bytes_intra) << to_string(choice) << " step " << k;
        EXPECT_EQ(step.bytes[1], m.send_bytes_inter) << to_string(choice) << " step " << k;
        EXPECT_EQ(step.flops, m.flops);
      }
    }
  }
}

// A block-diagonal mask on a contiguous ring: every step after the first sees nothing, so it
// computes nothing and sends nothing, and the prediction charges step 0 alone.
TEST(BlockSim, SkippedStepsCostNothing) {
  const int64_t R = 4;
  std::vector<BlockKind> cells(size_t(R * R), BlockKind::empty);
  for (int64_t b = 0; b < R; ++b) cells[size_t(b * R + b)] = BlockKind::causal;
  const Mask diagonal = block_mask(BlockTable(R, std::move(cells)));
  const Layout l = Layout::build({make_shape({4096}, diagonal, 8, 8), Cluster{R, R}, LayoutChoice{Strategy::ring}});
  EXPECT_EQ(l.placement(), "contiguous");
  EXPECT_EQ(ring_sent(l), 0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t step = 1; step < R; ++step) {
      EXPECT_FALSE(l.ring_step_computes(r, step));
      EXPECT_TRUE(l.ring_forward_runs(r, step - 1).empty());
    }
  sim::PreparedLayout p = sim::prepare(l);
  ASSERT_EQ(p.ring_steps.size(), 2u);
  EXPECT_GT(p.ring_steps[0].flops, 0);
  EXPECT_EQ(p.ring_steps[1].flops, 0);
  EXPECT_EQ(p.ring_steps[1].bytes, sim::LevelBytes{});
  EXPECT_EQ(p.ring_steps[1].repeat, R - 1);
  const double all = sim::predict(p, round_hardware()).phase(Phase::attention);
  p.ring_steps.pop_back();
  EXPECT_DOUBLE_EQ(sim::predict(p, round_hardware()).phase(Phase::attention), all);
  EXPECT_GT(all, 0);
}

}  // namespace
}  // namespace cptune
