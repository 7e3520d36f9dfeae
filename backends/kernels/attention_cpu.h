#pragma once
// CPU attention for one rank (docs/design.md, executor): the query tokens the rank holds against
// K,V blocks that arrive all at once (Ulysses, all-gather) or one ring step at a time.
// attend() merges each block into an fp32 state by log-sum-exp, so blocks may arrive in any
// order and the state ends equal (to fp32 rounding) to one call over all of them.
//
// Tensors, runs, head maps and the argument check are the kernels' shared vocabulary
// (attention.h).
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "backends/kernels/attention.h"

namespace cptune::backends {

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
// accumulation, tiles the mask removes are never computed. Runs the instruction-set variant of
// active_cpu_isa() (cpu_isa.h). Throws Error when the tensors, runs, heads or state disagree.
void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params, AttentionState& state);

// The same attention computed naively (double accumulation, one query row at a time, O(S)
// extra memory per head) over every key of `keys`; overwrites the state's rows of the query
// runs. The single-device reference of --verify and of the tests.
void reference_attention(const Queries& queries, const KvBlock& keys, const AttentionParams& params,
                         AttentionState& state);

// Writes O [tokens][q_heads][v_dim] to `out` in `dtype` (round to nearest even). Throws Error
// when out_bytes is too small.
void store_output(const AttentionState& state, DType dtype, void* out, int64_t out_bytes);

}  // namespace cptune::backends
