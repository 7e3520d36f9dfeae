// Specification of the CPU attention kernel: the blocked attend() equals the naive reference
// for every mask, head map, packing and dtype, and K,V blocks merge in any order (the ring).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/cpu_isa.h"
#include "backends/kernels/dtype_convert.h"
#include "core/error.h"
#include "core/layout.h"

namespace cptune::backends {
namespace {

// Tolerances, absolute on O (|O| < 1 because V is uniform in [-1, 1)) and relative on LSE.
// States are fp32 for every dtype: bf16 / fp16 inputs widen to fp32 exactly and the reference
// reads the same rounded inputs, so kernel and reference differ only by fp32 accumulation over
// at most a few hundred keys (<= 5e-7 seen). Stored outputs add one rounding to the dtype, at
// most half an ulp below 1: 2^-9 for bf16 (8 bit significand), 2^-12 for fp16 (11 bit).
constexpr float kStateTol = 1e-5f;
float stored_tol(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return std::ldexp(1.0f, -9) + kStateTol;
    case DType::fp16:
      return std::ldexp(1.0f, -12) + kStateTol;
    case DType::fp32:
      return kStateTol;
  }
  return 0;
}

// ---- inputs -------------------------------------------------------------------------------------

// A host tensor [tokens][heads][dim] in storage dtype.
struct HostTensor {
  std::vector<std::byte> bytes;
  DType dtype = DType::fp32;
  int64_t tokens = 0, heads = 0, dim = 0;

  TensorView view() const { return {bytes.data(), dtype, tokens, heads, dim}; }
  int64_t row_bytes() const { return heads * dim * dtype_bytes(dtype); }
};

HostTensor random_tensor(std::mt19937_64& rng, int64_t tokens, int64_t heads, int64_t dim, DType dtype,
                         float amplitude) {
  std::uniform_real_distribution<float> uniform(-amplitude, amplitude);
  std::vector<float> values(static_cast<size_t>(tokens * heads * dim));
  for (float& x : values) x = uniform(rng);
  HostTensor t{std::vector<std::byte>(values.size() * static_cast<size_t>(dtype_bytes(dtype))), dtype, tokens, heads,
               dim};
  from_float(values.data(), dtype, t.bytes.data(), static_cast<int64_t>(values.size()));
  return t;
}

// Heads [begin, end) of every token (what a rank holds after a head split).
HostTensor head_slice(const HostTensor& t, int64_t begin, int64_t end) {
  HostTensor out{{}, t.dtype, t.tokens, end - begin, t.dim};
  const int64_t head_bytes = t.dim * dtype_bytes(t.dtype);
  for (int64_t token = 0; token < t.tokens; ++token) {
    const std::byte* row = t.bytes.data() + token * t.row_bytes();
    out.bytes.insert(out.bytes.end(), row + begin * head_bytes, row + end * head_bytes);
  }
  return out;
}

// Rows [first, first + count) as a view into t (no copy).
TensorView row_slice(const HostTensor& t, int64_t first, int64_t count) {
  return {t.bytes.data() + first * t.row_bytes(), t.dtype, count, t.heads, t.dim};
}

// The rows of `runs` copied back to back, and the runs re-addressed to the copy.
struct Gathered {
  HostTensor tensor;
  std::vector<StoredRun> runs;
};
Gathered gather(const HostTensor& t, std::span<const StoredRun> runs) {
  Gathered out{{{}, t.dtype, 0, t.heads, t.dim}, {}};
  for (const StoredRun& run : runs) {
    const std::byte* first = t.bytes.data() + run.offset * t.row_bytes();
    out.tensor.bytes.insert(out.tensor.bytes.end(), first, first + run.count * t.row_bytes());
    out.runs.push_back({run.seq, run.begin, run.count, out.tensor.tokens});
    out.tensor.tokens += run.count;
  }
  return out;
}

// A packed batch of whole sequences with global heads, as the single device holds it.
struct Problem {
  std::vector<int64_t> seq_lens{64};
  int64_t q_heads = 2, kv_heads = 1, head_dim = 32, v_dim = 32;
  DType dtype = DType::fp32;
  Mask mask;
  float amplitude = 1;  // of Q and K; V is always in [-1, 1)
  std::optional<float> scale;

  AttentionParams params() const { return {mask, {0, 0, q_heads / kv_heads}, scale, seq_lens}; }
  std::string describe() const {
    std::string lens;
    for (int64_t len : seq_lens) lens += std::to_string(len) + ",";
    return "seq_lens=" + lens + " Hq=" + std::to_string(q_heads) + " Hkv=" + std::to_string(kv_heads) +
           " D=" + std::to_string(head_dim) + " Dv=" + std::to_string(v_dim) +
           " dtype=" + std::string(to_string(dtype)) + " mask=" + to_string(mask);
  }
};

struct Inputs {
  HostTensor q, k, v;
  std::vector<StoredRun> runs;
  int64_t tokens() const { return q.tokens; }
};

Inputs make_inputs(const Problem& p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t tokens = std::accumulate(p.seq_lens.begin(), p.seq_lens.end(), int64_t{0});
  Inputs in{random_tensor(rng, tokens, p.q_heads, p.head_dim, p.dtype, p.amplitude),
            random_tensor(rng, tokens, p.kv_heads, p.head_dim, p.dtype, p.amplitude),
            random_tensor(rng, tokens, p.kv_heads, p.v_dim, p.dtype, 1.0f), packed_runs(p.seq_lens)};
  return in;
}

AttentionState blocked(const Inputs& in, const AttentionParams& params) {
  AttentionState state(in.q.tokens, in.q.heads, in.v.dim);
  attend({in.q.view(), in.runs}, {in.k.view(), in.v.view(), in.runs}, params, state);
  return state;
}

AttentionState reference(const Inputs& in, const AttentionParams& params) {
  AttentionState state(in.q.tokens, in.q.heads, in.v.dim);
  reference_attention({in.q.view(), in.runs}, {in.k.view(), in.v.view(), in.runs}, params, state);
  return state;
}

// ---- comparison ---------------------------------------------------------------------------------

using RowHead = std::pair<int64_t, int64_t>;
RowHead same_place(int64_t row, int64_t head) { return {row, head}; }

// Every (row, head) of `got` against `want` at map(row, head): no NaN, LSE both -inf or within
// tol (relative above 1), O within tol.
::testing::AssertionResult states_near(const AttentionState& got, const AttentionState& want, float tol,
                                       const std::function<RowHead(int64_t, int64_t)>& map = same_place) {
  for (int64_t row = 0; row < got.tokens(); ++row) {
    for (int64_t head = 0; head < got.q_heads(); ++head) {
      const auto [want_row, want_head] = map(row, head);
      const float lse = got.lse_at(row, head), want_lse = want.lse_at(want_row, want_head);
      const bool lse_ok = (lse == want_lse) || std::abs(lse - want_lse) <= tol * std::max(1.0f, std::abs(want_lse));
      if (!lse_ok)
        return ::testing::AssertionFailure()
               << "row " << row << " head " << head << ": LSE " << lse << " vs " << want_lse;
      for (int64_t d = 0; d < got.v_dim(); ++d) {
        const float o = got.out_row(row, head)[d], want_o = want.out_row(want_row, want_head)[d];
        if (!(std::abs(o - want_o) <= tol))  // also catches NaN
          return ::testing::AssertionFailure()
                 << "row " << row << " head " << head << " dim " << d << ": O " << o << " vs " << want_o;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult matches_reference(const Problem& p, uint64_t seed, float tol = kStateTol) {
  const Inputs in = make_inputs(p, seed);
  auto result = states_near(blocked(in, p.params()), reference(in, p.params()), tol);
  if (!result) result << " (" << p.describe() << ")";
  return result;
}

// A block table with every cell EMPTY, FULL or CAUSAL at random.
BlockTable random_table(std::mt19937_64& rng, int64_t n) {
  std::vector<BlockKind> cells(static_cast<size_t>(n * n));
  for (auto& c : cells) c = static_cast<BlockKind>(rng() % 3);
  return BlockTable(n, std::move(cells));
}

std::vector<Mask> masks_for(int64_t len) {
  std::vector<Mask> masks{{MaskKind::full, 0}, {MaskKind::causal, 0}};
  for (int64_t window : {int64_t{1}, int64_t{3}, int64_t{64}, len - 1, len, len + 7})
    if (window >= 1) masks.push_back({MaskKind::sliding_window, window});
  std::mt19937_64 rng(static_cast<uint64_t>(len));
  for (const char* pattern : {"star:3", "strided:5,2", "stream:7,1,2", "global-local:4,1,1"})
    masks.push_back(parse_mask(pattern));
  masks.push_back(block_mask(random_table(rng, 6)));
  return masks;
}

// ---- blocked equals reference -------------------------------------------------------------------

// Lengths on both sides of the 64-token tile edges, every kind of mask.
TEST(AttendCpu, MatchesReferenceForEveryMaskAndLengthAcrossTileEdges) {
  for (int64_t len : {1, 2, 17, 63, 64, 65, 127, 128, 129, 200, 257})
    for (const Mask& mask : masks_for(len)) {
      Problem p;
      p.seq_lens = {len};
      p.mask = mask;
      EXPECT_TRUE(matches_reference(p, 100 + static_cast<uint64_t>(len)));
    }
}

// Exhaustive for small sequences: every window from 1 to past the end.
TEST(AttendCpu, MatchesReferenceForEveryWindowOfEverySmallSequence) {
  for (int64_t len = 1; len <= 24; ++len)
    for (int64_t window = 1; window <= len + 1; ++window) {
      Problem p;
      p.seq_lens = {len};
      p.head_dim = 4;
      p.v_dim = 3;
      p.mask = {MaskKind::sliding_window, window};
      EXPECT_TRUE(matches_reference(p, static_cast<uint64_t>(len * 100 + window)));
    }
}

// Block masks: random tables of 1 to 16 blocks over lengths whose blocks start and end on and
// off the 64-token tile edges (blocks shorter and longer than a tile, lengths below N), in a
// packed batch so every sequence is cut by its own length.
TEST(AttendCpu, RandomBlockTablesMatchReferenceAcrossTileEdges) {
  std::mt19937_64 rng(16);
  for (int trial = 0; trial < 60; ++trial) {
    Problem p;
    const int64_t n = 1 + static_cast<int64_t>(rng() % 16);
    p.mask = block_mask(random_table(rng, n));
    const int64_t lens[] = {1, 5, 63, 64, 65, 128, 129, 200, 257, 640, 1001};
    p.seq_lens = {lens[rng() % std::size(lens)], lens[rng() % std::size(lens)]};
    p.q_heads = 2;
    p.kv_heads = 1;
    p.head_dim = p.v_dim = 8;
    EXPECT_TRUE(matches_reference(p, 500 + static_cast<uint64_t>(trial))) << inline_text(*p.mask.blocks);
  }
}

// Small sequences, lengths 1 to 8 (blocks of 0 to 3 tokens): each cell of a 3-block table alone,
// FULL and CAUSAL, so a wrong boundary of any cell shows.
TEST(AttendCpu, EveryCellOfASmallTableMatchesReferenceAtEveryShortLength) {
  for (int64_t len = 1; len <= 8; ++len)
    for (int64_t cell = 0; cell < 9; ++cell)
      for (BlockKind kind : {BlockKind::full, BlockKind::causal}) {
        std::vector<BlockKind> cells(9, BlockKind::empty);
        cells[static_cast<size_t>(cell)] = kind;
        Problem p;
        p.seq_lens = {len};
        p.head_dim = p.v_dim = 4;
        p.mask = block_mask(BlockTable(3, cells));
        EXPECT_TRUE(matches_reference(p, static_cast<uint64_t>(len * 10 + cell)));
      }
}

// The comparison the tests and --verify rely on can fail: a kernel that drops one visible cell
// (the table with that cell EMPTY) differs from the reference with the whole table.
TEST(AttendCpu, AKernelMissingOneBlockDiffersFromTheReference) {
  Problem p;
  p.seq_lens = {200};
  p.mask = parse_mask("strided:8,3");
  const Inputs in = make_inputs(p, 41);
  const AttentionState want = reference(in, p.params());
  EXPECT_TRUE(states_near(blocked(in, p.params()), want, kStateTol));
  const BlockTable& table = *p.mask.blocks;
  for (int64_t cell = 0; cell < table.n() * table.n(); ++cell) {
    if (table.cells()[static_cast<size_t>(cell)] == BlockKind::empty) continue;
    std::vector<BlockKind> cells(table.cells().begin(), table.cells().end());
    cells[static_cast<size_t>(cell)] = BlockKind::empty;
    Problem missing = p;
    missing.mask = block_mask(BlockTable(table.n(), cells));
    EXPECT_FALSE(states_near(blocked(in, missing.params()), want, kStateTol)) << "cell " << cell;
  }
}

// A block mask cuts each sequence by its own length: the kernel refuses to guess one.
TEST(AttendCpu, BlockMaskWithoutSequenceLengthsIsRefused) {
  Problem p;
  p.seq_lens = {50};
  p.mask = parse_mask("star:4");
  const Inputs in = make_inputs(p, 3);
  AttentionParams params = p.params();
  params.seq_lens = {};
  AttentionState state(in.tokens(), p.q_heads, p.v_dim);
  try {
    attend({in.q.view(), in.runs}, {in.k.view(), in.v.view(), in.runs}, params, state);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("star:4"), std::string::npos) << e.what();
  }
}

TEST(AttendCpu, ValueHeadDimMayDifferFromQueryKeyDim) {
  for (auto [d, dv] : {std::pair<int64_t, int64_t>{8, 24}, {64, 16}, {40, 128}, {128, 64}})
    for (const Mask& mask : masks_for(90)) {
      Problem p;
      p.seq_lens = {90};
      p.head_dim = d;
      p.v_dim = dv;
      p.mask = mask;
      EXPECT_TRUE(matches_reference(p, 7));
    }
}

// Every balanced head split (tensor_split of Hq into U parts) of Hq = 12, Hkv = 4: rank u's Q
// heads may start mid-group and it holds exactly the KV heads they read.
TEST(AttendCpu, GqaHeadRangesStartingMidGroupReadTheRightKvHead) {
  Problem p;
  p.seq_lens = {70};
  p.q_heads = 12;
  p.kv_heads = 4;
  p.head_dim = p.v_dim = 16;
  for (const Mask& mask : {Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 20}}) {
    p.mask = mask;
    const Inputs global = make_inputs(p, 3);
    const AttentionState want = reference(global, p.params());
    const int64_t group = p.q_heads / p.kv_heads;
    for (int64_t ulysses = 1; ulysses <= p.q_heads; ++ulysses)
      for (int64_t u = 0; u < ulysses; ++u) {
        const int64_t q_begin = split_begin(p.q_heads, ulysses, u);
        const int64_t q_end = q_begin + split_size(p.q_heads, ulysses, u);
        const int64_t kv_begin = q_begin / group, kv_end = (q_end - 1) / group + 1;
        const Inputs local{head_slice(global.q, q_begin, q_end), head_slice(global.k, kv_begin, kv_end),
                           head_slice(global.v, kv_begin, kv_end), global.runs};
        const AttentionState got = blocked(local, {p.mask, {q_begin, kv_begin, group}, {}});
        EXPECT_TRUE(states_near(got, want, kStateTol,
                                [&](int64_t row, int64_t h) {
                                  return RowHead{row, q_begin + h};
                                }))
            << "U=" << ulysses << " u=" << u << " mask=" << to_string(mask);
      }
  }
}

// A packed (varlen) batch in one call equals each sequence computed alone.
TEST(AttendCpu, PackedBatchNeverAttendsAcrossSequences) {
  Problem p;
  p.seq_lens = {5, 64, 1, 130, 70};
  p.q_heads = 4;
  p.kv_heads = 2;
  for (const Mask& mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 9}}) {
    p.mask = mask;
    const Inputs in = make_inputs(p, 11);
    const AttentionState got = blocked(in, p.params());
    for (const StoredRun& seq : in.runs) {
      const StoredRun alone{0, 0, seq.count, 0};
      AttentionState want(seq.count, p.q_heads, p.v_dim);
      reference_attention({row_slice(in.q, seq.offset, seq.count), {&alone, 1}},
                          {row_slice(in.k, seq.offset, seq.count), row_slice(in.v, seq.offset, seq.count), {&alone, 1}},
                          p.params(), want);
      AttentionState got_rows(seq.count, p.q_heads, p.v_dim);
      std::copy_n(got.out_row(seq.offset, 0), seq.count * p.q_heads * p.v_dim, got_rows.out_row(0, 0));
      std::copy_n(&got.lse()[static_cast<size_t>(seq.offset * p.q_heads)], seq.count * p.q_heads,
                  got_rows.lse().data());
      EXPECT_TRUE(states_near(got_rows, want, kStateTol)) << "sequence " << seq.seq << " mask " << to_string(mask);
    }
  }
}

TEST(AttendCpu, EveryStorageDtypeMatchesReferenceWithinItsTolerance) {
  for (DType dtype : {DType::fp32, DType::bf16, DType::fp16})
    for (const Mask& mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 33}}) {
      Problem p;
      p.seq_lens = {150, 41};
      p.q_heads = 4;
      p.kv_heads = 2;
      p.head_dim = 64;
      p.v_dim = 48;
      p.dtype = dtype;
      p.mask = mask;
      const Inputs in = make_inputs(p, 5);
      const AttentionState got = blocked(in, p.params()), want = reference(in, p.params());
      EXPECT_TRUE(states_near(got, want, kStateTol)) << p.describe();

      const auto elems = static_cast<int64_t>(got.out().size());
      std::vector<std::byte> stored(static_cast<size_t>(elems * dtype_bytes(dtype)));
      store_output(got, dtype, stored.data(), static_cast<int64_t>(stored.size()));
      std::vector<float> widened(static_cast<size_t>(elems));
      to_float(stored.data(), dtype, widened.data(), elems);
      for (int64_t i = 0; i < elems; ++i)
        ASSERT_NEAR(widened[i], want.out()[i], stored_tol(dtype)) << "element " << i << " " << p.describe();
    }
}

// ---- the ring property --------------------------------------------------------------------------

// One K,V block of the ring: rows [first, last) of the packed tensors, copied into their own
// buffers as a peer would send them.
struct Block {
  Gathered k, v;
};
Block cut_block(const Inputs& in, int64_t first, int64_t last) {
  std::vector<StoredRun> runs;
  for (const StoredRun& seq : in.runs) {
    const int64_t lo = std::max(first, seq.offset), hi = std::min(last, seq.offset + seq.count);
    if (lo < hi) runs.push_back({seq.seq, lo - seq.offset, hi - lo, lo});
  }
  return {gather(in.k, runs), gather(in.v, runs)};
}

// Splitting K,V at random cut points and attending the blocks in random order merges to the
// one-call result: merging by LSE is exact up to fp32 rounding of each merge (<= 5e-7 seen over
// up to 10 blocks).
TEST(AttendCpu, KvSplitIntoRandomBlocksInRandomOrderMergesToOneCall) {
  constexpr float kMergeTol = 2e-6f;
  std::mt19937_64 rng(2024);
  const Mask masks[] = {{MaskKind::full, 0},           {MaskKind::causal, 0},         {MaskKind::sliding_window, 5},
                        {MaskKind::sliding_window, 70}, parse_mask("strided:6,2"), parse_mask("stream:5,1,2")};
  for (int trial = 0; trial < 120; ++trial) {
    Problem p;
    p.seq_lens = {std::uniform_int_distribution<int64_t>(1, 180)(rng),
                  std::uniform_int_distribution<int64_t>(1, 90)(rng)};
    p.q_heads = 3;
    p.kv_heads = 1;
    p.mask = masks[trial % std::size(masks)];
    const Inputs in = make_inputs(p, static_cast<uint64_t>(trial));
    const AttentionState one_call = blocked(in, p.params());

    std::vector<int64_t> cuts(static_cast<size_t>(in.tokens() - 1));
    std::iota(cuts.begin(), cuts.end(), int64_t{1});
    std::shuffle(cuts.begin(), cuts.end(), rng);
    cuts.resize(std::min<size_t>(cuts.size(), std::uniform_int_distribution<size_t>(0, 9)(rng)));
    cuts.push_back(0);
    cuts.push_back(in.tokens());
    std::sort(cuts.begin(), cuts.end());
    std::vector<Block> blocks;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) blocks.push_back(cut_block(in, cuts[i], cuts[i + 1]));
    std::shuffle(blocks.begin(), blocks.end(), rng);

    AttentionState merged(in.tokens(), p.q_heads, p.v_dim);
    for (const Block& b : blocks)
      attend({in.q.view(), in.runs}, {b.k.tensor.view(), b.v.tensor.view(), b.k.runs}, p.params(), merged);
    EXPECT_TRUE(states_near(merged, one_call, kMergeTol)) << blocks.size() << " blocks, " << p.describe();
  }
}

// Zigzag shards of a packed batch over `ring` ranks, as rows of the packed tensors: each
// sequence is cut into 2R chunks (tensor_split rule) and rank r holds chunks r and 2R-1-r.
std::vector<std::vector<StoredRun>> zigzag_shards(std::span<const StoredRun> sequences, int64_t ring) {
  std::vector<std::vector<StoredRun>> shards(static_cast<size_t>(ring));
  for (int64_t r = 0; r < ring; ++r)
    for (const StoredRun& seq : sequences)
      for (int64_t chunk : {r, 2 * ring - 1 - r}) {
        const int64_t begin = split_begin(seq.count, 2 * ring, chunk);
        shards[r].push_back({seq.seq, begin, split_size(seq.count, 2 * ring, chunk), seq.offset + begin});
      }
  return shards;
}

// Rank r of a zigzag ring: its Q shard (two runs per sequence, with a gap) against every K,V
// shard in ring order. Its rows equal the reference rows of the contiguous sequences.
::testing::AssertionResult zigzag_rank_matches(const Inputs& in, const AttentionState& want,
                                               const std::vector<std::vector<StoredRun>>& shards, int64_t r,
                                               const AttentionParams& params) {
  const auto ring = static_cast<int64_t>(shards.size());
  const Gathered q = gather(in.q, shards[r]);
  AttentionState got(q.tensor.tokens, in.q.heads, in.v.dim);
  for (int64_t step = 0; step < ring; ++step) {
    const auto& source = shards[static_cast<size_t>((r - step + ring) % ring)];
    const Gathered k = gather(in.k, source), v = gather(in.v, source);
    attend({q.tensor.view(), q.runs}, {k.tensor.view(), v.tensor.view(), k.runs}, params, got);
  }
  const auto packed_row = [&](int64_t row, int64_t head) {
    size_t i = 0;
    while (row >= q.runs[i].offset + q.runs[i].count) ++i;
    return RowHead{shards[r][i].offset + (row - q.runs[i].offset), head};
  };
  return states_near(got, want, kStateTol, packed_row);
}

TEST(AttendCpu, ZigzagRunsMatchContiguousReferenceRows) {
  Problem p;
  p.q_heads = p.kv_heads = 2;
  for (const std::vector<int64_t>& seq_lens : {std::vector<int64_t>{37, 100}, {3, 1, 260}, {129}})
    for (const Mask& mask : {Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 9}, Mask{MaskKind::full, 0},
                             parse_mask("star:5")}) {
      p.seq_lens = seq_lens;
      p.mask = mask;
      const Inputs in = make_inputs(p, 17);
      const AttentionState want = reference(in, p.params());
      for (int64_t ring = 1; ring <= 5; ++ring) {
        const auto shards = zigzag_shards(in.runs, ring);
        for (int64_t r = 0; r < ring; ++r)
          EXPECT_TRUE(zigzag_rank_matches(in, want, shards, r, p.params()))
              << "rank " << r << " of " << ring << ", " << p.describe();
      }
    }
}

// ---- rows that see nothing ----------------------------------------------------------------------

bool all_empty(const AttentionState& s) {
  const bool lse_empty = std::all_of(s.lse().begin(), s.lse().end(), [](float x) { return std::isinf(x) && x < 0; });
  const bool out_zero = std::all_of(s.out().begin(), s.out().end(), [](float x) { return x == 0.0f; });
  return lse_empty && out_zero;
}

TEST(AttendCpu, FullyMaskedRowsKeepZeroOutputAndMinusInfinityLse) {
  Problem p;
  p.seq_lens = {40, 40};
  const Inputs in = make_inputs(p, 23);
  const StoredRun early{0, 0, 16, 0}, late{0, 16, 24, 16}, other_seq{1, 0, 40, 40}, far{0, 30, 10, 30};
  struct Case {
    Mask mask;
    StoredRun queries, keys;
  };
  const Case cases[] = {
      {{MaskKind::causal, 0}, early, late},          // every key in the future
      {{MaskKind::full, 0}, early, other_seq},       // another sequence
      {{MaskKind::sliding_window, 4}, far, early},   // every key out of the window
      {{MaskKind::sliding_window, 1}, early, late},  // the smallest window, still nothing
  };
  for (const Case& c : cases) {
    AttentionState state(in.tokens(), p.q_heads, p.v_dim);
    const AttentionParams params{c.mask, {0, 0, 2}, {}};
    attend({in.q.view(), {&c.queries, 1}}, {in.k.view(), in.v.view(), {&c.keys, 1}}, params, state);
    EXPECT_TRUE(all_empty(state)) << to_string(c.mask);
    reference_attention({in.q.view(), {&c.queries, 1}}, {in.k.view(), in.v.view(), {&c.keys, 1}}, params, state);
    EXPECT_TRUE(all_empty(state)) << "reference, " << to_string(c.mask);

    std::vector<std::byte> stored(state.out().size() * 2);
    store_output(state, DType::bf16, stored.data(), static_cast<int64_t>(stored.size()));
    EXPECT_TRUE(std::all_of(stored.begin(), stored.end(), [](std::byte b) { return b == std::byte{0}; }));
  }
}

// An empty step (nothing visible) merged before or after a visible one changes nothing.
TEST(AttendCpu, EmptyStepsMergeAsNoOps) {
  Problem p;
  p.seq_lens = {64};
  p.mask = {MaskKind::causal, 0};
  const Inputs in = make_inputs(p, 29);
  const StoredRun early{0, 0, 32, 0}, late{0, 32, 32, 32};
  const KvBlock past{in.k.view(), in.v.view(), {&early, 1}}, future{in.k.view(), in.v.view(), {&late, 1}};
  const Queries queries{in.q.view(), {&early, 1}};
  AttentionState want(in.tokens(), p.q_heads, p.v_dim), got(in.tokens(), p.q_heads, p.v_dim);
  reference_attention(queries, past, p.params(), want);
  attend(queries, future, p.params(), got);
  attend(queries, past, p.params(), got);
  attend(queries, future, p.params(), got);
  EXPECT_TRUE(states_near(got, want, kStateTol));
}

// Scores far beyond exp's fp32 range (|scale q.k| up to ~2e3; exp overflows at 88) stay finite
// because the softmax subtracts the row maximum. Scores that large carry fp32 rounding of ~1e-4
// (terms of up to 256 summed over D = 32), which exp passes on as relative weight error of the
// same size (~2e-5 seen), hence the looser tolerance.
TEST(AttendCpu, HugeLogitsStayFiniteAndMatchReference) {
  Problem p;
  p.seq_lens = {100};
  p.amplitude = 8;
  p.scale = 4.0f;
  for (const Mask& mask : masks_for(100)) {
    p.mask = mask;
    EXPECT_TRUE(matches_reference(p, 31, 1e-4f));
  }
}

// ---- the reference itself -----------------------------------------------------------------------

TEST(ReferenceAttention, OneVisibleKeyGivesItsValueAndScore) {
  Problem p;
  p.seq_lens = {8};
  p.q_heads = p.kv_heads = 1;
  p.head_dim = 4;
  p.v_dim = 3;
  const Inputs in = make_inputs(p, 37);
  // Sliding window 1: query i sees exactly key i.
  const AttentionParams params{{MaskKind::sliding_window, 1}, {}, 0.5f};
  for (const AttentionState& s : {reference(in, params), blocked(in, params)}) {
    std::vector<float> q(4), k(4), v(3);
    for (int64_t i = 0; i < 8; ++i) {
      to_float(in.q.bytes.data() + i * in.q.row_bytes(), DType::fp32, q.data(), 4);
      to_float(in.k.bytes.data() + i * in.k.row_bytes(), DType::fp32, k.data(), 4);
      to_float(in.v.bytes.data() + i * in.v.row_bytes(), DType::fp32, v.data(), 3);
      const double score = 0.5 * std::inner_product(q.begin(), q.end(), k.begin(), 0.0);
      EXPECT_NEAR(s.lse_at(i, 0), score, 1e-6);
      for (int d = 0; d < 3; ++d) EXPECT_NEAR(s.out_row(i, 0)[d], v[static_cast<size_t>(d)], 1e-7);
    }
  }
}

TEST(ReferenceAttention, EqualScoresAverageTheValues) {
  // Q = 0 makes every score 0: O is the mean of the visible V rows, LSE = log(visible keys).
  Problem p;
  p.seq_lens = {6};
  p.q_heads = p.kv_heads = 1;
  p.head_dim = 2;
  p.v_dim = 1;
  p.mask = {MaskKind::causal, 0};
  Inputs in = make_inputs(p, 41);
  std::fill(in.q.bytes.begin(), in.q.bytes.end(), std::byte{0});
  const std::vector<float> values{1, 2, 3, 4, 5, 6};
  from_float(values.data(), DType::fp32, in.v.bytes.data(), 6);
  const AttentionState s = reference(in, p.params());
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_NEAR(s.lse_at(i, 0), std::log(static_cast<double>(i + 1)), 1e-6);
    EXPECT_NEAR(s.out_row(i, 0)[0], (i + 2) / 2.0, 1e-6);
  }
}

// ---- head maps and runs from the Layout ---------------------------------------------------------

TEST(HeadMap, EveryBalancedUlyssesRankReadsOnlyKvHeadsItHolds) {
  for (int64_t world = 1; world <= 12; ++world) {
    LayoutSpec spec;
    spec.shape.seq_lens = {240};
    spec.shape.q_heads = 12;
    spec.shape.kv_heads = 4;
    spec.shape.head_dim = spec.shape.v_head_dim = 16;
    spec.cluster.world = spec.cluster.ranks_per_node = world;
    spec.choice = {Strategy::uaa};
    const Layout layout = Layout::build(spec);
    for (const RankLayout& rank : layout.ranks()) {
      const HeadMap map = HeadMap::of_rank(rank, layout.shape());
      for (int64_t h = 0; h < rank.q_heads.count(); ++h) {
        EXPECT_GE(map.kv_of(h), 0) << "world " << world << " rank " << rank.rank;
        EXPECT_LT(map.kv_of(h), rank.kv_heads.count()) << "world " << world << " rank " << rank.rank;
      }
    }
  }
}

TEST(StoredRuns, OffsetsFollowStorageOrderIncludingPadding) {
  const TokenRun runs[] = {{0, 10, 5, 8}, {1, 0, 3, 3}, {0, 40, 2, 2}};
  const std::vector<StoredRun> stored = stored_runs(runs);
  ASSERT_EQ(stored.size(), 3u);
  EXPECT_EQ(stored[0].offset, 0);
  EXPECT_EQ(stored[1].offset, 8);
  EXPECT_EQ(stored[2].offset, 11);
  EXPECT_EQ(stored[2].begin, 40);
  const int64_t lens[] = {4, 0, 6};
  const std::vector<StoredRun> packed = packed_runs(lens);
  EXPECT_EQ(packed[2].offset, 4);
  EXPECT_EQ(packed[2].seq, 2);
}

// ---- user errors --------------------------------------------------------------------------------

void expect_error_naming(const std::function<void()>& call, const std::string& text) {
  try {
    call();
    ADD_FAILURE() << "no Error; expected one naming '" << text << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(AttendCpu, BadArgumentsThrowErrorNamingTheValue) {
  Problem p;
  p.seq_lens = {10};
  const Inputs in = make_inputs(p, 43);
  const Queries queries{in.q.view(), in.runs};
  const KvBlock block{in.k.view(), in.v.view(), in.runs};
  AttentionState state(in.tokens(), p.q_heads, p.v_dim);

  KvBlock narrow_k = block;
  narrow_k.k.dim = 16;
  expect_error_naming([&] { attend(queries, narrow_k, p.params(), state); }, "K head dim 16");
  KvBlock short_v = block;
  short_v.v.tokens = 9;
  expect_error_naming([&] { attend(queries, short_v, p.params(), state); }, "V has 9 tokens");
  // Global q heads 3..4 with group 1 read kv heads 3..4, but the rank holds only global kv head 0.
  expect_error_naming([&] { attend(queries, block, {p.mask, {3, 0, 1}, {}}, state); }, "local kv head 3");
  expect_error_naming([&] { attend(queries, block, {p.mask, {0, 0, 0}, {}}, state); }, "group_size=0");
  const StoredRun beyond{0, 0, 8, 5};
  expect_error_naming([&] { attend({in.q.view(), {&beyond, 1}}, block, p.params(), state); }, "tensor of 10 tokens");
  AttentionState wrong_state(in.tokens(), p.q_heads, p.v_dim + 1);
  expect_error_naming([&] { attend(queries, block, p.params(), wrong_state); }, "33 dims");
  expect_error_naming(
      [&] {
        attend(queries, block, {{MaskKind::sliding_window, 0}, {0, 0, 2}, {}}, state);
      },
      "sliding window 0");
  std::vector<std::byte> small(10);
  expect_error_naming([&] { store_output(state, DType::fp16, small.data(), 10); }, "10 bytes");
  expect_error_naming([&] { reference_attention(queries, narrow_k, p.params(), state); }, "K head dim 16");
}

// ---- dtype conversion ---------------------------------------------------------------------------

TEST(DtypeConvert, RoundsToNearestEvenAndWidensExactly) {
  // 1 + 2^-8 lies halfway between the bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
  // 1 + 3*2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties go to even (1 + 2^-6).
  const float in[] = {1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), -2.5f, 65504.0f};
  const float bf16_want[] = {1.0f, 1.0f + std::ldexp(1.0f, -6), -2.5f, 65536.0f};
  std::vector<std::byte> narrow(8);
  std::vector<float> back(4);
  from_float(in, DType::bf16, narrow.data(), 4);
  to_float(narrow.data(), DType::bf16, back.data(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(back[i], bf16_want[i]) << i;
  from_float(in, DType::fp16, narrow.data(), 4);
  to_float(narrow.data(), DType::fp16, back.data(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(back[i], in[i]) << i;  // 11-bit significand: all exact
}

// ---- instruction-set variants -------------------------------------------------------------------

// ctest runs this program once more per instruction set with CPTUNE_CPU_ISA set
// (tests/CMakeLists.txt), so every test above runs on each variant; one this processor cannot
// run is skipped there, not failed.
class ForcedCpuIsa : public ::testing::Environment {
 public:
  void SetUp() override {
    const char* forced = std::getenv("CPTUNE_CPU_ISA");
    if (forced != nullptr && *forced != '\0' && !cpu_can_run(parse_cpu_isa(forced)))
      GTEST_SKIP() << "CPTUNE_CPU_ISA=" << forced << ": this processor cannot run it";
  }
};
[[maybe_unused]] const auto* const forced_cpu_isa = ::testing::AddGlobalTestEnvironment(new ForcedCpuIsa);

TEST(CpuIsa, ForcedVariantIsTheActiveOneAndDefaultIsTheWidest) {
  const char* forced = std::getenv("CPTUNE_CPU_ISA");
  const CpuIsa want = forced != nullptr && *forced != '\0' ? parse_cpu_isa(forced) : runnable_cpu_isas().back();
  EXPECT_EQ(active_cpu_isa(), want);
  EXPECT_EQ(active_cpu_kernels().isa, want);
  EXPECT_EQ(runnable_cpu_isas().front(), CpuIsa::baseline);
}

AttentionState attended_with(const CpuKernels& kernels, const Inputs& in, const AttentionParams& params) {
  AttentionState state(in.q.tokens, in.q.heads, in.v.dim);
  kernels.attend({in.q.view(), in.runs}, {in.k.view(), in.v.view(), in.runs}, params, state);
  return state;
}

// Every variant this processor runs against the baseline variant and the double reference, over
// masks, dtypes, GQA and lengths across tile edges. FMA and wider reductions change fp32 rounding
// only: states agree within the tests' state tolerance.
TEST(CpuIsa, EveryRunnableVariantMatchesBaselineAndReference) {
  const CpuKernels& baseline = cpu_kernels(CpuIsa::baseline);
  for (CpuIsa isa : runnable_cpu_isas())
    for (DType dtype : {DType::fp32, DType::bf16, DType::fp16})
      for (int64_t len : {1, 63, 65, 200})
        for (const Mask& mask : masks_for(len)) {
          Problem p;
          p.seq_lens = {len, 37};
          p.q_heads = 4;
          p.kv_heads = 2;
          p.head_dim = 64;
          p.v_dim = 40;
          p.dtype = dtype;
          p.mask = mask;
          const Inputs in = make_inputs(p, 300 + static_cast<uint64_t>(len));
          const AttentionState got = attended_with(cpu_kernels(isa), in, p.params());
          EXPECT_TRUE(states_near(got, attended_with(baseline, in, p.params()), kStateTol))
              << to_string(isa) << " vs baseline " << p.describe();
          EXPECT_TRUE(states_near(got, reference(in, p.params()), kStateTol))
              << to_string(isa) << " vs reference " << p.describe();
        }
}

// Widening is exact and narrowing rounds to nearest even on every variant, so the copies agree
// bit for bit with the baseline's, ties, subnormals, infinities and out-of-range values included.
TEST(CpuIsa, EveryRunnableVariantCopiesDtypesBitForBitLikeBaseline) {
  std::mt19937_64 rng(9);
  std::vector<float> values{0.0f, -0.0f, 1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8),
                            std::ldexp(1.0f, -130), std::ldexp(1.0f, -20), 65504.0f, 65520.0f, 1e30f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  std::uniform_int_distribution<uint32_t> bits(0, 0x7f7fffffu);  // every finite magnitude
  while (values.size() < 1000) {
    const uint32_t b = bits(rng) | (values.size() % 2 ? 0x80000000u : 0u);
    float x;
    std::memcpy(&x, &b, sizeof x);
    values.push_back(x);
  }
  const auto elems = static_cast<int64_t>(values.size());
  const CpuKernels& baseline = cpu_kernels(CpuIsa::baseline);
  for (CpuIsa isa : runnable_cpu_isas())
    for (DType dtype : {DType::bf16, DType::fp16, DType::fp32}) {
      const size_t bytes = values.size() * static_cast<size_t>(dtype_bytes(dtype));
      std::vector<std::byte> got(bytes), want(bytes);
      cpu_kernels(isa).from_float(values.data(), dtype, got.data(), elems);
      baseline.from_float(values.data(), dtype, want.data(), elems);
      EXPECT_EQ(std::memcmp(got.data(), want.data(), bytes), 0) << to_string(isa) << " narrowing to " << to_string(dtype);
      std::vector<float> widened(values.size()), widened_want(values.size());
      cpu_kernels(isa).to_float(want.data(), dtype, widened.data(), elems);
      baseline.to_float(want.data(), dtype, widened_want.data(), elems);
      EXPECT_EQ(std::memcmp(widened.data(), widened_want.data(), values.size() * sizeof(float)), 0)
          << to_string(isa) << " widening " << to_string(dtype);
    }
}

TEST(CpuIsa, UnknownOrUnrunnableVariantIsAnErrorNamingIt) {
  for (CpuIsa isa : {CpuIsa::baseline, CpuIsa::v3, CpuIsa::v4}) EXPECT_EQ(parse_cpu_isa(to_string(isa)), isa);
  expect_error_naming([] { parse_cpu_isa("avx9"); }, "avx9");
  expect_error_naming([] { parse_cpu_isa("V3"); }, "V3");
  for (CpuIsa isa : {CpuIsa::v3, CpuIsa::v4})
    if (!cpu_can_run(isa)) expect_error_naming([&] { cpu_kernels(isa); }, std::string(to_string(isa)));
}

}  // namespace
}  // namespace cptune::backends
