// Specification of the CUDA attention kernel. On the host (runs everywhere): the tile plan
// covers every visible (query, key) pair of every sequence exactly once and nothing across
// sequences, and the launch shape refuses what the kernel cannot run. On a GPU (skipped without
// one): the kernel equals the CPU reference for every mask, GQA head map, packing and dtype,
// and K,V blocks merge by LSE in any order, like the ring.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/cuda/attention_cuda_fragments.h"
#include "backends/kernels/attention_tiles.h"
#include "backends/kernels/dtype_convert.h"
#include "core/error.h"
#include "core/layout.h"

#if CPTUNE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backends/kernels/cuda/attention_cuda.h"
#endif

namespace cptune::backends {
namespace {

// ---- the tile plan (host) -----------------------------------------------------------------------

// Query runs and K,V runs of a few sequences, cut into pieces and stored in shuffled order at
// scattered offsets, as a rank's shard and a ring block are.
struct RunSet {
  std::vector<StoredRun> q, kv;
  std::vector<int64_t> lens;  // by sequence
};

RunSet random_runs(std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> length(1, 200), pieces(1, 3), gap(0, 5);
  const int64_t sequences = std::uniform_int_distribution<int64_t>(1, 3)(rng);
  RunSet out;
  int64_t q_offset = 0, kv_offset = 0;
  for (int32_t seq = 0; seq < sequences; ++seq) {
    const int64_t len = length(rng);
    out.lens.push_back(len);
    for (std::vector<StoredRun>* runs : {&out.q, &out.kv}) {
      int64_t& offset = runs == &out.q ? q_offset : kv_offset;
      const int64_t n = std::min(len, pieces(rng));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t begin = split_begin(len, n, i), count = split_size(len, n, i);
        runs->push_back({seq, begin, count, offset});
        offset += count + gap(rng);
      }
    }
  }
  std::shuffle(out.q.begin(), out.q.end(), rng);
  std::shuffle(out.kv.begin(), out.kv.end(), rng);
  return out;
}

// (query row, key row) pairs a plan computes, each with how often; and the pairs it must.
using PairCount = std::map<std::pair<int64_t, int64_t>, int>;

// The kernel's rule for a pair in a segment (attention_cuda.cu, visible()): a block mask's
// segment shows every key, or (causal) those at or before the row; other masks by their window.
bool kernel_sees(const Mask& mask, const KeySegment& seg, int64_t i, int64_t j) {
  if (mask.kind == MaskKind::blocks) return seg.causal == 0 || j <= i;
  return mask.sees(i, j, kFarPosition);
}

PairCount pairs_in_plan(const TilePlan& plan, const std::vector<StoredRun>& q_runs,
                        const std::vector<StoredRun>& kv_runs, const Mask& mask,
                        std::span<const int64_t> lens = {}) {
  auto run_of = [](const std::vector<StoredRun>& runs, int64_t row) -> const StoredRun* {
    for (const StoredRun& r : runs)
      if (r.offset <= row && row < r.offset + r.count) return &r;
    return nullptr;
  };
  PairCount out;
  for (const QueryTileWork& tile : plan.tiles)
    for (int64_t i = 0; i < tile.rows; ++i)
      for (int32_t s = tile.first_segment; s < tile.first_segment + tile.segments; ++s) {
        const KeySegment& seg = plan.segments[static_cast<size_t>(s)];
        for (int64_t j = 0; j < seg.count; ++j) {
          const StoredRun* q = run_of(q_runs, tile.row + i);
          const StoredRun* k = run_of(kv_runs, seg.row + j);
          if (q == nullptr || k == nullptr || q->seq != k->seq) {
            ++out[{-1, -1}];  // a row outside every run, or a pair across sequences
            continue;
          }
          // The kernel masks by these positions: they must be the runs' own.
          if (tile.pos + i != q->begin + (tile.row + i - q->offset) || seg.pos + j != k->begin + (seg.row + j - k->offset))
            ++out[{-2, -2}];
          if (!kernel_sees(mask, seg, tile.pos + i, seg.pos + j)) continue;
          if (!mask.sees(tile.pos + i, seg.pos + j, seq_len_of(lens, q->seq)))
            ++out[{-3, -3}];  // computed, but the mask hides it
          else
            ++out[{tile.row + i, seg.row + j}];
        }
      }
  return out;
}

PairCount visible_pairs(const std::vector<StoredRun>& q_runs, const std::vector<StoredRun>& kv_runs,
                        const Mask& mask, std::span<const int64_t> lens = {}) {
  PairCount out;
  for (const StoredRun& q : q_runs)
    for (const StoredRun& k : kv_runs)
      if (q.seq == k.seq)
        for (int64_t i = 0; i < q.count; ++i)
          for (int64_t j = 0; j < k.count; ++j)
            if (mask.sees(q.begin + i, k.begin + j, seq_len_of(lens, q.seq))) ++out[{q.offset + i, k.offset + j}];
  return out;
}

TEST(CudaTilePlan, CoversEveryVisiblePairOnceAndNothingAcrossSequences) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    const RunSet runs = random_runs(rng);
    for (const Mask& mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 1},
                             Mask{MaskKind::sliding_window, 37}, Mask{MaskKind::sliding_window, 200}}) {
      const TilePlan plan = plan_attention_tiles(runs.q, runs.kv, mask);
      EXPECT_EQ(pairs_in_plan(plan, runs.q, runs.kv, mask), visible_pairs(runs.q, runs.kv, mask))
          << "trial " << trial << " mask " << to_string(mask);
    }
  }
}

BlockTable random_table(std::mt19937_64& rng, int64_t n) {
  std::vector<BlockKind> cells(static_cast<size_t>(n * n));
  for (auto& c : cells) c = static_cast<BlockKind>(rng() % 3);
  return BlockTable(n, std::move(cells));
}

// Block masks: random tables of 1 to 16 blocks over random runs (blocks shorter and longer than
// a tile): the pairs the kernel computes, by each segment's causal flag, are exactly the visible
// ones, once each; every tile's rows lie in one query block, every segment's keys in one key block.
TEST(CudaTilePlan, CoversEveryVisiblePairOfRandomBlockTablesOnce) {
  std::mt19937_64 rng(16);
  for (int trial = 0; trial < 80; ++trial) {
    const RunSet runs = random_runs(rng);
    const Mask mask = block_mask(random_table(rng, 1 + static_cast<int64_t>(rng() % 16)));
    const TilePlan plan = plan_attention_tiles(runs.q, runs.kv, mask, runs.lens);
    EXPECT_EQ(pairs_in_plan(plan, runs.q, runs.kv, mask, runs.lens), visible_pairs(runs.q, runs.kv, mask, runs.lens))
        << "trial " << trial << " mask " << to_string(mask);
    const int64_t n = mask.blocks->n();
    for (const QueryTileWork& tile : plan.tiles) {
      // The tile's sequence is the one whose run holds its first row.
      int32_t seq = -1;
      for (const StoredRun& q : runs.q)
        if (q.offset <= tile.row && tile.row < q.offset + q.count) seq = q.seq;
      ASSERT_GE(seq, 0);
      const int64_t len = runs.lens[static_cast<size_t>(seq)];
      EXPECT_EQ(block_of(len, n, tile.pos), block_of(len, n, tile.pos + tile.rows - 1)) << "trial " << trial;
      for (int32_t s = tile.first_segment; s < tile.first_segment + tile.segments; ++s) {
        const KeySegment& seg = plan.segments[static_cast<size_t>(s)];
        EXPECT_EQ(block_of(len, n, seg.pos), block_of(len, n, seg.pos + seg.count - 1)) << "trial " << trial;
        EXPECT_NE(mask.blocks->at(block_of(len, n, tile.pos), block_of(len, n, seg.pos)), BlockKind::empty);
      }
    }
  }
}

// EMPTY cells cost nothing: under star:8 (C on the diagonal, F in column 0) at 8 x 128 tokens a
// tile of block b >= 1 visits 2 key tiles of block 0 and its own diagonal's keys only.
TEST(CudaTilePlan, BlockMasksVisitOnlyTheirCells) {
  const std::vector<int64_t> lens{1024};
  const std::vector<StoredRun> runs = packed_runs(lens);
  const Mask mask = parse_mask("star:8");
  const TilePlan plan = plan_attention_tiles(runs, runs, mask, lens);
  EXPECT_EQ(plan.tiles.size(), 8u);
  int64_t key_tiles = 0;
  for (const QueryTileWork& tile : plan.tiles) {
    EXPECT_EQ(tile.rows, 128);
    EXPECT_EQ(tile.segments, tile.pos == 0 ? 1 : 2);
    key_tiles += tile.key_tiles;
  }
  EXPECT_EQ(key_tiles, 2 + 7 * (2 + 2));
  EXPECT_EQ(plan.key_tiles, key_tiles);
  // Only the diagonal needs the per-element test; column 0 of a later block is wholly FULL.
  for (const QueryTileWork& tile : plan.tiles)
    for (int32_t s = tile.first_segment; s < tile.first_segment + tile.segments; ++s) {
      const KeySegment& seg = plan.segments[static_cast<size_t>(s)];
      EXPECT_EQ(seg.causal, seg.pos == tile.pos ? 1 : 0) << "tile at " << tile.pos << ", keys at " << seg.pos;
    }
}

TEST(CudaTilePlan, TilesHoldAtMostOneBlockOfRowsOfOneRunAndCostliestComeFirst) {
  const std::vector<int64_t> lens{1000, 129, 5};
  const std::vector<StoredRun> runs = packed_runs(lens);
  const TilePlan plan = plan_attention_tiles(runs, runs, {MaskKind::causal, 0});
  int64_t rows = 0, key_tiles = 0;
  for (size_t i = 0; i < plan.tiles.size(); ++i) {
    const QueryTileWork& t = plan.tiles[i];
    EXPECT_GE(t.rows, 1);
    EXPECT_LE(t.rows, kCudaQueryTile);
    if (i > 0) {
      EXPECT_GE(plan.tiles[i - 1].key_tiles, t.key_tiles);
    }
    rows += t.rows;
    key_tiles += t.key_tiles;
  }
  EXPECT_EQ(rows, 1000 + 129 + 5);  // causal: every row sees itself
  EXPECT_EQ(key_tiles, plan.key_tiles);
  // 1000 rows: 8 tiles; the last (rows 896..999) sees keys 0..999: 16 key tiles of 64.
  EXPECT_EQ(plan.tiles.front().key_tiles, 16);
  EXPECT_EQ(plan.tiles.size(), 8u + 2u + 1u);
}

TEST(CudaTilePlan, SkipsTilesAndKeysTheMaskRemoves) {
  // Keys 0..99 of the block, queries 300..427 of the same sequence: a window of 64 sees none.
  const std::vector<StoredRun> q{{0, 300, 128, 0}}, kv{{0, 0, 100, 0}};
  EXPECT_TRUE(plan_attention_tiles(q, kv, {MaskKind::sliding_window, 64}).tiles.empty());
  // Causal: query positions 0..127 against keys 200..299 of the same sequence see nothing.
  const std::vector<StoredRun> early{{0, 0, 128, 0}}, late{{0, 200, 100, 0}};
  EXPECT_TRUE(plan_attention_tiles(early, late, {MaskKind::causal, 0}).tiles.empty());
  // Another sequence is never visible.
  const std::vector<StoredRun> other{{1, 0, 128, 0}};
  EXPECT_TRUE(plan_attention_tiles(q, other, {MaskKind::full, 0}).tiles.empty());
}

TEST(CudaAttentionLaunch, PicksTheHeadDimBucketAndSharedMemory) {
  const std::vector<int64_t> lens{300};
  const std::vector<StoredRun> runs = packed_runs(lens);
  const TilePlan plan = plan_attention_tiles(runs, runs, {MaskKind::full, 0});
  const AttentionLaunch small = attention_launch(plan, 6, 16, 8, DType::bf16);
  EXPECT_EQ(small.dim_bucket, 64);
  EXPECT_EQ(small.tiles, 3);
  EXPECT_EQ(small.heads, 6);
  EXPECT_EQ(small.threads, 256);
  EXPECT_EQ(small.smem_bytes, (128 + 2 * 64) * 64 * 2);
  const AttentionLaunch large = attention_launch(plan, 1, 128, 72, DType::fp16);
  EXPECT_EQ(large.dim_bucket, 128);
  EXPECT_EQ(large.smem_bytes, 64 * 1024);
}

TEST(CudaAttentionLaunch, RefusesWhatTheKernelCannotRunWithAClearError) {
  const std::vector<int64_t> lens{64};
  const std::vector<StoredRun> runs = packed_runs(lens);
  const TilePlan plan = plan_attention_tiles(runs, runs, {MaskKind::full, 0});
  auto message = [&](int64_t heads, int64_t d, int64_t dv, DType dtype) -> std::string {
    try {
      attention_launch(plan, heads, d, dv, dtype);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message(2, 64, 64, DType::fp32).find("bf16 or fp16"), std::string::npos);
  EXPECT_NE(message(2, 12, 12, DType::bf16).find("multiples of 8"), std::string::npos);
  EXPECT_NE(message(2, 64, 256, DType::bf16).find("8..128"), std::string::npos);
  EXPECT_NE(message(70000, 64, 64, DType::bf16).find("query heads"), std::string::npos);
}

// ---- the kernel's lane arithmetic, replayed on the host ----------------------------------------
//
// An emulator of one thread block's shared memory and of the PTX instructions the kernel uses,
// written from the PTX ISA definitions: cp.async of 16 bytes, ldmatrix.m8n8.x4 (lanes 8m..8m+7
// address the rows of matrix m; lane t gets row t/4, columns 2(t%4) and 2(t%4)+1, or with
// .trans column t/4 of rows 2(t%4) and 2(t%4)+1), and mma.m16n8k16 (A register r of lane t:
// row t/4 + 8(r%2), columns 2(t%4) + 8(r/2) + {0,1}; B register r: k = 2(t%4) + 8r + {0,1},
// column t/4; C element e: row t/4 + 8(e/2), column 2(t%4) + e%2). The kernel's addressing
// (fragments::*) drives it; small integer values make every product and sum exact.

namespace frag = fragments;
constexpr int kBlockThreads = 256;
using Lanes = std::array<uint32_t, 32>;        // one address per lane
using Regs = std::array<std::array<std::pair<float, float>, 4>, 32>;  // 4 registers per lane

class SharedMemory {
 public:
  explicit SharedMemory(int bytes) : values_(static_cast<size_t>(bytes / 2), std::nanf("")) {}
  float at(uint32_t byte) const { return values_.at(byte / 2); }
  void set(uint32_t byte, float v) { values_.at(byte / 2) = v; }

  // load_tile(): `rows` x `dim` rows of src into the tile at `base`, zeros past valid_rows and
  // used_dim. Returns false when a chunk is written twice or never.
  bool load(uint32_t base, const std::vector<std::vector<float>>& src, int rows, int dim, int valid_rows,
            int used_dim) {
    std::vector<int> writes(static_cast<size_t>(rows * dim / 8), 0);
    const int step_rows = frag::load_row_step(kBlockThreads, dim);
    for (int thread = 0; thread < kBlockThreads; ++thread) {
      const frag::Spot first = frag::load_spot(thread, dim);
      const uint32_t dst = base + 2 * static_cast<uint32_t>(frag::swizzled(first.row, first.chunk, dim));
      for (int step = 0; step < rows / step_rows; ++step) {
        const int row = first.row + step * step_rows;
        const bool valid = row < valid_rows && first.chunk * 8 < used_dim;
        for (int i = 0; i < 8; ++i)
          set(dst + static_cast<uint32_t>(step * step_rows * dim * 2 + 2 * i),
              valid ? src[static_cast<size_t>(row)][static_cast<size_t>(first.chunk * 8 + i)] : 0.0f);
        ++writes[static_cast<size_t>(row * (dim / 8) + first.chunk)];
      }
    }
    return std::all_of(writes.begin(), writes.end(), [](int w) { return w == 1; });
  }

  Regs ldmatrix_x4(const Lanes& address, bool trans) const {
    Regs out{};
    for (int t = 0; t < 32; ++t)
      for (int m = 0; m < 4; ++m) {
        if (trans) {
          const uint32_t row0 = address[static_cast<size_t>(8 * m + 2 * (t % 4))];
          const uint32_t row1 = address[static_cast<size_t>(8 * m + 2 * (t % 4) + 1)];
          out[t][m] = {at(row0 + 2 * static_cast<uint32_t>(t / 4)), at(row1 + 2 * static_cast<uint32_t>(t / 4))};
        } else {
          const uint32_t row = address[static_cast<size_t>(8 * m + t / 4)];
          out[t][m] = {at(row + 4 * static_cast<uint32_t>(t % 4)), at(row + 4 * static_cast<uint32_t>(t % 4) + 2)};
        }
      }
    return out;
  }

 private:
  std::vector<float> values_;
};

// d += a b for one m16n8k16 tile; b holds the two registers b_regs[0..1] of each lane.
void mma(std::array<std::array<float, 4>, 32>& d, const Regs& a, const std::array<std::array<std::pair<float, float>, 2>, 32>& b) {
  float A[16][16], B[16][8];
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, c = 2 * (t % 4);
    for (int r = 0; r < 4; ++r) {
      A[g + 8 * (r % 2)][c + 8 * (r / 2)] = a[t][r].first;
      A[g + 8 * (r % 2)][c + 8 * (r / 2) + 1] = a[t][r].second;
    }
    for (int r = 0; r < 2; ++r) {
      B[c + 8 * r][g] = b[t][r].first;
      B[c + 8 * r + 1][g] = b[t][r].second;
    }
  }
  for (int t = 0; t < 32; ++t)
    for (int e = 0; e < 4; ++e) {
      const int row = t / 4 + 8 * (e / 2), col = 2 * (t % 4) + e % 2;
      for (int k = 0; k < 16; ++k) d[t][e] += A[row][k] * B[k][col];
    }
}

std::array<std::array<std::pair<float, float>, 2>, 32> pick(const Regs& regs, int first) {
  std::array<std::array<std::pair<float, float>, 2>, 32> out{};
  for (int t = 0; t < 32; ++t) out[t] = {regs[t][first], regs[t][first + 1]};
  return out;
}

std::vector<std::vector<float>> small_integers(std::mt19937_64& rng, int rows, int cols) {
  std::uniform_int_distribution<int> value(-3, 3);
  std::vector<std::vector<float>> out(static_cast<size_t>(rows), std::vector<float>(static_cast<size_t>(cols)));
  for (auto& row : out)
    for (float& x : row) x = static_cast<float>(value(rng));
  return out;
}

template <typename F>
Lanes lane_addresses(F address) {
  Lanes out{};
  for (int lane = 0; lane < 32; ++lane) out[static_cast<size_t>(lane)] = address(lane);
  return out;
}

// S = Q K^T the kernel's way (scores()): every warp, every lane, every accumulator element.
::testing::AssertionResult scores_replay(int dim, int head_dim, int q_rows, int keys, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto q = small_integers(rng, 128, dim), k = small_integers(rng, 64, dim);
  SharedMemory smem((128 + 64) * dim * 2);
  const uint32_t q_tile = 0, k_tile = 128 * static_cast<uint32_t>(dim) * 2;
  if (!smem.load(q_tile, q, 128, dim, q_rows, head_dim) || !smem.load(k_tile, k, 64, dim, keys, head_dim))
    return ::testing::AssertionFailure() << "load_tile writes some chunk twice or never";
  for (int warp = 0; warp < 8; ++warp) {
    std::vector<std::array<std::array<float, 4>, 32>> s(8, std::array<std::array<float, 4>, 32>{});
    const Lanes q_base = lane_addresses(
        [&](int lane) { return q_tile + 2 * uint32_t(frag::swizzled(frag::q_spot(warp, lane).row, frag::q_spot(warp, lane).chunk, dim)); });
    const Lanes k_base = lane_addresses(
        [&](int lane) { return k_tile + 2 * uint32_t(frag::swizzled(frag::k_spot(lane).row, frag::k_spot(lane).chunk, dim)); });
    for (int ks = 0; ks < dim / 16 && ks * 16 < head_dim; ++ks) {
      const Regs a = smem.ldmatrix_x4(lane_addresses([&](int l) { return frag::at_step(q_base[l], ks); }), false);
      for (int np = 0; np < 4; ++np) {
        const Regs b = smem.ldmatrix_x4(
            lane_addresses([&](int l) { return frag::at_step(k_base[l] + uint32_t(np * 16 * dim * 2), ks); }), false);
        mma(s[2 * np], a, pick(b, 0));
        mma(s[2 * np + 1], a, pick(b, 2));
      }
    }
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < 8; ++j)
        for (int e = 0; e < 4; ++e) {
          const int row = warp * 16 + frag::acc_row(lane, e), key = j * 8 + frag::acc_col(lane, e);
          float want = 0;
          if (row < q_rows && key < keys)
            for (int d = 0; d < head_dim; ++d) want += q[row][d] * k[key][d];
          if (s[j][lane][e] != want)
            return ::testing::AssertionFailure() << "dim " << dim << " warp " << warp << " lane " << lane << " row "
                                                 << row << " key " << key << ": " << s[j][lane][e] << " vs " << want;
        }
  }
  return ::testing::AssertionSuccess();
}

// O = P V the kernel's way (accumulate_pv()): P from the score registers, V through .trans.
::testing::AssertionResult pv_replay(int dim, int v_dim, int keys, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto p = small_integers(rng, 16, 64), v = small_integers(rng, 64, dim);
  SharedMemory smem(64 * dim * 2);
  if (!smem.load(0, v, 64, dim, keys, v_dim)) return ::testing::AssertionFailure() << "load_tile coverage";
  std::array<std::array<std::array<float, 4>, 32>, 8> s{};  // scores as the kernel holds them
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 8; ++j)
      for (int e = 0; e < 4; ++e) s[j][lane][e] = p[frag::acc_row(lane, e)][j * 8 + frag::acc_col(lane, e)];
  std::vector<std::array<std::array<float, 4>, 32>> o(static_cast<size_t>(dim / 8), std::array<std::array<float, 4>, 32>{});
  const Lanes v_base =
      lane_addresses([&](int lane) { return 2 * uint32_t(frag::swizzled(frag::v_spot(lane).row, frag::v_spot(lane).chunk, dim)); });
  for (int kk = 0; kk < 4; ++kk) {
    Regs a{};
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r)
        a[lane][r] = {s[frag::p_tile(kk, r)][lane][frag::p_elem(r)], s[frag::p_tile(kk, r)][lane][frag::p_elem(r) + 1]};
    for (int dp = 0; dp < dim / 16 && dp * 16 < v_dim; ++dp) {
      const Regs b = smem.ldmatrix_x4(
          lane_addresses([&](int l) { return frag::at_step(v_base[l] + uint32_t(kk * 16 * dim * 2), dp); }), true);
      mma(o[2 * dp], a, pick(b, 0));
      mma(o[2 * dp + 1], a, pick(b, 2));
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int d = 0; d < dim / 8 && d * 8 < v_dim; ++d)
      for (int e = 0; e < 4; ++e) {
        const int row = frag::acc_row(lane, e), col = d * 8 + frag::acc_col(lane, e);
        float want = 0;
        for (int key = 0; key < keys; ++key) want += p[row][key] * v[key][col];
        if (o[d][lane][e] != want)
          return ::testing::AssertionFailure() << "dim " << dim << " lane " << lane << " row " << row << " col " << col
                                               << ": " << o[d][lane][e] << " vs " << want;
      }
  return ::testing::AssertionSuccess();
}

TEST(CudaFragments, StepAddressesAreTheSwizzledChunks) {
  for (int dim : {64, 128})
    for (int row = 0; row < 128; ++row)
      for (int c = 0; c < 2; ++c)
        for (int step = 0; step < dim / 16; ++step)
          EXPECT_EQ(frag::at_step(2 * uint32_t(frag::swizzled(row, c, dim)), step),
                    2 * uint32_t(frag::swizzled(row, 2 * step + c, dim)))
              << "dim " << dim << " row " << row << " chunk " << 2 * step + c;
}

TEST(CudaFragments, ScoresReplayEqualsQTimesKTransposed) {
  EXPECT_TRUE(scores_replay(64, 64, 128, 64, 1));
  EXPECT_TRUE(scores_replay(128, 128, 128, 64, 2));
  EXPECT_TRUE(scores_replay(128, 72, 100, 33, 3));  // zero padding past D, rows and keys
  EXPECT_TRUE(scores_replay(64, 16, 5, 1, 4));
}

TEST(CudaFragments, ProbabilitiesTimesVReplayEqualsPV) {
  EXPECT_TRUE(pv_replay(64, 64, 64, 5));
  EXPECT_TRUE(pv_replay(128, 128, 64, 6));
  EXPECT_TRUE(pv_replay(128, 72, 40, 7));
  EXPECT_TRUE(pv_replay(64, 8, 1, 8));
}

// ---- the kernel on a GPU ------------------------------------------------------------------------

#if CPTUNE_HAVE_CUDA

// Why this process cannot run the kernel; empty when it can (a device of compute capability 8+).
std::string cuda_unavailable() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);  // leaves count unset on failure
  if (status != cudaSuccess)
    return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(status) + " (error " +
           std::to_string(static_cast<int>(status)) + ")";
  if (count == 0) return "cudaGetDeviceCount found 0 devices";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "cudaGetDeviceProperties failed";
  if (prop.major < 8) return std::string(prop.name) + " is below compute capability 8.0 (the kernel needs sm_80+)";
  return "";
}

#define REQUIRE_CUDA_DEVICE()                                          \
  do {                                                                 \
    const std::string why = cuda_unavailable();                        \
    if (!why.empty()) GTEST_SKIP() << "no CUDA device: " << why;       \
  } while (0)

// Host bytes mirrored in GPU memory.
class DeviceCopy {
 public:
  explicit DeviceCopy(const std::vector<std::byte>& host) : bytes_(host.size()) {
    if (cudaMalloc(&data_, std::max<size_t>(bytes_, 16)) != cudaSuccess) throw std::runtime_error("cudaMalloc");
    if (cudaMemcpy(data_, host.data(), bytes_, cudaMemcpyHostToDevice) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy");
  }
  ~DeviceCopy() { cudaFree(data_); }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_;
};

std::vector<std::byte> random_values(std::mt19937_64& rng, int64_t elems, DType dtype, float amplitude) {
  std::uniform_real_distribution<float> uniform(-amplitude, amplitude);
  std::vector<float> values(static_cast<size_t>(elems));
  for (float& x : values) x = uniform(rng);
  std::vector<std::byte> out(values.size() * static_cast<size_t>(dtype_bytes(dtype)));
  from_float(values.data(), dtype, out.data(), elems);
  return out;
}

// One attention problem: Q of `q_tokens` rows and local heads, K,V of `kv_tokens` rows.
struct Case {
  std::string name;
  DType dtype = DType::bf16;
  int64_t q_tokens = 0, kv_tokens = 0;
  int64_t q_heads = 2, kv_heads = 1, head_dim = 64, v_dim = 64;
  HeadMap heads{0, 0, 2};
  Mask mask;
  std::vector<StoredRun> q_runs, kv_runs;
  std::vector<int64_t> lens;  // by sequence (block masks)
  float amplitude = 1;  // of Q and K
  std::optional<float> scale;
};

struct HostInputs {
  std::vector<std::byte> q, k, v;
};

HostInputs inputs_of(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return {random_values(rng, c.q_tokens * c.q_heads * c.head_dim, c.dtype, c.amplitude),
          random_values(rng, c.kv_tokens * c.kv_heads * c.head_dim, c.dtype, c.amplitude),
          random_values(rng, c.kv_tokens * c.kv_heads * c.v_dim, c.dtype, 1.0f)};
}

// The kernel over K,V blocks given as subsets of kv_runs (in that order), state copied back.
AttentionState run_cuda(const Case& c, const HostInputs& in, const std::vector<std::vector<StoredRun>>& blocks) {
  const DeviceCopy q(in.q), k(in.k), v(in.v);
  cudaStream_t stream = nullptr;
  if (cudaStreamCreate(&stream) != cudaSuccess) throw std::runtime_error("cudaStreamCreate");
  AttentionState host(c.q_tokens, c.q_heads, c.v_dim);
  {
    CudaAttentionState state(c.q_tokens, c.q_heads, c.v_dim, stream);
    const AttentionParams params{c.mask, c.heads, c.scale, c.lens};
    for (const std::vector<StoredRun>& block : blocks)
      attend_cuda({{q.data(), c.dtype, c.q_tokens, c.q_heads, c.head_dim}, c.q_runs},
                  {{k.data(), c.dtype, c.kv_tokens, c.kv_heads, c.head_dim},
                   {v.data(), c.dtype, c.kv_tokens, c.kv_heads, c.v_dim},
                   block},
                  params, state);
    state.copy_to(host);
  }
  cudaStreamDestroy(stream);
  return host;
}

AttentionState run_reference(const Case& c, const HostInputs& in) {
  AttentionState state(c.q_tokens, c.q_heads, c.v_dim);
  reference_attention({{in.q.data(), c.dtype, c.q_tokens, c.q_heads, c.head_dim}, c.q_runs},
                      {{in.k.data(), c.dtype, c.kv_tokens, c.kv_heads, c.head_dim},
                       {in.v.data(), c.dtype, c.kv_tokens, c.kv_heads, c.v_dim},
                       c.kv_runs},
                      {c.mask, c.heads, c.scale, c.lens}, state);
  return state;
}

// Tolerance on O (|O| < 1): the kernel rounds the probabilities P to the storage dtype before
// P V on tensor cores (as FlashAttention does), relative error 2^-9 (bf16) or 2^-12 (fp16) per
// term, plus fp32 accumulation; LSE comes from fp32 scores and is much closer.
float o_tolerance(DType dtype) { return dtype == DType::bf16 ? 4e-3f : 1e-3f; }
constexpr float kLseTolerance = 2e-4f;

::testing::AssertionResult near(const AttentionState& got, const AttentionState& want, DType dtype) {
  for (int64_t row = 0; row < got.tokens(); ++row)
    for (int64_t head = 0; head < got.q_heads(); ++head) {
      const float lse = got.lse_at(row, head), want_lse = want.lse_at(row, head);
      if (!(lse == want_lse || std::abs(lse - want_lse) <= kLseTolerance * std::max(1.0f, std::abs(want_lse))))
        return ::testing::AssertionFailure() << "row " << row << " head " << head << ": LSE " << lse << " vs "
                                             << want_lse;
      for (int64_t d = 0; d < got.v_dim(); ++d) {
        const float o = got.out_row(row, head)[d], want_o = want.out_row(row, head)[d];
        if (!(std::abs(o - want_o) <= o_tolerance(dtype)))
          return ::testing::AssertionFailure() << "row " << row << " head " << head << " dim " << d << ": O " << o
                                               << " vs " << want_o;
      }
    }
  return ::testing::AssertionSuccess();
}

Case packed_case(std::string name, std::vector<int64_t> lens, DType dtype, Mask mask, int64_t d, int64_t dv) {
  Case c;
  c.name = std::move(name);
  c.dtype = dtype;
  c.mask = mask;
  c.head_dim = d;
  c.v_dim = dv;
  c.q_runs = c.kv_runs = packed_runs(lens);
  c.q_tokens = c.kv_tokens = std::accumulate(lens.begin(), lens.end(), int64_t{0});
  c.lens = std::move(lens);
  return c;
}

void expect_matches_reference(const Case& c, uint64_t seed) {
  const HostInputs in = inputs_of(c, seed);
  EXPECT_TRUE(near(run_cuda(c, in, {c.kv_runs}), run_reference(c, in), c.dtype)) << c.name;
}

TEST(AttendCuda, MatchesReferenceForEveryMaskAcrossTileEdges) {
  REQUIRE_CUDA_DEVICE();
  for (DType dtype : {DType::bf16, DType::fp16})
    for (int64_t len : {1, 63, 64, 65, 127, 128, 129, 300, 1000})
      for (const Mask& mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 1},
                               Mask{MaskKind::sliding_window, 37}, Mask{MaskKind::sliding_window, 200}})
        expect_matches_reference(packed_case("S=" + std::to_string(len) + " " + to_string(mask) + " " +
                                                 std::string(to_string(dtype)),
                                             {len}, dtype, mask, 64, 64),
                                 static_cast<uint64_t>(len));
}

// Block masks: the patterns and random tables over a packed batch whose blocks start on and off
// the 128-row query tiles and 64-key steps.
TEST(AttendCuda, MatchesReferenceForBlockMasks) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937_64 rng(17);
  std::vector<Mask> masks{parse_mask("star:8"), parse_mask("strided:8,3"), parse_mask("stream:8,1,2"),
                          parse_mask("global-local:16,1,2")};
  for (int i = 0; i < 4; ++i) masks.push_back(block_mask(random_table(rng, 1 + static_cast<int64_t>(rng() % 16))));
  for (DType dtype : {DType::bf16, DType::fp16})
    for (const Mask& mask : masks)
      expect_matches_reference(
          packed_case(to_string(mask) + " " + std::string(to_string(dtype)), {77, 1001, 5}, dtype, mask, 64, 64), 18);
}

TEST(AttendCuda, MatchesReferenceForEveryHeadDimBucket) {
  REQUIRE_CUDA_DEVICE();
  for (auto [d, dv] : std::vector<std::pair<int64_t, int64_t>>{{8, 8}, {16, 8}, {64, 64}, {72, 128}, {96, 64}, {128, 128}})
    expect_matches_reference(
        packed_case("D=" + std::to_string(d) + " Dv=" + std::to_string(dv), {333}, DType::bf16, {MaskKind::causal, 0}, d, dv),
        static_cast<uint64_t>(d * 1000 + dv));
}

// A balanced head split starts a rank's Q heads mid GQA group: local head 0 is global head 3 of
// groups of 4, reading local KV head 0 (global 0) and, from local head 1 on, local KV head 1.
TEST(AttendCuda, GqaHeadMapStartingMidGroup) {
  REQUIRE_CUDA_DEVICE();
  Case c = packed_case("GQA mid-group", {200}, DType::bf16, {MaskKind::causal, 0}, 64, 64);
  c.q_heads = 5;
  c.kv_heads = 2;
  c.heads = {3, 0, 4};
  expect_matches_reference(c, 11);
}

// Three sequences packed back to back (and two samples of a batch as separate sequence ids):
// no query sees another sequence's keys; scores are large (amplitude 4) to stress the softmax.
TEST(AttendCuda, PackedRunsNeverAttendAcrossSequences) {
  REQUIRE_CUDA_DEVICE();
  for (const Mask& mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 50}}) {
    Case c = packed_case("packed " + to_string(mask), {77, 150, 9, 77}, DType::fp16, mask, 128, 128);
    c.amplitude = 4;
    c.scale = 0.2f;
    expect_matches_reference(c, 12);
  }
}

// Query runs hold pieces of a sequence (a zigzag shard: chunks r and 2R-1-r) and rows that are
// in no run; those rows stay empty (O = 0, LSE = -inf).
TEST(AttendCuda, ShardRunsAndRowsOutsideEveryRun) {
  REQUIRE_CUDA_DEVICE();
  Case c;
  c.name = "zigzag shard";
  c.mask = {MaskKind::causal, 0};
  c.q_runs = {{0, 100, 100, 0}, {0, 700, 100, 120}};  // rows 100..119 are in no run
  c.q_tokens = 220;
  c.kv_runs = {{0, 0, 400, 0}, {0, 400, 400, 400}};
  c.kv_tokens = 800;
  const HostInputs in = inputs_of(c, 13);
  const AttentionState got = run_cuda(c, in, {c.kv_runs});
  EXPECT_TRUE(near(got, run_reference(c, in), c.dtype));
  for (int64_t row = 100; row < 120; ++row) EXPECT_EQ(got.lse_at(row, 0), -INFINITY) << row;
}

// The ring: K,V arrive as blocks in any order and merge by LSE into the same state.
TEST(AttendCuda, RandomBlocksInAnyOrderMergeToTheWholeAttention) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937_64 rng(14);
  for (const Mask& mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 90},
                           parse_mask("strided:6,2")}) {
    Case c = packed_case("blocks " + to_string(mask), {500, 123}, DType::bf16, mask, 64, 64);
    c.q_heads = 4;
    c.kv_heads = 2;
    c.heads = {0, 0, 2};
    // Cut every K,V run at random points and deal the pieces into 3 blocks at random.
    std::vector<std::vector<StoredRun>> blocks(3);
    for (const StoredRun& run : c.kv_runs) {
      int64_t at = 0;
      while (at < run.count) {
        const int64_t n = std::min(run.count - at, std::uniform_int_distribution<int64_t>(1, 150)(rng));
        blocks[std::uniform_int_distribution<size_t>(0, 2)(rng)].push_back(
            {run.seq, run.begin + at, n, run.offset + at});
        at += n;
      }
    }
    std::shuffle(blocks.begin(), blocks.end(), rng);
    const HostInputs in = inputs_of(c, 15);
    EXPECT_TRUE(near(run_cuda(c, in, blocks), run_reference(c, in), c.dtype)) << c.name;
  }
}

TEST(AttendCuda, StoredOutputRoundsLikeTheCpu) {
  REQUIRE_CUDA_DEVICE();
  for (DType dtype : {DType::bf16, DType::fp16}) {
    const Case c = packed_case("store", {257}, dtype, {MaskKind::causal, 0}, 64, 64);
    const HostInputs in = inputs_of(c, 16);
    const DeviceCopy q(in.q), k(in.k), v(in.v);
    const int64_t elems = c.q_tokens * c.q_heads * c.v_dim;
    DeviceCopy out(std::vector<std::byte>(static_cast<size_t>(elems * dtype_bytes(dtype))));
    CudaAttentionState state(c.q_tokens, c.q_heads, c.v_dim, nullptr);
    attend_cuda({{q.data(), dtype, c.q_tokens, c.q_heads, c.head_dim}, c.q_runs},
                {{k.data(), dtype, c.kv_tokens, c.kv_heads, c.head_dim},
                 {v.data(), dtype, c.kv_tokens, c.kv_heads, c.v_dim},
                 c.kv_runs},
                {c.mask, c.heads, {}}, state);
    store_output_cuda(state, dtype, out.data(), elems * dtype_bytes(dtype));
    AttentionState host(c.q_tokens, c.q_heads, c.v_dim);
    state.copy_to(host);
    std::vector<std::byte> got(static_cast<size_t>(elems * dtype_bytes(dtype))), want(got.size());
    ASSERT_EQ(cudaMemcpy(got.data(), out.data(), got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    store_output(host, dtype, want.data(), static_cast<int64_t>(want.size()));
    EXPECT_EQ(got, want) << to_string(dtype);
  }
}

TEST(AttendCuda, MismatchedStateIsAnError) {
  REQUIRE_CUDA_DEVICE();
  const Case c = packed_case("mismatch", {64}, DType::bf16, {MaskKind::full, 0}, 64, 64);
  const HostInputs in = inputs_of(c, 17);
  const DeviceCopy q(in.q), k(in.k), v(in.v);
  CudaAttentionState state(c.q_tokens + 1, c.q_heads, c.v_dim, nullptr);
  EXPECT_THROW(attend_cuda({{q.data(), c.dtype, c.q_tokens, c.q_heads, c.head_dim}, c.q_runs},
                           {{k.data(), c.dtype, c.kv_tokens, c.kv_heads, c.head_dim},
                            {v.data(), c.dtype, c.kv_tokens, c.kv_heads, c.v_dim},
                            c.kv_runs},
                           {c.mask, c.heads, {}}, state),
               Error);
}

#else

TEST(AttendCuda, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA and NCCL: the CUDA kernel is not compiled"; }

#endif

}  // namespace
}  // namespace cptune::backends
