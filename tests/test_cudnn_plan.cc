// The host side of cuDNN attention (backends/kernels/cudnn_plan.h): the SDPA calls planned for
// runs, masks and heads show exactly the pairs the Mask allows, once each, under cuDNN's own band
// rule; ring steps and zigzag chunks keep their causal diagonal; GQA slices, ragged offsets and
// graph keys. No GPU needed.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <unordered_map>

#include "backends/kernels/cudnn_plan.h"
#include "core/block_mask.h"
#include "core/error.h"
#include "core/types.h"

namespace cptune::backends {
namespace {

using Pair = std::pair<int64_t, int64_t>;  // (query row, key row) of the tensors

// Every pair the Mask allows between the runs, by tensor rows (positions compared per sequence).
std::multiset<Pair> mask_pairs(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs, const Mask& mask,
                               std::span<const int64_t> seq_lens) {
  std::multiset<Pair> out;
  for (const StoredRun& q : q_runs)
    for (const StoredRun& kv : kv_runs) {
      if (q.seq != kv.seq) continue;
      const int64_t len = seq_len_of(seq_lens, q.seq);
      for (int64_t a = 0; a < q.count; ++a)
        for (int64_t b = 0; b < kv.count; ++b)
          if (mask.sees(q.begin + a, kv.begin + b, len)) out.insert({q.offset + a, kv.offset + b});
    }
  return out;
}

// Tensor row -> (sequence, position) of the runs.
std::map<int64_t, std::pair<int32_t, int64_t>> row_positions(std::span<const StoredRun> runs) {
  std::map<int64_t, std::pair<int32_t, int64_t>> out;
  for (const StoredRun& r : runs)
    for (int64_t t = 0; t < r.count; ++t) out[r.offset + t] = {r.seq, r.begin + t};
  return out;
}

// The pairs cuDNN computes for the plan: each entry's rows and columns under the call's band.
std::multiset<Pair> planned_pairs(const CudnnPlan& plan) {
  std::multiset<Pair> out;
  for (const CudnnCall& call : plan.calls)
    for (const CudnnEntry& e : call.entries)
      for (int64_t r = 0; r < e.q_tokens; ++r)
        for (int64_t c = 0; c < e.kv_tokens; ++c)
          if (call.diagonal.sees(r, c, e.q_tokens, e.kv_tokens)) out.insert({e.q_row + r, e.kv_row + c});
  return out;
}

// Everything a plan promises beyond its pairs: entries inside their runs with rows and positions
// agreeing, every query row seeing a key, calls' query rows disjoint and sorted, and under a
// backward their K,V rows disjoint too.
void check_plan_shape(const CudnnPlan& plan, std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs,
                      Pass pass, const std::string& what) {
  const auto q_at = row_positions(q_runs), kv_at = row_positions(kv_runs);
  for (const CudnnCall& call : plan.calls) {
    ASSERT_FALSE(call.entries.empty()) << what;
    std::set<int64_t> q_rows, kv_rows;
    for (size_t i = 0; i < call.entries.size(); ++i) {
      const CudnnEntry& e = call.entries[i];
      ASSERT_GE(e.q_tokens, 1) << what;
      ASSERT_GE(e.kv_tokens, 1) << what;
      if (i > 0) {
        ASSERT_LE(call.entries[i - 1].q_row, e.q_row) << what;
      }
      for (int64_t r = 0; r < e.q_tokens; ++r) {
        auto at = q_at.find(e.q_row + r);
        ASSERT_NE(at, q_at.end()) << what << ": query row outside the runs";
        ASSERT_EQ(at->second, std::make_pair(e.seq, e.q_pos + r)) << what;
        ASSERT_TRUE(q_rows.insert(e.q_row + r).second) << what << ": query row " << e.q_row + r << " twice in a call";
        bool sees_any = false;
        for (int64_t c = 0; c < e.kv_tokens && !sees_any; ++c)
          sees_any = call.diagonal.sees(r, c, e.q_tokens, e.kv_tokens);
        ASSERT_TRUE(sees_any) << what << ": a query row of an entry sees no key (" << to_string(call.diagonal) << ")";
      }
      for (int64_t c = 0; c < e.kv_tokens; ++c) {
        auto at = kv_at.find(e.kv_row + c);
        ASSERT_NE(at, kv_at.end()) << what << ": key row outside the runs";
        ASSERT_EQ(at->second, std::make_pair(e.seq, e.kv_pos + c)) << what;
        if (has_backward(pass)) {
          ASSERT_TRUE(kv_rows.insert(e.kv_row + c).second) << what << ": K,V row twice in a backward call";
        }
      }
    }
  }
}

void check_plan(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs, const Mask& mask,
                std::span<const int64_t> seq_lens, const std::string& what) {
  for (Pass pass : {Pass::forward, Pass::backward}) {
    const CudnnPlan plan = plan_cudnn_attention(q_runs, kv_runs, mask, seq_lens, pass);
    const std::string where = what + " " + to_string(mask) + " " + std::string(to_string(pass));
    ASSERT_EQ(planned_pairs(plan), mask_pairs(q_runs, kv_runs, mask, seq_lens)) << where;
    check_plan_shape(plan, q_runs, kv_runs, pass, where);
  }
}

// Each sequence cut into chunks twice, once for Q and once for K,V, two chunks in three kept; runs
// stored in a random order with gaps between them.
struct RandomRuns {
  std::vector<int64_t> seq_lens;
  std::vector<StoredRun> q, kv;
};

RandomRuns random_runs(std::mt19937_64& rng) {
  RandomRuns out;
  const int seqs = 1 + static_cast<int>(rng() % 3);
  for (int s = 0; s < seqs; ++s) {
    const int64_t len = 1 + static_cast<int64_t>(rng() % 40);
    out.seq_lens.push_back(len);
    // Q and K,V cut apart, so a query run can overlap a key run in part (its diagonal shifted).
    for (auto* runs : {&out.q, &out.kv})
      for (int64_t p = 0; p < len;) {
        const int64_t count = std::min<int64_t>(len - p, 1 + static_cast<int64_t>(rng() % 14));
        if (rng() % 3 != 0) runs->push_back({s, p, count, 0});
        p += count;
      }
  }
  for (auto* runs : {&out.q, &out.kv}) {
    std::shuffle(runs->begin(), runs->end(), rng);
    int64_t row = 0;
    for (StoredRun& r : *runs) {
      row += static_cast<int64_t>(rng() % 3);
      r.offset = row;
      row += r.count;
    }
  }
  return out;
}

Mask random_mask(std::mt19937_64& rng, int64_t longest) {
  switch (rng() % 4) {
    case 0:
      return Mask(MaskKind::full);
    case 1:
      return Mask(MaskKind::causal);
    case 2:
      return Mask(MaskKind::sliding_window, 1 + static_cast<int64_t>(rng() % (longest + 3)));
    default: {
      const int64_t n = 1 + static_cast<int64_t>(rng() % 6);
      std::vector<BlockKind> cells(static_cast<size_t>(n * n));
      for (auto& c : cells) c = static_cast<BlockKind>(rng() % 3);
      return block_mask(BlockTable(n, std::move(cells)));
    }
  }
}

TEST(CudnnPlan, PlannedCallsShowExactlyTheMasksPairsOnRandomRunsAndMasks) {
  std::mt19937_64 rng(25);
  for (int trial = 0; trial < 1500; ++trial) {
    const RandomRuns runs = random_runs(rng);
    const Mask mask = random_mask(rng, *std::max_element(runs.seq_lens.begin(), runs.seq_lens.end()));
    check_plan(runs.q, runs.kv, mask, runs.seq_lens, "trial " + std::to_string(trial));
    if (HasFatalFailure()) return;
  }
}

// Every window on every pair of one-sequence ranges up to 12 tokens (exhaustive): the three
// pieces of a sliding window (bottom-right band, FULL rows, top-left tail) meet exactly.
TEST(CudnnPlan, SlidingWindowPiecesAreExactForEveryRangePairAndWindow) {
  for (int64_t qa = 0; qa < 12; ++qa)
    for (int64_t qn = 1; qa + qn <= 12; ++qn)
      for (int64_t ka = 0; ka < 12; ++ka)
        for (int64_t kn = 1; ka + kn <= 12; ++kn)
          for (int64_t w = 1; w <= 14; ++w) {
            const StoredRun q{0, qa, qn, 0}, kv{0, ka, kn, 0};
            check_plan({&q, 1}, {&kv, 1}, Mask(MaskKind::sliding_window, w), {}, "q " + std::to_string(qa) + "+" +
                       std::to_string(qn) + " kv " + std::to_string(ka) + "+" + std::to_string(kn));
            if (HasFatalFailure()) return;
          }
}

// The chunks a rank holds in a ring of p ranks over one sequence of len tokens: chunk r (plain)
// or chunks r and 2p-1-r (zigzag), stored back to back.
std::vector<StoredRun> ring_chunks(int64_t len, int64_t p, int64_t rank, bool zigzag) {
  std::vector<int64_t> chunks = {rank};
  if (zigzag) chunks.push_back(2 * p - 1 - rank);
  const int64_t n = zigzag ? 2 * p : p;
  std::vector<StoredRun> out;
  int64_t row = 0;
  for (int64_t c : chunks) {
    const int64_t begin = block_begin(len, n, c), count = block_begin(len, n, c + 1) - begin;
    out.push_back({0, begin, count, row});
    row += count;
  }
  return out;
}

// Every ring step of every rank, plain and zigzag, worlds 1 to 5, causal and sliding windows: the
// query block and the K,V block sit at different global positions, and the planned diagonal is
// where the positions put it.
TEST(CudnnPlan, CausalDiagonalIsRightForEveryRingStepAndZigzagChunk) {
  for (int64_t p = 1; p <= 5; ++p)
    for (bool zigzag : {false, true})
      for (int64_t len : {2 * p, 2 * p + 3, 7 * p + 1})
        for (int64_t rank = 0; rank < p; ++rank)
          for (int64_t step = 0; step < p; ++step) {
            const auto q = ring_chunks(len, p, rank, zigzag);
            const auto kv = ring_chunks(len, p, (rank - step + p) % p, zigzag);
            const std::string what = "p " + std::to_string(p) + (zigzag ? " zigzag" : " ring") + " len " +
                                     std::to_string(len) + " rank " + std::to_string(rank) + " step " +
                                     std::to_string(step);
            for (const Mask& mask : {Mask(MaskKind::causal), Mask(MaskKind::sliding_window, len / 3 + 1),
                                     Mask(MaskKind::sliding_window, 2)}) {
              check_plan(q, kv, mask, {}, what);
              if (HasFatalFailure()) return;
            }
          }
}

// A plain causal ring with equal chunks: the local step is one bottom-right causal call, a K,V
// block from earlier ranks one FULL call, a later one no call at all.
TEST(CudnnPlan, PlainCausalRingStepIsOneCallOrNone) {
  const int64_t p = 4, len = 64;
  for (int64_t rank = 0; rank < p; ++rank)
    for (int64_t step = 0; step < p; ++step) {
      const int64_t source = (rank - step + p) % p;
      const auto q = ring_chunks(len, p, rank, false), kv = ring_chunks(len, p, source, false);
      const CudnnPlan plan = plan_cudnn_attention(q, kv, Mask(MaskKind::causal), {}, Pass::forward);
      if (source > rank) {
        EXPECT_TRUE(plan.calls.empty());
        continue;
      }
      ASSERT_EQ(plan.calls.size(), 1u);
      ASSERT_EQ(plan.calls[0].entries.size(), 1u);
      EXPECT_EQ(plan.calls[0].diagonal, source == rank ? (CudnnDiagonal{true, std::nullopt, 0}) : CudnnDiagonal{});
      EXPECT_EQ(plan.calls[0].entries[0].q_tokens, len / p);
      EXPECT_EQ(plan.calls[0].entries[0].kv_tokens, len / p);
    }
}

// A packed batch (varlen) under causal: one call, one bottom-right entry per sequence, ragged
// offsets the prefix sums of the lengths in elements of each tensor, the last one the total.
TEST(CudnnPlan, PackedCausalBatchIsOneCallWithRaggedOffsetsPerSequence) {
  const std::vector<int64_t> lens = {77, 4097, 1000};
  const auto runs = packed_runs(lens);
  const CudnnPlan plan = plan_cudnn_attention(runs, runs, Mask(MaskKind::causal), {}, Pass::backward);
  ASSERT_EQ(plan.calls.size(), 1u);
  const CudnnCall& call = plan.calls[0];
  EXPECT_EQ(call.diagonal, (CudnnDiagonal{true, std::nullopt, 0}));
  ASSERT_EQ(call.entries.size(), lens.size());
  const CudnnTensors t{DType::bf16, 8, 2, 128, 64, 0.125f};
  const CudnnRaggedOffsets r = cudnn_ragged_offsets(call, t);
  EXPECT_EQ(r.seq_len_q, (std::vector<int32_t>{77, 4097, 1000}));
  EXPECT_EQ(r.seq_len_kv, (std::vector<int32_t>{77, 4097, 1000}));
  const std::vector<int64_t> starts = {0, 77, 77 + 4097, 77 + 4097 + 1000};
  for (size_t i = 0; i < starts.size(); ++i) {
    EXPECT_EQ(r.q[i], starts[i] * 8 * 128);
    EXPECT_EQ(r.k[i], starts[i] * 2 * 128);
    EXPECT_EQ(r.v[i], starts[i] * 2 * 64);
    EXPECT_EQ(r.o[i], starts[i] * 8 * 64);
    EXPECT_EQ(r.lse[i], starts[i] * 8);
  }
}

// A shared prompt (star): the FULL column below the diagonal merges into one entry, the CAUSAL
// diagonal cells into one call: two calls, forward or backward.
TEST(CudnnPlan, StarMaskIsTheMergedFullColumnAndTheDiagonal) {
  const Mask mask = block_mask(block_pattern("star:8"));
  const std::vector<int64_t> lens = {800};
  const auto runs = packed_runs(lens);
  for (Pass pass : {Pass::forward, Pass::backward}) {
    const CudnnPlan plan = plan_cudnn_attention(runs, runs, mask, lens, pass);
    ASSERT_EQ(plan.calls.size(), 2u) << to_string(pass);
    size_t full_entries = 0, causal_entries = 0;
    for (const CudnnCall& c : plan.calls) (c.diagonal.full() ? full_entries : causal_entries) += c.entries.size();
    EXPECT_EQ(full_entries, 1u);
    EXPECT_EQ(causal_entries, 8u);
  }
}

// Entries of one forward call may read the same K,V rows; a backward's may not (each writes dK, dV):
// two query runs apart in positions against one K,V run are one forward call, two backward ones.
TEST(CudnnPlan, BackwardCallsNeverShareKvRows) {
  const std::vector<StoredRun> q = {{0, 0, 20, 0}, {0, 60, 20, 20}};
  const std::vector<StoredRun> kv = {{0, 20, 30, 0}};
  const Mask full(MaskKind::full);
  const CudnnPlan forward = plan_cudnn_attention(q, kv, full, {}, Pass::forward);
  ASSERT_EQ(forward.calls.size(), 1u);
  EXPECT_EQ(forward.calls[0].entries.size(), 2u);
  const CudnnPlan backward = plan_cudnn_attention(q, kv, full, {}, Pass::forward_backward);
  ASSERT_EQ(backward.calls.size(), 2u);
  EXPECT_EQ(backward.calls[0].entries.size(), 1u);
}

TEST(CudnnPlan, HeadSlicesCoverEveryLocalHeadWithItsKvHead) {
  for (int64_t group = 1; group <= 5; ++group)
    for (int64_t begin = 0; begin < 3 * group; ++begin)
      for (int64_t heads = 1; heads <= 12; ++heads) {
        const HeadMap map{begin, begin / group, group};
        const auto slices = cudnn_head_slices(map, heads);
        ASSERT_LE(slices.size(), 3u);
        int64_t next = 0;
        for (const CudnnHeadSlice& s : slices) {
          ASSERT_EQ(s.q_head, next);
          ASSERT_GE(s.kv_heads, 1);
          ASSERT_EQ(s.q_heads % s.kv_heads, 0);
          const int64_t ratio = s.q_heads / s.kv_heads;
          for (int64_t h = s.q_head; h < s.q_head + s.q_heads; ++h)
            ASSERT_EQ(s.kv_head + (h - s.q_head) / ratio, map.kv_of(h))
                << "group " << group << " begin " << begin << " head " << h;
          next += s.q_heads;
        }
        ASSERT_EQ(next, heads);
      }
}

TEST(CudnnPlan, RingStepsOfOneShapeShareAGraphKey) {
  const int64_t p = 4, len = 4096;
  const CudnnTensors t{DType::bf16, 8, 8, 128, 128, 0.088f};
  const CudnnHeadSlice slice{0, 8, 0, 8};
  std::set<std::string> keys;
  std::unordered_map<CudnnGraphKey, int, CudnnGraphKeyHash> cache;
  for (int64_t rank = 0; rank < p; ++rank)
    for (int64_t step = 0; step < p; ++step) {
      const auto q = ring_chunks(len, p, rank, true), kv = ring_chunks(len, p, (rank - step + p) % p, true);
      for (const CudnnCall& c : plan_cudnn_attention(q, kv, Mask(MaskKind::causal), {}, Pass::forward).calls) {
        const CudnnGraphKey key = cudnn_graph_key(c, slice, t, false);
        keys.insert(to_string(key));
        ++cache[key];
      }
    }
  // Zigzag chunks of 512 tokens: the local step's two causal chunks (one call of two entries) and
  // FULL calls of one or two entries; the last rank's chunks p-1 and p are adjacent and merge into
  // 1024. Five graphs serve all sixteen (rank, step) plans.
  EXPECT_EQ(keys.size(), cache.size());
  EXPECT_EQ(cache.size(), 5u);
  for (const auto& [key, uses] : cache) {
    EXPECT_TRUE(key.q_tokens == 512 || key.q_tokens == 1024) << to_string(key);
    EXPECT_TRUE(key.kv_tokens == 512 || key.kv_tokens == 1024) << to_string(key);
  }
}

TEST(CudnnPlan, GraphKeysDifferByBandPassAndShape) {
  const CudnnTensors t{DType::fp16, 4, 2, 64, 64, 0.125f};
  const CudnnHeadSlice slice{0, 4, 0, 2};
  CudnnCall call;
  call.entries = {{0, 0, 0, 100, 0, 0, 100}};
  const CudnnGraphKey base = cudnn_graph_key(call, slice, t, false);
  EXPECT_EQ(base.q_tokens, 128);
  EXPECT_EQ(base.kv_tokens, 128);
  CudnnCall causal = call;
  causal.diagonal = {true, std::nullopt, 0};
  CudnnCall longer = call;
  longer.entries[0].kv_tokens = 300;
  const CudnnGraphKeyHash hash;
  for (const CudnnGraphKey& other : {cudnn_graph_key(causal, slice, t, false), cudnn_graph_key(call, slice, t, true),
                                     cudnn_graph_key(longer, slice, t, false)}) {
    EXPECT_NE(other, base) << to_string(other);
    EXPECT_NE(hash(other), hash(base)) << to_string(other);
  }
  CudnnCall shorter = call;
  shorter.entries[0].q_tokens = 65;  // the same bucket: the same graph
  EXPECT_EQ(cudnn_graph_key(shorter, slice, t, false), base);
  EXPECT_EQ(cudnn_token_bucket(1), 64);
  EXPECT_EQ(cudnn_token_bucket(64), 64);
  EXPECT_EQ(cudnn_token_bucket(65), 128);
  EXPECT_EQ(cudnn_token_bucket(4097), 8192);
}

TEST(CudnnPlan, TensorsCuDnnCannotRunAreRefusedWithTheFallbackNamed) {
  EXPECT_NO_THROW(check_cudnn_tensors({DType::bf16, 8, 2, 128, 128, 1.f}));
  for (const CudnnTensors& t : {CudnnTensors{DType::fp32, 8, 2, 128, 128, 1.f}, CudnnTensors{DType::bf16, 8, 2, 100, 128, 1.f},
                                CudnnTensors{DType::fp16, 8, 2, 64, 512, 1.f}}) {
    try {
      check_cudnn_tensors(t);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cptune's own kernel"), std::string::npos) << e.what();
    }
  }
}

TEST(CudnnPlan, BandNamesSayWhatCuDnnIsAskedFor) {
  EXPECT_EQ(to_string(CudnnDiagonal{}), "full");
  EXPECT_EQ(to_string(CudnnDiagonal{true, std::nullopt, 0}), "causal-br");
  EXPECT_EQ(to_string(CudnnDiagonal{true, 128, 0}), "band-br:128");
  EXPECT_EQ(to_string(CudnnDiagonal{false, 1, 127}), "band-tl:1,127");
}

}  // namespace
}  // namespace cptune::backends
