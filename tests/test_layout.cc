// Properties of core::Layout over every small shape, plus the shapes today's engines fail on.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "core/error.h"
#include "core/layout.h"
#include "tests/layout_sweep.h"

namespace cptune {
namespace {

using testing::for_each_spec;
using testing::try_build;

AttentionShape make_shape(std::vector<int64_t> seqs, int64_t hq, int64_t hkv, Mask mask = {}, int64_t D = 4,
                          int64_t Dv = 4) {
  return AttentionShape{1, std::move(seqs), hq, hkv, D, Dv, DType::bf16, mask};
}

std::string describe(const Layout& l) { return to_string(l.choice()) + " " + to_string(l.shape()); }

using testing::brute_pairs;

// Ranges reach past the sequence's length: padding positions count as the last block's.
TEST(MaskPairs, EqualsBruteForceForEveryRangeAndMask) {
  for (Mask m : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 1},
                 Mask{MaskKind::sliding_window, 3}, Mask{MaskKind::sliding_window, 20}, parse_mask("star:3"),
                 parse_mask("strided:5,2"), parse_mask("global-local:4,1,1"), parse_mask("stream:7,1,2")})
    for (int64_t len : {1, 5, 10})
      for (int64_t qa = 0; qa < 12; ++qa)
        for (int64_t qb = qa; qb < 12; ++qb)
          for (int64_t ka = 0; ka < 12; ++ka)
            for (int64_t kb = ka; kb < 12; kb += 2)
              ASSERT_EQ(mask_pairs(m, len, qa, qb, ka, kb), brute_pairs(m, len, qa, qb, ka, kb))
                  << to_string(m) << " len " << len << " q[" << qa << "," << qb << ") k[" << ka << "," << kb << ")";
}

// Heads: every Q head computed by exactly one Ulysses rank; each rank gets exactly the KV heads
// its Q heads use; kv-aligned never sends a KV head twice; classic refuses what peers cannot do.
TEST(LayoutHeads, EveryQueryHeadOnceAndExactlyTheKvHeadsItUses) {
  int checked = 0;
  for (int64_t hq = 1; hq <= 16; ++hq)
    for (int64_t hkv = 1; hkv <= hq; ++hkv) {
      if (hq % hkv) continue;
      const int64_t group = hq / hkv;
      for (int64_t P = 1; P <= 8; ++P)
        for_each_spec(make_shape({40}, hq, hkv), P, P, [&](const LayoutSpec& spec) {
          auto l = try_build(spec);
          if (!l) return;
          ++checked;
          std::vector<int> q_owner(static_cast<size_t>(hq), 0);
          std::vector<int> kv_sent(static_cast<size_t>(hkv), 0);
          for (int64_t u = 0; u < l->ulysses(); ++u) {
            const RankLayout& rl = l->at(u, 0);
            ASSERT_GE(rl.q_heads.count(), 1) << describe(*l);
            std::set<int64_t> used;
            for (int64_t h = rl.q_heads.begin; h < rl.q_heads.end; ++h) {
              ++q_owner[h];
              used.insert(h / group);
            }
            std::set<int64_t> got;
            for (int64_t k = rl.kv_heads.begin; k < rl.kv_heads.end; ++k) {
              got.insert(k);
              ++kv_sent[k];
            }
            ASSERT_EQ(used, got) << describe(*l) << " u=" << u;
          }
          for (int c : q_owner) ASSERT_EQ(c, 1) << describe(*l);
          if (spec.choice.head_policy == HeadPolicy::kv_aligned) {
            for (int c : kv_sent) ASSERT_EQ(c, 1) << describe(*l);
          }
          if (pads_classic(spec.choice.strategy)) {
            for (int64_t u = 0; u < l->ulysses(); ++u)
              ASSERT_EQ(l->at(u, 0).q_heads.count(), hq / l->ulysses()) << describe(*l);
          }
        });
    }
  EXPECT_GT(checked, 10000);
}

TEST(LayoutHeads, RefusalsAreExactlyThePeersLimits) {
  for (int64_t hq = 1; hq <= 16; ++hq)
    for (int64_t hkv = 1; hkv <= hq; ++hkv) {
      if (hq % hkv) continue;
      for (int64_t P = 1; P <= 8; ++P) {
        // UAA (balanced) only refuses fewer heads than ranks.
        LayoutSpec uaa{make_shape({64}, hq, hkv), Cluster{P, P}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}};
        EXPECT_EQ(try_build(uaa).has_value(), hq >= P) << "hq=" << hq << " P=" << P;
        // Classic Ulysses is an equal all-to-all: Hq % P == 0 and every rank needs as many KV heads.
        LayoutSpec classic = uaa;
        classic.choice.strategy = Strategy::ulysses;
        bool ok = hq % P == 0;
        for (int64_t u = 0; ok && u < P; ++u) {
          const int64_t per = hq / P, g = hq / hkv;
          const int64_t kv_count = (u * per + per - 1) / g - (u * per) / g + 1;
          ok = kv_count == (per - 1) / g + 1;
        }
        EXPECT_EQ(try_build(classic).has_value(), ok) << "hq=" << hq << " hkv=" << hkv << " P=" << P;
        // Ring and all-gather take any head count.
        LayoutSpec ring = uaa;
        ring.choice.strategy = Strategy::ring;
        EXPECT_TRUE(try_build(ring).has_value());
      }
    }
}

// Tokens: the input runs of all ranks partition every sequence; the ring shards partition it
// too; each rank's input lies inside its ring index's shard; tensor_split and zigzag rules hold.
TEST(LayoutTokens, InputsAndShardsPartitionEverySequence) {
  int checked = 0;
  for (int64_t P = 1; P <= 8; ++P)
    for (int64_t S = P; S <= 40; ++S)
      for (Mask mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}})
        for_each_spec(make_shape({S}, 8, 8, mask), P, P, [&](const LayoutSpec& spec) {
          if (spec.choice.head_policy == HeadPolicy::kv_aligned) return;  // tokens do not depend on it
          auto l = try_build(spec);
          if (!l) return;
          ++checked;
          std::vector<int> input_owner(static_cast<size_t>(S), 0), shard_owner(static_cast<size_t>(S), 0);
          for (const RankLayout& rl : l->ranks()) {
            int64_t count = 0;
            for (const TokenRun& run : rl.input_runs) {
              for (int64_t t = run.begin; t < run.end(); ++t) {
                ++input_owner[t];
                bool inside = false;
                for (const TokenRun& sr : l->shard_runs(rl.r)) inside |= sr.begin <= t && t < sr.end();
                ASSERT_TRUE(inside) << describe(*l) << " token " << t << " rank " << rl.rank;
              }
              count += run.count;
            }
            ASSERT_EQ(count, rl.input_tokens);
          }
          for (int64_t r = 0; r < l->ring(); ++r)
            for (const TokenRun& run : l->shard_runs(r))
              for (int64_t t = run.begin; t < run.end(); ++t) ++shard_owner[t];
          for (int64_t t = 0; t < S; ++t) {
            ASSERT_EQ(input_owner[t], 1) << describe(*l) << " token " << t;
            ASSERT_EQ(shard_owner[t], 1) << describe(*l) << " token " << t;
          }
          if (spec.choice.strategy == Strategy::uaa) {
            for (const RankLayout& rl : l->ranks()) {
              ASSERT_EQ(rl.input_runs.size(), 1u);
              EXPECT_EQ(rl.input_runs[0].begin, split_begin(S, P, rl.rank));
              EXPECT_EQ(rl.input_runs[0].count, split_size(S, P, rl.rank));
            }
          }
          if (spec.choice.strategy == Strategy::ring_zigzag) {
            for (int64_t r = 0; r < P; ++r) {
              auto runs = l->shard_runs(r);
              std::vector<int64_t> begins;
              for (const TokenRun& run : runs) begins.push_back(run.begin);
              std::vector<int64_t> want;
              for (int64_t c : {r, 2 * P - 1 - r})
                if (split_size(S, 2 * P, c) > 0) want.push_back(split_begin(S, 2 * P, c));
              EXPECT_EQ(begins, want) << describe(*l) << " r=" << r;
            }
          }
        });
  EXPECT_GT(checked, 5000);
}

TEST(LayoutTokens, UaaPadsNothingAndClassicPadsExactlyWhatPeersPad) {
  for (int64_t P = 1; P <= 8; ++P)
    for (int64_t S = P; S <= 40; ++S) {
      Cluster mesh{P, P};
      auto uaa = Layout::build({make_shape({S}, 8, 8), mesh, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
      EXPECT_EQ(uaa.padding_tokens(), 0);
      EXPECT_EQ(uaa.padding_heads(), 0);
      for (const RankLayout& rl : uaa.ranks()) EXPECT_EQ(rl.input_padded_tokens, rl.input_tokens);
      // Peers pad S up to a multiple of P; every rank stores ceil(S / P) tokens.
      auto classic = Layout::build({make_shape({S}, 840, 840), mesh, LayoutChoice{Strategy::ulysses, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
      const int64_t per_rank = (S + P - 1) / P;
      EXPECT_EQ(classic.padding_tokens(), per_rank * P - S) << "S=" << S << " P=" << P;
      for (const RankLayout& rl : classic.ranks()) EXPECT_EQ(rl.input_padded_tokens, per_rank);
    }
}

// Exchange counts: send and receive matrices are transposes; the Q,K,V all-to-all delivers a
// rank exactly its ring shard for its heads; the O all-to-all returns every token, all heads.
TEST(LayoutExchange, CountsDeliverShardsAndReturnEveryToken) {
  int checked = 0;
  for (int64_t P : {2, 3, 4, 6, 7, 8})
    for (int64_t S : {P, P + 1, 2 * P + 3, int64_t{37}})
      for (auto [hq, hkv] : {std::pair{8, 8}, {8, 2}, {12, 4}, {15, 5}, {16, 1}})
        for_each_spec(make_shape({S, 2 * S + 1}, hq, hkv, {MaskKind::causal, 0}, 3, 5), P, P,
                      [&](const LayoutSpec& spec) {
                        auto l = try_build(spec);
                        if (!l) return;
                        ++checked;
                        const int64_t D = 3, Dv = 5;
                        for (const RankLayout& rl : l->ranks()) {
                          for (Tensor t : {Tensor::q, Tensor::k, Tensor::v, Tensor::o}) {
                            auto send = l->send_counts(t, rl.rank);
                            for (int64_t u = 0; u < l->ulysses(); ++u) {
                              auto peer_recv = l->recv_counts(t, l->global_rank(u, rl.r));
                              ASSERT_EQ(send[u], peer_recv[rl.u]) << describe(*l);
                            }
                          }
                          auto sum = [](const std::vector<int64_t>& v) {
                            int64_t s = 0;
                            for (int64_t x : v) s += x;
                            return s;
                          };
                          const int64_t shard = l->shard_padded_tokens(rl.r);
                          EXPECT_EQ(sum(l->recv_counts(Tensor::q, rl.rank)), shard * rl.q_heads.count() * D);
                          EXPECT_EQ(sum(l->recv_counts(Tensor::k, rl.rank)), shard * rl.kv_heads.count() * D);
                          EXPECT_EQ(sum(l->recv_counts(Tensor::v, rl.rank)), shard * rl.kv_heads.count() * Dv);
                          EXPECT_EQ(sum(l->recv_counts(Tensor::o, rl.rank)),
                                    rl.input_padded_tokens * l->shape().q_heads * Dv)
                              << describe(*l);
                        }
                      });
  EXPECT_GT(checked, 500);
}

// Token ids of runs in storage order: (seq, position), padding slots as (-1, -1).
std::vector<std::pair<int64_t, int64_t>> token_ids(std::span<const TokenRun> runs) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const TokenRun& run : runs)
    for (int64_t t = 0; t < run.padded; ++t)
      out.push_back(t < run.count ? std::pair<int64_t, int64_t>{run.seq, run.begin + t} : std::pair<int64_t, int64_t>{-1, -1});
  return out;
}

// Token-level delivery: the Q all-to-all simulated with token ids. Each member's part is as
// long as the Layout's counts say and holds that member's input tokens; placed by its input
// runs inside the ring index's shard runs, the parts fill every shard slot exactly once with
// exactly the global token the shard holds there, in order. Every real token of every
// sequence lies in exactly one shard.
TEST(LayoutExchange, EveryGlobalTokenLandsInItsShardSlot) {
  int checked = 0;
  for (int64_t P : {1, 2, 3, 4, 6, 8})
    for (int64_t S : {P, P + 1, 2 * P + 3, int64_t{29}})
      for (auto [hq, hkv] : {std::pair{8, 8}, {12, 4}, {15, 5}})
        for_each_spec(make_shape({S, S + 5}, hq, hkv, {MaskKind::causal, 0}, 3, 5), P, P, [&](const LayoutSpec& spec) {
          auto l = try_build(spec);
          if (!l) return;
          ++checked;
          std::set<std::pair<int64_t, int64_t>> everywhere;
          for (int64_t r = 0; r < l->ring(); ++r)
            for (const auto& id : token_ids(l->shard_runs(r)))
              if (id.first >= 0) {
                ASSERT_TRUE(everywhere.insert(id).second) << describe(*l) << " token twice";
              }
          int64_t total = 0;
          for (int64_t len : l->shape().seq_lens) total += len;
          ASSERT_EQ(int64_t(everywhere.size()), total) << describe(*l);
          for (const RankLayout& me : l->ranks()) {
            const auto shard = token_ids(l->shard_runs(me.r));
            std::vector<int> filled(shard.size(), 0);
            const auto recv = l->recv_counts(Tensor::q, me.rank);
            for (int64_t u = 0; u < l->ulysses(); ++u) {
              const RankLayout& member = l->at(u, me.r);
              const auto part = token_ids(member.input_runs);
              ASSERT_EQ(recv[u], int64_t(part.size()) * me.q_heads.count() * 3) << describe(*l);
              int64_t src = 0;
              for (const TokenRun& piece : member.input_runs) {
                int64_t chunk_offset = 0;
                bool placed = false;
                for (const TokenRun& chunk : l->shard_runs(me.r)) {
                  if (chunk.seq == piece.seq && chunk.begin <= piece.begin && piece.begin < chunk.begin + chunk.padded) {
                    for (int64_t t = 0; t < piece.padded; ++t) {
                      const int64_t dst = chunk_offset + piece.begin - chunk.begin + t;
                      ASSERT_LT(dst, int64_t(shard.size())) << describe(*l);
                      ++filled[dst];
                      if (part[src + t].first >= 0) {
                        ASSERT_EQ(part[src + t], shard[dst]) << describe(*l);
                      }
                    }
                    placed = true;
                    break;
                  }
                  chunk_offset += chunk.padded;
                }
                ASSERT_TRUE(placed) << describe(*l);
                src += piece.padded;
              }
            }
            for (size_t i = 0; i < shard.size(); ++i) {
              ASSERT_LE(filled[i], 1) << describe(*l) << " slot " << i;
              if (shard[i].first >= 0) {
                ASSERT_EQ(filled[i], 1) << describe(*l) << " slot " << i;
              }
            }
          }
        });
  EXPECT_GT(checked, 300);
}

// Link bytes from the O(P) prefix sums equal a brute-force sum over every peer, and what is
// sent over each link class is what is received over it.
TEST(LayoutBytes, MatchBruteForceAndConserve) {
  int checked = 0;
  for (int64_t P : {2, 4, 6, 8})
    for (int64_t G : {1, 2, 3, 4, 8})
      for_each_spec(make_shape({29, 13}, 12, 4, {MaskKind::causal, 0}, 8, 8), P, G, [&](const LayoutSpec& spec) {
        auto l = try_build(spec);
        if (!l) return;
        ++checked;
        const int64_t eb = l->elem_bytes();
        int64_t send_intra = 0, send_inter = 0, recv_intra = 0, recv_inter = 0;
        for (const RankLayout& rl : l->ranks()) {
          int64_t want_send[2] = {0, 0}, want_recv[2] = {0, 0};
          for (int64_t u = 0; u < l->ulysses(); ++u) {
            const int64_t peer = l->global_rank(u, rl.r);
            if (peer == rl.rank) continue;
            const int inter = l->node_of(peer) != rl.node;
            for (Tensor t : {Tensor::q, Tensor::k, Tensor::v}) {
              want_send[inter] += l->exchange_elems(t, rl.rank, peer) * eb;
              want_recv[inter] += l->exchange_elems(t, peer, rl.rank) * eb;
            }
          }
          ASSERT_EQ(rl.qkv_bytes.send_intra, want_send[0]) << describe(*l) << " rank " << rl.rank;
          ASSERT_EQ(rl.qkv_bytes.send_inter, want_send[1]) << describe(*l) << " rank " << rl.rank;
          ASSERT_EQ(rl.qkv_bytes.recv_intra, want_recv[0]) << describe(*l);
          ASSERT_EQ(rl.qkv_bytes.recv_inter, want_recv[1]) << describe(*l);
          for (const LinkBytes* b : {&rl.qkv_bytes, &rl.o_bytes, &rl.ring_bytes, &rl.allgather_bytes}) {
            send_intra += b->send_intra;
            send_inter += b->send_inter;
            recv_intra += b->recv_intra;
            recv_inter += b->recv_inter;
          }
        }
        EXPECT_EQ(send_intra, recv_intra) << describe(*l);
        EXPECT_EQ(send_inter, recv_inter) << describe(*l);
        if (l->nodes() == 1) {
          EXPECT_EQ(send_inter, 0);
        }
      });
  EXPECT_GT(checked, 300);
}

// FLOPs: the useful FLOPs of all ranks add up to the single-device attention's, every mask;
// a ring step's maximum equals the brute-force maximum over ranks.
TEST(LayoutFlops, RanksShareTheSingleDeviceWorkExactly) {
  int checked = 0;
  for (Mask mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 5}})
    for (int64_t P : {1, 2, 3, 4, 6, 8})
      for_each_spec(make_shape({31, 9 + P}, 6, 2, mask, 4, 2), P, P, [&](const LayoutSpec& spec) {
        auto l = try_build(spec);
        if (!l) return;
        int64_t total = 0;
        for (const RankLayout& rl : l->ranks()) total += rl.useful_flops;
        int64_t want = 0;
        for (int64_t len : l->shape().seq_lens) want += brute_pairs(mask, len, 0, len, 0, len);
        EXPECT_EQ(total, want * 6 * 2 * (4 + 2)) << describe(*l);
        ++checked;
        if (!rotates_kv(spec.choice.strategy)) return;
        for (int64_t k = 0; k < l->ring(); ++k) {
          int64_t best = 0;
          for (const RankLayout& rl : l->ranks()) {
            int64_t pairs = 0;
            for (const TokenRun& q : l->shard_runs(rl.r))
              for (const TokenRun& kv : l->shard_runs(l->ring_kv_source(rl.r, k)))
                if (q.seq == kv.seq) pairs += brute_pairs(mask, l->shape().seq_lens[size_t(q.seq)], q.begin, q.begin + q.padded, kv.begin,
                                     kv.begin + kv.padded);
            best = std::max(best, pairs * rl.q_heads.count() * 2 * (4 + 2));
          }
          EXPECT_EQ(l->ring_step_max(k).flops, best) << describe(*l) << " step " << k;
        }
      });
  EXPECT_GT(checked, 200);
}

TEST(LayoutFlops, ZigzagBalancesCausalWorkBetterThanPlainRing) {
  AttentionShape s = make_shape({4096}, 8, 8, {MaskKind::causal, 0}, 64, 64);
  auto spread = [&](Strategy st) {
    auto l = Layout::build({s, Cluster{8, 8}, LayoutChoice{st, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
    int64_t lo = INT64_MAX, hi = 0;
    for (const RankLayout& rl : l.ranks()) {
      lo = std::min(lo, rl.flops);
      hi = std::max(hi, rl.flops);
    }
    return double(hi) / double(lo);
  };
  EXPECT_LT(spread(Strategy::ring_zigzag), 1.01);
  EXPECT_GT(spread(Strategy::ring), 10.0);
}

// The shapes today's implementations pad or fail on all lay out here, unpadded.
TEST(LayoutCases, ShapesPeersFailOn) {
  struct Case {
    int64_t S, hq, hkv, P, U, R;
    Strategy strategy;
  };
  for (Case c : {Case{4096, 24, 24, 7, 0, 0, Strategy::uaa}, Case{4096, 30, 30, 16, 0, 0, Strategy::uaa},
                 Case{4096, 32, 8, 16, 0, 0, Strategy::uaa}, Case{4097, 32, 32, 8, 0, 0, Strategy::uaa},
                 Case{4097, 25, 5, 3, 0, 0, Strategy::uaa}, Case{1001, 24, 8, 6, 3, 2, Strategy::hybrid_uaa}}) {
    for (HeadPolicy policy : {HeadPolicy::balanced, HeadPolicy::kv_aligned}) {
      if (policy == HeadPolicy::kv_aligned && c.hkv < (c.U ? c.U : c.P)) continue;
      auto l = Layout::build({make_shape({c.S}, c.hq, c.hkv, {MaskKind::causal, 0}),
                              Cluster{c.P, 8}, LayoutChoice{c.strategy, c.U, c.R, RankOrder::ulysses_inner, policy}});
      EXPECT_EQ(l.padding_tokens(), 0);
      int64_t heads = 0, tokens = 0;
      for (int64_t u = 0; u < l.ulysses(); ++u) heads += l.at(u, 0).q_heads.count();
      for (const RankLayout& rl : l.ranks()) tokens += rl.input_tokens;
      EXPECT_EQ(heads, c.hq);
      EXPECT_EQ(tokens, c.S);
    }
  }
  // 24 heads on 7 ranks: 4,4,4,3,3,3,3 — nobody gets zero, nothing padded.
  auto l = Layout::build({make_shape({4096}, 24, 24), Cluster{7, 7}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  std::vector<int64_t> heads;
  for (const RankLayout& rl : l.ranks()) heads.push_back(rl.q_heads.count());
  EXPECT_EQ(heads, (std::vector<int64_t>{4, 4, 4, 3, 3, 3, 3}));
}

// Bad input: an Error whose message names the bad value, never a crash or a wrong layout.
TEST(LayoutErrors, NameTheBadValueAndTheFix) {
  auto expect_error = [](LayoutSpec spec, const std::string& needle) {
    try {
      Layout::build(spec);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Cluster m3{3, 3};
  expect_error({make_shape({4097}, 25, 5), m3, LayoutChoice{Strategy::ulysses, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}},
               "25 query heads are not divisible by Ulysses degree 3; use uaa");
  expect_error({make_shape({2}, 8, 8), m3, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}}, "sequence length 2 is smaller than world 3");
  expect_error({make_shape({0}, 8, 8), m3, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}}, "sequence length 0");
  expect_error({make_shape({-5}, 8, 8), m3, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}}, "sequence length -5");
  expect_error({make_shape({64}, 8, 3), m3, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}}, "8 query heads are not a multiple of 3 kv heads");
  expect_error({make_shape({64}, 0, 1), m3, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}}, "query heads 0");
  expect_error({make_shape({64}, 8, 8), Cluster{6, 6}, LayoutChoice{Strategy::hybrid_uaa, 4, 2, RankOrder::ulysses_inner, HeadPolicy::balanced}},
               "Ulysses degree 4 x ring degree 2 != world 6");
  expect_error({make_shape({64}, 8, 2), Cluster{4, 4}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::kv_aligned}},
               "2 kv heads < Ulysses degree 4");
  expect_error({make_shape({64}, 2, 2), Cluster{4, 4}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}},
               "2 query heads over Ulysses degree 4");
  expect_error({make_shape({int64_t{1} << 40}, 128, 128, {}, 1024, 1024), Cluster{8, 8}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}},
               "overflow 64 bits");
  expect_error({make_shape({64}, 8, 8), Cluster{0, 1}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}},
               "world size 0");
  expect_error({make_shape({64}, 8, 8), Cluster{4, 4}, LayoutChoice{Strategy::uaa, 2, 2, RankOrder::ulysses_inner, HeadPolicy::balanced}},
               "uaa has no ring degree");
}


// The phases of a plan as text: "gather,qkv,attention(ring 2),o".
std::string phases_of(const PhasePlan& plan) {
  std::string out;
  for (const PhaseStep& step : plan) {
    if (!out.empty()) out += ',';
    out += to_string(step.phase);
    if (step.motion == Motion::ring) out += "(ring " + std::to_string(step.ring_steps) + ")";
  }
  return out;
}

// Each strategy's plan as docs/design.md writes it, on every kind of mesh: Ulysses phases only where
// U > 1, ring phases only where R > 1, attention always (locally on a ring of one).
TEST(StrategyPlan, EachStrategyRunsItsDocumentedPhasesOnEveryMesh) {
  struct Case {
    Strategy s;
    int64_t U, R;
    std::string forward, backward;
  };
  const Case cases[] = {
      {Strategy::ulysses, 4, 1, "qkv,attention,o", "grad-o,attention-bwd,grad-qkv"},
      {Strategy::ulysses, 1, 1, "attention", "attention-bwd"},
      {Strategy::uaa, 4, 1, "gather,qkv,attention,o", "grad-o,attention-bwd,grad-qkv"},
      {Strategy::uaa, 1, 1, "attention", "attention-bwd"},
      {Strategy::ring, 1, 4, "attention(ring 4)", "attention-bwd(ring 4)"},
      {Strategy::ring, 1, 1, "attention", "attention-bwd"},
      {Strategy::ring_zigzag, 1, 3, "attention(ring 3)", "attention-bwd(ring 3)"},
      {Strategy::allgather_kv, 1, 4, "allgather,attention", "attention-bwd,reduce-scatter"},
      {Strategy::allgather_kv, 1, 1, "attention", "attention-bwd"},
      {Strategy::hybrid, 2, 3, "qkv,attention(ring 3),o", "grad-o,attention-bwd(ring 3),grad-qkv"},
      {Strategy::hybrid, 4, 1, "qkv,attention,o", "grad-o,attention-bwd,grad-qkv"},
      {Strategy::hybrid, 1, 4, "attention(ring 4)", "attention-bwd(ring 4)"},
      {Strategy::hybrid_uaa, 2, 2, "gather,qkv,attention(ring 2),o", "grad-o,attention-bwd(ring 2),grad-qkv"},
      {Strategy::hybrid_uaa, 1, 2, "attention(ring 2)", "attention-bwd(ring 2)"},
  };
  for (const Case& c : cases) {
    const LayoutChoice choice{c.s, c.U, c.R};
    EXPECT_EQ(phases_of(phase_plan(choice, Pass::forward)), c.forward) << to_string(choice);
    EXPECT_EQ(phases_of(phase_plan(choice, Pass::backward)), c.backward) << to_string(choice);
    EXPECT_EQ(phases_of(phase_plan(choice, Pass::forward_backward)), c.forward + "," + c.backward) << to_string(choice);
  }
}

// What each phase moves, and over which group: the backward moves the gradients of what the
// forward moved, the opposite way; a backward ring carries K,V and dK,dV and returns dK,dV home.
TEST(StrategyPlan, EveryPhaseMovesWhatItsGroupExchanges) {
  for (Strategy s : kAllStrategies)
    for (auto [U, R] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {2, 1}, {1, 2}, {2, 3}}) {
      const LayoutChoice c = resolve({s, strategy_traits(s).mesh == MeshRule::both ? U : 0,
                                      strategy_traits(s).mesh == MeshRule::both ? R : 0},
                                     Cluster{U * R, U * R});
      const PhasePlan both = phase_plan(c, Pass::forward_backward);
      int last = -1;
      for (const PhaseStep& step : both) {
        EXPECT_GT(static_cast<int>(step.phase), last) << to_string(c) << ": phases in their order";
        last = static_cast<int>(step.phase);
        EXPECT_EQ(step.group == Group::ulysses, step.motion == Motion::seq_to_heads || step.motion == Motion::heads_to_seq ||
                                                    step.motion == Motion::lengths_allgather)
            << to_string(c) << " " << to_string(step.phase);
        if (step.group == Group::ulysses) EXPECT_GE(c.ulysses, 2) << to_string(c);
        if (step.group == Group::ring) EXPECT_GE(c.ring, 2) << to_string(c);
        EXPECT_EQ(step.returns_to_owner, step.phase == Phase::attention_bwd && step.motion == Motion::ring) << to_string(c);
        EXPECT_EQ(step.ring_steps, step.motion == Motion::ring ? c.ring : 0) << to_string(c);
      }
      const auto moves = [&](Phase p, std::vector<Payload> want) {
        const PhaseStep* step = both.find(p);
        if (!step) return;
        EXPECT_EQ(std::vector<Payload>(step->moves.begin(), step->moves.end()), want) << to_string(c) << " " << to_string(p);
      };
      moves(Phase::qkv, {Payload::q, Payload::k, Payload::v});
      moves(Phase::o, {Payload::o});
      moves(Phase::grad_o, {Payload::grad_o});
      moves(Phase::grad_qkv, {Payload::grad_q, Payload::grad_k, Payload::grad_v});
      moves(Phase::allgather, {Payload::k, Payload::v});
      moves(Phase::reduce_scatter, {Payload::grad_k, Payload::grad_v});
      // The backward mirrors the forward: each exchange has its transpose, the ring its ring.
      EXPECT_EQ(both.has(Phase::o), both.has(Phase::grad_o)) << to_string(c);
      EXPECT_EQ(both.has(Phase::qkv), both.has(Phase::grad_qkv)) << to_string(c);
      EXPECT_EQ(both.has(Phase::allgather), both.has(Phase::reduce_scatter)) << to_string(c);
      EXPECT_EQ(phase_plan(c, Pass::forward).ring_attention(), phase_plan(c, Pass::backward).ring_attention()) << to_string(c);
    }
}

// The layout counts bytes exactly for the phases its forward plan runs, over every small layout.
TEST(StrategyPlan, LayoutCountsBytesForThePhasesItsPlanRuns) {
  int checked = 0;
  for (Mask mask : {Mask{}, Mask{MaskKind::causal}})
    for (int64_t P = 1; P <= 8; ++P)
      for_each_spec(make_shape({61}, 8, 4, mask), P, std::max<int64_t>(1, P / 2), [&](const LayoutSpec& spec) {
        auto l = try_build(spec);
        if (!l) return;
        ++checked;
        const PhasePlan plan = l->plan(Pass::forward);
        int64_t qkv = 0, o = 0, gather = 0, ring = 0, allgather = 0;
        for (const RankLayout& rl : l->ranks()) {
          qkv += rl.qkv_bytes.send(), o += rl.o_bytes.send(), gather += rl.gather_bytes.send();
          ring += rl.ring_bytes.send(), allgather += rl.allgather_bytes.send();
        }
        EXPECT_EQ(plan.has(Phase::qkv), qkv > 0) << describe(*l);
        EXPECT_EQ(plan.has(Phase::o), o > 0) << describe(*l);
        EXPECT_EQ(plan.has(Phase::gather), gather > 0) << describe(*l);
        EXPECT_EQ(plan.ring_attention(), ring > 0) << describe(*l);
        EXPECT_EQ(plan.has(Phase::allgather), allgather > 0) << describe(*l);
        EXPECT_TRUE(plan.has(Phase::attention)) << describe(*l);
      });
  EXPECT_GT(checked, 300);
}

// The mesh rule, said once: every candidate mesh is U x R = P and resolves to itself; a
// strategy's canonical mesh is its only candidate unless it is a hybrid.
TEST(StrategyMesh, CandidateMeshesAreExactlyTheResolvableOnes) {
  for (Strategy s : kAllStrategies)
    for (int64_t P = 1; P <= 24; ++P) {
      const Cluster cluster{P, P};
      std::vector<std::pair<int64_t, int64_t>> want;
      for (auto [U, R] : testing::factorizations(P)) {
        std::optional<LayoutChoice> resolved;
        try {
          resolved = resolve({s, U, R}, cluster);
        } catch (const Error&) {
        }
        if (!resolved || resolved->ulysses != U || resolved->ring != R) continue;
        // Hybrids on a mesh with a degree of 1 are the plain strategy's layout: not a candidate.
        if (strategy_traits(s).mesh == MeshRule::both && (U == 1 || R == 1)) continue;
        want.emplace_back(U, R);
      }
      EXPECT_EQ(candidate_meshes(s, P), want) << to_string(s) << " P=" << P;
    }
  EXPECT_EQ(resolve({Strategy::uaa}, Cluster{8, 8}), (LayoutChoice{Strategy::uaa, 8, 1}));
  EXPECT_EQ(resolve({Strategy::ring_zigzag}, Cluster{8, 8}), (LayoutChoice{Strategy::ring_zigzag, 1, 8}));
  EXPECT_EQ(resolve({Strategy::hybrid, 0, 4}, Cluster{8, 8}), (LayoutChoice{Strategy::hybrid, 2, 4}));
}

TEST(StrategyTable, OneRowPerStrategyAndTheTwinsItNames) {
  for (Strategy s : kAllStrategies) {
    const StrategyTraits& t = strategy_traits(s);
    EXPECT_EQ(t.strategy, s);
    EXPECT_EQ(t.ulysses, t.mesh != MeshRule::ring_only) << to_string(s);
    EXPECT_LE(int(t.rotates_kv) + int(t.allgathers_kv), 1) << to_string(s) << ": one way K,V travel";
    EXPECT_FALSE(strategy_traits(uneven_twin(s)).pads_classic) << to_string(s);
    EXPECT_EQ(strategy_traits(uneven_twin(s)).mesh, t.mesh) << to_string(s);
  }
  EXPECT_EQ(uneven_twin(Strategy::ulysses), Strategy::uaa);
  EXPECT_EQ(uneven_twin(Strategy::hybrid), Strategy::hybrid_uaa);
  EXPECT_EQ(uneven_twin(Strategy::ring_zigzag), Strategy::ring_zigzag);
  EXPECT_EQ(hybrid_twin(Strategy::ulysses), Strategy::hybrid);
  EXPECT_EQ(hybrid_twin(Strategy::uaa), Strategy::hybrid_uaa);
  EXPECT_TRUE(zigzag_chunks(Strategy::hybrid, Mask{MaskKind::causal}));
  EXPECT_FALSE(zigzag_chunks(Strategy::hybrid, Mask{}));
  EXPECT_TRUE(zigzag_chunks(Strategy::ring_zigzag, Mask{}));
  EXPECT_FALSE(zigzag_chunks(Strategy::ring, Mask{MaskKind::causal}));
}

TEST(PassNames, ReadBackAndTheSimulatorsFirstSpellingToo) {
  for (Pass p : {Pass::forward, Pass::backward, Pass::forward_backward}) EXPECT_EQ(parse_pass(to_string(p)), p);
  EXPECT_EQ(to_string(Pass::forward_backward), "fwd+bwd");
  EXPECT_EQ(parse_pass("fwd-bwd"), Pass::forward_backward);
  try {
    parse_pass("both");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'both'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace cptune
