#pragma once
// The vocabulary every attention kernel shares (CPU attention_cpu.h, CUDA cuda/attention_cuda.h
// and its tile planner attention_tiles.h): tensors as stored, runs of tokens, the GQA head map,
// the key window of a mask, and the argument check every kernel runs.
//
// Tensors are row-major [tokens][heads][dim] in their storage dtype; one call covers one
// sample (for a batch, offset the data pointers by the sample's stride and call per sample).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "core/layout.h"
#include "core/types.h"

namespace cptune::backends {

// A TokenRun as stored in a tensor: positions [begin, begin + count) of sequence `seq` sit at
// rows [offset, offset + count) of the tensor. Tokens of different sequences never attend to
// each other; masks compare positions within a sequence.
struct StoredRun {
  int32_t seq = 0;
  int64_t begin = 0;   // position of the first token in its sequence
  int64_t count = 0;   // tokens
  int64_t offset = 0;  // tensor row of the first token (tokens, not elements or bytes)
};

// Runs stored back to back in the given order, `padded` rows each (the Layout's storage order).
std::vector<StoredRun> stored_runs(std::span<const TokenRun> runs);
// Whole sequences back to back: sequence i is positions [0, seq_lens[i]) (a packed batch).
std::vector<StoredRun> packed_runs(std::span<const int64_t> seq_lens);

// A read-only tensor [tokens][heads][dim] in storage dtype.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::fp32;
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t dim = 0;
};

// GQA from local indices: local Q head h is global head q_head_begin + h and reads global KV
// head (q_head_begin + h) / group_size, held locally at that minus kv_head_begin. A balanced
// head split can start a rank's Q heads mid-group, so the offset is not a multiple of the group.
struct HeadMap {
  int64_t q_head_begin = 0;   // global index of local Q head 0
  int64_t kv_head_begin = 0;  // global index of local KV head 0
  int64_t group_size = 1;     // Hq / Hkv of the whole model
  int64_t kv_of(int64_t local_q_head) const { return (q_head_begin + local_q_head) / group_size - kv_head_begin; }
  // The heads a rank computes after the all-to-all, as the Layout placed them.
  static HeadMap of_rank(const RankLayout& rank, const AttentionShape& shape);
};

struct Queries {
  TensorView q;                     // [tokens][local q heads][D]
  std::span<const StoredRun> runs;  // rows to compute, each in one run; rows outside are left alone
};

struct KvBlock {
  TensorView k;                     // [tokens][local kv heads][D]
  TensorView v;                     // [tokens][local kv heads][Dv]
  std::span<const StoredRun> runs;  // keys to attend, each position of a sequence at most once
};

struct AttentionParams {
  Mask mask;
  HeadMap heads;
  std::optional<float> scale;  // multiplies q.k; unset: 1 / sqrt(D)
  // Length of each sequence, by TokenRun::seq: a block mask cuts every sequence into its blocks
  // (core/block_mask.h). Needed for MaskKind::blocks only; other masks ignore it.
  std::span<const int64_t> seq_lens{};
};

// Stands for "no bound" in key windows; far from INT64 limits so window arithmetic cannot wrap.
inline constexpr int64_t kFarPosition = std::numeric_limits<int64_t>::max() / 4;

// Key positions [lo, hi) that query position i sees (the Mask rule of core/types.h). Both ends
// only move forward as i grows, so a tile's rows together see [lo(first), hi(last)).
struct KeyWindow {
  int64_t lo, hi;
};
// Full, causal and sliding-window masks. A block mask's keys are no single window: kernels cut
// it into block_key_spans below, each of which follows the full or the causal window.
KeyWindow key_window(const Mask& mask, int64_t i);

// ---- block masks, tiled (core/block_mask.h) ---------------------------------------------------
// A kernel cuts its query tiles at query block boundaries (query_block_end), so every row of a
// tile lies in one block row of the table; each key run then falls into spans of one cell each.

// Where the block holding query position pos ends (a tile starting at pos stops there); for
// other masks, and in the last block, kFarPosition.
int64_t query_block_end(const Mask& mask, int64_t len, int64_t pos);
// Rows of the query tile starting t0 rows into run: up to max_rows, stopping at the query block's
// end under a block mask (len: the run's sequence length; other masks ignore it). The CPU and CUDA
// kernels tile by this one rule.
inline int64_t query_tile_rows(const StoredRun& run, int64_t t0, int64_t max_rows, const Mask& mask, int64_t len) {
  const int64_t pos = run.begin + t0;
  return std::min(std::min(max_rows, run.count - t0), query_block_end(mask, len, pos) - pos);
}

// Keys at positions [lo, hi) that rows of the tile see, all in one cell. causal: only keys at or
// before the row's position are visible (a CAUSAL cell the tile's first row does not wholly see);
// otherwise every row sees every key of the span.
struct KeySpan {
  int64_t lo, hi;
  bool causal;
};
// The window rule of a span: the causal mask when causal, else the full one (static objects, so
// per-variant kernel code never copies a Mask: cpu_isa.h).
const Mask& span_rule(bool causal);
// The spans of keys [ka, kb) that query rows [pos, pos + rows) of a sequence of len tokens see
// under a block mask, in position order, EMPTY cells left out; the rows must lie in one query
// block. Writes at most kMaxMaskBlocks spans to out and returns how many.
int64_t block_key_spans(const Mask& mask, int64_t len, int64_t pos, int64_t rows, int64_t ka, int64_t kb,
                        KeySpan* out);
// The length of sequence seq for the mask (params.seq_lens; kFarPosition when not given).
inline int64_t seq_len_of(std::span<const int64_t> seq_lens, int32_t seq) {
  return seq >= 0 && static_cast<size_t>(seq) < seq_lens.size() ? seq_lens[static_cast<size_t>(seq)] : kFarPosition;
}
inline int64_t seq_len_of(const AttentionParams& params, int32_t seq) { return seq_len_of(params.seq_lens, seq); }

// The checks every attention kernel (CPU, CUDA) runs on its arguments: tensor sizes, runs inside
// their tensors, Q heads reading KV heads that are held, a state of the right size, mask and
// scale. Throws Error prefixed with `kernel` ("attention", "CUDA attention").
struct StateShape {
  int64_t tokens = 0, q_heads = 0, v_dim = 0;
};
void check_attention_arguments(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                               StateShape state, std::string_view kernel);

}  // namespace cptune::backends
