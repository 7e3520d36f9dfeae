#include "backends/kernels/attention_tiles.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace cptune::backends {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Appends the segments of `kv_runs` that rows [pos, pos + rows) of sequence `seq` can see.
int64_t add_segments(std::span<const StoredRun> kv_runs, int32_t seq, int64_t pos, int64_t rows, const Mask& mask,
                     std::vector<KeySegment>& out) {
  const int64_t lo = key_window(mask, pos).lo, hi = key_window(mask, pos + rows - 1).hi;
  int64_t key_tiles = 0;
  for (const StoredRun& run : kv_runs) {
    if (run.seq != seq) continue;
    const int64_t first = std::max(run.begin, lo), last = std::min(run.begin + run.count, hi);
    if (first >= last) continue;
    out.push_back({run.offset + (first - run.begin), first, last - first});
    key_tiles += ceil_div(last - first, kCudaKeyTile);
  }
  return key_tiles;
}

// The same under a block mask for rows [pos, pos + rows) inside one query block: one segment per
// cell a key run overlaps, EMPTY cells left out.
int64_t add_block_segments(std::span<const StoredRun> kv_runs, int32_t seq, int64_t len, int64_t pos, int64_t rows,
                           const Mask& mask, std::vector<KeySegment>& out) {
  KeySpan spans[kMaxMaskBlocks];
  int64_t key_tiles = 0;
  for (const StoredRun& run : kv_runs) {
    if (run.seq != seq || run.count == 0) continue;
    const int64_t n = block_key_spans(mask, len, pos, rows, run.begin, run.begin + run.count, spans);
    for (int64_t i = 0; i < n; ++i) {
      const KeySpan& span = spans[i];
      out.push_back({run.offset + (span.lo - run.begin), span.lo, span.hi - span.lo, span.causal ? 1 : 0, 0});
      key_tiles += ceil_div(span.hi - span.lo, kCudaKeyTile);
    }
  }
  return key_tiles;
}

}  // namespace

TilePlan plan_attention_tiles(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs,
                              const Mask& mask, std::span<const int64_t> seq_lens) {
  TilePlan plan;
  const bool blocks = mask.kind == MaskKind::blocks;
  for (const StoredRun& q_run : q_runs) {
    const int64_t len = blocks ? seq_len_of(seq_lens, q_run.seq) : 0;
    for (int64_t t0 = 0, rows = 0; t0 < q_run.count; t0 += rows) {
      rows = query_tile_rows(q_run, t0, kCudaQueryTile, mask, len);
      QueryTileWork tile;
      tile.row = q_run.offset + t0;
      tile.pos = q_run.begin + t0;
      tile.rows = static_cast<int32_t>(rows);
      tile.first_segment = static_cast<int32_t>(plan.segments.size());
      tile.key_tiles = blocks ? add_block_segments(kv_runs, q_run.seq, len, tile.pos, tile.rows, mask, plan.segments)
                              : add_segments(kv_runs, q_run.seq, tile.pos, tile.rows, mask, plan.segments);
      tile.segments = static_cast<int32_t>(plan.segments.size()) - tile.first_segment;
      if (tile.segments == 0) continue;
      plan.key_tiles += tile.key_tiles;
      plan.tiles.push_back(tile);
    }
  }
  // Under a causal mask the last tiles of a sequence see the most keys: start them first so
  // no long block is left running alone at the end (FlashAttention's reversed order).
  std::stable_sort(plan.tiles.begin(), plan.tiles.end(),
                   [](const QueryTileWork& a, const QueryTileWork& b) { return a.key_tiles > b.key_tiles; });
  return plan;
}

AttentionLaunch attention_launch(const TilePlan& plan, int64_t q_heads, int64_t head_dim, int64_t v_head_dim,
                                 DType dtype) {
  if (dtype != DType::bf16 && dtype != DType::fp16)
    throw Error(fmt::format("CUDA attention stores bf16 or fp16, not {}; use --dtype bf16 or fp16 on GPUs",
                            to_string(dtype)));
  for (int64_t dim : {head_dim, v_head_dim})
    if (dim < 8 || dim > 128 || dim % 8 != 0)
      throw Error(fmt::format("CUDA attention supports head dims 8..128 in multiples of 8 (16-byte rows), not {} "
                              "(D={}, Dv={})",
                              dim, head_dim, v_head_dim));
  if (q_heads < 1 || q_heads > 65535)
    throw Error(fmt::format("CUDA attention runs 1..65535 query heads per rank, not {}", q_heads));
  if (static_cast<int64_t>(plan.tiles.size()) > std::numeric_limits<int32_t>::max())
    throw Error(fmt::format("CUDA attention: {} query tiles exceed one grid; split the call", plan.tiles.size()));
  AttentionLaunch launch;
  launch.tiles = static_cast<int64_t>(plan.tiles.size());
  launch.heads = q_heads;
  launch.dim_bucket = std::max(head_dim, v_head_dim) <= 64 ? 64 : 128;
  launch.smem_bytes = (kCudaQueryTile + 2 * kCudaKeyTile) * launch.dim_bucket * dtype_bytes(dtype);
  return launch;
}

}  // namespace cptune::backends
