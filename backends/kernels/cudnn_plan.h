#pragma once
// The calls of cuDNN's fused attention (SDPA through the cuDNN frontend, cuda/attention_cudnn.cc)
// that compute one attend() or attend_backward(): planned on the host from the inputs every kernel
// takes (query runs, K,V runs, Mask, sequence lengths, head map), with no CUDA in sight, so the
// planning is tested where no GPU is.
//
// cuDNN sees a batch of entries in THD layout (rows [tokens][heads][dim], each entry found by a
// ragged offset) and one mask per call: its diagonal band, aligned top-left or bottom-right per
// entry. A (query run, K,V run) pair of one sequence becomes up to three pieces whose ends are
// chosen so that cuDNN's band, applied to each piece's own rows and columns, shows exactly the
// pairs the Mask allows (a ring step's blocks sit at different global positions; zigzag chunks
// too): rows that see every key of the piece (FULL), rows ending where the keys end (the
// bottom-right causal or sliding-window band), and, for a sliding window, rows past the keys' end
// (a top-left band). Block masks add one piece per cell (runs of FULL cells merged). Pieces with
// the same band share a call; rows written by one call never overlap, so each call's O and LSE
// merge into the state like a ring step's.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backends/kernels/attention.h"
#include "core/types.h"

namespace cptune::backends {

// cuDNN's diagonal band (sdpa set_diagonal_alignment, set_diagonal_band_left_bound / _right_bound):
// in an entry of s_q rows and s_kv columns, with shift = s_kv - s_q when bottom_right, else 0,
// row r sees column c when r + shift - left < c (left set) and c <= r + shift + right (right set).
// Neither set: every column (no mask beyond the entry's lengths).
struct CudnnDiagonal {
  bool bottom_right = false;
  std::optional<int64_t> left_bound;   // >= 1 when set
  std::optional<int64_t> right_bound;  // >= 0 when set
  bool operator==(const CudnnDiagonal&) const = default;

  bool full() const { return !left_bound && !right_bound; }
  bool sees(int64_t row, int64_t col, int64_t s_q, int64_t s_kv) const {
    const int64_t shift = bottom_right ? s_kv - s_q : 0;
    if (right_bound && col > row + shift + *right_bound) return false;
    if (left_bound && col <= row + shift - *left_bound) return false;
    return true;
  }
};
std::string to_string(const CudnnDiagonal& diagonal);  // "full", "causal-br", "band-br:L", "band-tl:L,R"

// One batch entry: query rows [q_row, q_row + q_tokens) at positions from q_pos of sequence seq,
// against key rows [kv_row, kv_row + kv_tokens) at positions from kv_pos of the same sequence.
struct CudnnEntry {
  int32_t seq = 0;
  int64_t q_row = 0, q_pos = 0, q_tokens = 0;
  int64_t kv_row = 0, kv_pos = 0, kv_tokens = 0;
  bool operator==(const CudnnEntry&) const = default;
};

// One SDPA call: its entries all under one band, sorted by q_row. Query rows of different entries
// never overlap (each entry writes its O and LSE rows); under a backward plan their K,V rows do not
// either (each writes its dK, dV rows). Every query row of an entry sees at least one of its keys.
struct CudnnCall {
  CudnnDiagonal diagonal;
  std::vector<CudnnEntry> entries;
  int64_t max_q_tokens() const;
  int64_t max_kv_tokens() const;
};

struct CudnnPlan {
  std::vector<CudnnCall> calls;
};

// The calls for query runs against K,V runs under mask (seq_lens: AttentionParams::seq_lens, needed
// by block masks). A forward plan lets entries of one call share K,V rows (they are only read); a
// plan for a pass with a backward does not. Runs of different sequences never meet. Throws Error
// when a block mask lacks the length of a sequence or a sliding window is below 1.
CudnnPlan plan_cudnn_attention(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs,
                               const Mask& mask, std::span<const int64_t> seq_lens, Pass pass);

// GQA for cuDNN: local Q heads [q_head, q_head + q_heads) read local KV heads
// [kv_head, kv_head + kv_heads), q_heads / kv_heads each (cuDNN's h_q / h_kv). A rank whose heads
// start or end mid-group (HeadMap) needs up to three slices; each is one set of calls, its tensors
// the same rows offset by q_head or kv_head heads.
struct CudnnHeadSlice {
  int64_t q_head = 0, q_heads = 0;
  int64_t kv_head = 0, kv_heads = 0;
  bool operator==(const CudnnHeadSlice&) const = default;
};
std::vector<CudnnHeadSlice> cudnn_head_slices(const HeadMap& heads, int64_t q_heads);

// The tensors of a call as one rank holds them: elements per token row, dtype, scale. Every tensor
// is [tokens][heads][dim] (THD); LSE is fp32 [tokens][q_heads].
struct CudnnTensors {
  DType dtype = DType::bf16;
  int64_t q_heads = 0, kv_heads = 0;  // held locally (all slices)
  int64_t head_dim = 0, v_head_dim = 0;
  float scale = 0;  // multiplies q.k

  int64_t q_row_elems() const { return q_heads * head_dim; }  // Q, dQ
  int64_t k_row_elems() const { return kv_heads * head_dim; }  // K, dK
  int64_t v_row_elems() const { return kv_heads * v_head_dim; }  // V, dV
  int64_t o_row_elems() const { return q_heads * v_head_dim; }  // O, dO
  int64_t lse_row_elems() const { return q_heads; }              // LSE (cuDNN's stats)
};
// Throws Error naming what cuDNN's fused attention cannot run (dtype other than bf16 / fp16, head
// dims not multiples of 8 or above 256) and that cptune's own kernel can.
void check_cudnn_tensors(const CudnnTensors& tensors);

// What a call hands cuDNN per entry: seq_len_q / seq_len_kv (int32, b values) and the ragged offsets
// of every tensor (elements from the tensor's start, b + 1 values: entry i starts at [i]; [b] is the
// end of the last entry's rows). Throws Error when an entry is longer than cuDNN's int32 lengths.
struct CudnnRaggedOffsets {
  std::vector<int32_t> seq_len_q, seq_len_kv;
  std::vector<int64_t> q, k, v, o, lse;
};
CudnnRaggedOffsets cudnn_ragged_offsets(const CudnnCall& call, const CudnnTensors& tensors);

// Sequence dimensions a graph is built for: the entries' longest, rounded up to a power of two (at
// least 64) so the steps of a ring reuse one graph; the true lengths travel as seq_len_q/kv.
int64_t cudnn_token_bucket(int64_t tokens);

// What a built SDPA graph depends on: graphs are built once per key and cached.
struct CudnnGraphKey {
  bool backward = false;
  DType dtype = DType::bf16;
  int64_t batch = 0;                      // entries
  int64_t q_tokens = 0, kv_tokens = 0;    // cudnn_token_bucket of the longest entries
  int64_t q_heads = 0, kv_heads = 0;      // of the slice
  int64_t head_dim = 0, v_head_dim = 0;
  int64_t q_row_elems = 0, k_row_elems = 0, v_row_elems = 0, o_row_elems = 0;  // strides of a token
  CudnnDiagonal diagonal;
  float scale = 0;
  bool operator==(const CudnnGraphKey&) const = default;
};
CudnnGraphKey cudnn_graph_key(const CudnnCall& call, const CudnnHeadSlice& slice, const CudnnTensors& tensors,
                              bool backward);
std::string to_string(const CudnnGraphKey& key);
struct CudnnGraphKeyHash {
  size_t operator()(const CudnnGraphKey& key) const;
};

}  // namespace cptune::backends
