#pragma once
// CPU attention for one rank (DESIGN.md, executor): the query tokens the rank holds against
// K,V blocks that arrive all at once (Ulysses, all-gather) or one ring step at a time.
// attend() merges each block into an fp32 state by log-sum-exp, so blocks may arrive in any
// order and the state ends equal (to fp32 rounding) to one call over all of them.
//
// Tensors are row-major [tokens][heads][dim] in their storage dtype; one call covers one
// sample (for a batch, offset the data pointers by the sample's stride and call per sample).
#include <cstdint>
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
};

// Per (query row, local q head): the normalised output O and LSE = log sum exp(scale q.k) over
// every key merged so far (natural log). A row that attended nothing has O = 0, LSE = -inf.
class AttentionState {
 public:
  AttentionState(int64_t tokens, int64_t q_heads, int64_t v_dim);  // every row empty
  void clear();

  int64_t tokens() const { return tokens_; }
  int64_t q_heads() const { return q_heads_; }
  int64_t v_dim() const { return v_dim_; }

  std::span<float> out() { return out_; }  // [tokens][q_heads][v_dim]
  std::span<const float> out() const { return out_; }
  std::span<float> lse() { return lse_; }  // [tokens][q_heads]
  std::span<const float> lse() const { return lse_; }
  float* out_row(int64_t token, int64_t head) { return out_.data() + (token * q_heads_ + head) * v_dim_; }
  const float* out_row(int64_t token, int64_t head) const { return out_.data() + (token * q_heads_ + head) * v_dim_; }
  float& lse_at(int64_t token, int64_t head) { return lse_[static_cast<size_t>(token * q_heads_ + head)]; }
  float lse_at(int64_t token, int64_t head) const { return lse_[static_cast<size_t>(token * q_heads_ + head)]; }

 private:
  int64_t tokens_, q_heads_, v_dim_;
  std::vector<float> out_, lse_;
};

// Attention of the query runs against one K,V block, merged into `state` (rows = Q tensor
// rows, heads = local q heads). Blocked like flash attention: tiles of queries x keys, fp32
// accumulation, tiles the mask removes are never computed. Throws Error when the tensors,
// runs, heads or state disagree.
void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params, AttentionState& state);

// The same attention computed naively (double accumulation, one query row at a time, O(S)
// extra memory per head) over every key of `keys`; overwrites the state's rows of the query
// runs. The single-device reference of --verify and of the tests.
void reference_attention(const Queries& queries, const KvBlock& keys, const AttentionParams& params,
                         AttentionState& state);

// The checks every attention kernel (CPU, CUDA) runs on its arguments: tensor sizes, runs inside
// their tensors, Q heads reading KV heads that are held, a state of the right size, mask and
// scale. Throws Error prefixed with `kernel` ("attention", "CUDA attention").
struct StateShape {
  int64_t tokens = 0, q_heads = 0, v_dim = 0;
};
void check_attention_arguments(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                               StateShape state, std::string_view kernel);

// Writes O [tokens][q_heads][v_dim] to `out` in `dtype` (round to nearest even). Throws Error
// when out_bytes is too small.
void store_output(const AttentionState& state, DType dtype, void* out, int64_t out_bytes);

}  // namespace cptune::backends
