#pragma once
// The work of one CUDA attention call, planned on the host (attention_cuda.h runs it): query
// tiles of up to kCudaQueryTile rows of one StoredRun, each with the key segments its rows can
// see under the mask, so the kernel never visits a key tile the mask removes and never mixes
// sequences. Block masks: tiles never cross a query block boundary and each segment lies in one
// cell (EMPTY cells give none), so the kernel tests key <= query only in CAUSAL segments.
// Plain structs: the same bytes are copied to the GPU.
#include <cstdint>
#include <span>
#include <vector>

#include "backends/kernels/attention.h"
#include "core/types.h"

namespace cptune::backends {

inline constexpr int64_t kCudaQueryTile = 128;  // query rows per thread block: 8 warps x 16 rows
inline constexpr int64_t kCudaKeyTile = 64;     // keys per step of the online softmax
inline constexpr int kCudaThreads = 256;

// Keys at positions [pos, pos + count) of the tile's sequence, stored from tensor row `row` on.
struct KeySegment {
  int64_t row = 0;
  int64_t pos = 0;
  int64_t count = 0;
  // Block masks only: 1 when a row sees only the keys at or before its position (a CAUSAL cell
  // some row of the tile does not wholly see), 0 when every row sees every key (FULL, or a CAUSAL
  // cell wholly in the past). Other masks: 0, the kernel applies mask_kind.
  int32_t causal = 0;
  int32_t unused = 0;  // keeps the struct free of padding on host and device alike
};

// Up to kCudaQueryTile consecutive query rows of one run, and where its keys are.
struct QueryTileWork {
  int64_t row = 0;  // Q and state row of the first query
  int64_t pos = 0;  // its position in its sequence
  int32_t rows = 0;
  int32_t first_segment = 0;  // segments [first_segment, first_segment + segments) of the plan
  int32_t segments = 0;
  int32_t unused = 0;        // keeps the struct free of padding on host and device alike
  int64_t key_tiles = 0;     // kCudaKeyTile steps over all its segments (its cost)
};

struct TilePlan {
  std::vector<QueryTileWork> tiles;  // costliest first, so the longest blocks start first
  std::vector<KeySegment> segments;
  int64_t key_tiles = 0;  // sum over tiles: thread-block steps per head
};

// Tiles every query run against the runs of the block with the same sequence; tiles whose rows
// see no key are left out (their state rows stay as they were, like the CPU attend()). seq_lens:
// the length of each sequence by StoredRun::seq (AttentionParams::seq_lens), needed by block masks.
TilePlan plan_attention_tiles(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs,
                              const Mask& mask, std::span<const int64_t> seq_lens = {});

// How the kernel is launched for a plan: one block per (tile, local q head).
struct AttentionLaunch {
  int64_t tiles = 0;       // grid x
  int64_t heads = 0;       // grid y
  int threads = kCudaThreads;
  int dim_bucket = 0;      // the kernel instance: 64 or 128 (head dims zero-padded up to it)
  int64_t smem_bytes = 0;  // Q tile + K tile + V tile in shared memory
};

// Throws Error when the kernel cannot run the shape: dtype other than bf16 / fp16, head dims
// that are not multiples of 8 or above 128, more heads than a grid allows.
AttentionLaunch attention_launch(const TilePlan& plan, int64_t q_heads, int64_t head_dim, int64_t v_head_dim,
                                 DType dtype);

}  // namespace cptune::backends
