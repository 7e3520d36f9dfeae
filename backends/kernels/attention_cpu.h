#pragma once
// CPU attention for one rank (docs/design.md, executor): the query tokens the rank holds against
// K,V blocks that arrive all at once (Ulysses, all-gather) or one ring step at a time.
// attend() merges each block into an fp32 state by log-sum-exp, so blocks may arrive in any
// order and the state ends equal (to fp32 rounding) to one call over all of them.
//
// attend_backward() computes dQ, dK, dV of the same attention one K,V block at a time, adding
// into fp32 gradients (the backward's vocabulary and its ring contract: attention_backward.h).
//
// Tensors, runs, head maps and the argument check are the kernels' shared vocabulary
// (attention.h).
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "backends/kernels/attention.h"
#include "backends/kernels/attention_backward.h"

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

// The state's O as a tensor (fp32 [tokens][q_heads][v_dim]), e.g. for compute_delta.
TensorView output_view(const AttentionState& state);

// ---- backward ---------------------------------------------------------------------------------

// Host fp32 zeros [tokens][heads][dim] that a backward adds into (GradView of attention_backward.h).
class GradBuffer {
 public:
  GradBuffer(int64_t tokens, int64_t heads, int64_t dim);  // zeros
  void clear();
  GradView view() { return {values_.data(), tokens_, heads_, dim_}; }
  std::span<const float> values() const { return values_; }
  const float* row(int64_t token, int64_t head) const { return values_.data() + (token * heads_ + head) * dim_; }
  int64_t tokens() const { return tokens_; }
  int64_t heads() const { return heads_; }
  int64_t dim() const { return dim_; }

 private:
  int64_t tokens_, heads_, dim_;
  std::vector<float> values_;
};

// D[row][head] = sum_d dO[row][head][d] O[row][head][d] in fp32 for the rows of `runs` (other
// rows untouched); o and d_out [tokens][heads][Dv], each in its own dtype (O may be the fp32
// state, output_view, or O as stored). delta holds tokens x heads values. Once per query row,
// with the FINAL O, before any attend_backward. Throws Error when the shapes disagree.
void compute_delta(const TensorView& o, const TensorView& d_out, std::span<const StoredRun> runs,
                   std::span<float> delta);

// The backward of attend() for the query runs against one K,V block: adds this block's share of
// dQ into dq and the queries' share of dK, dV into dkv (the ring contract of attention_backward.h),
// tiled like attend() (the mask's tiles, query_tile_rows, block_key_spans; P recomputed per tile
// from in.lse; fp32 accumulation). Query rows whose LSE is -inf (they saw no key in the forward)
// add nothing. Runs the active_cpu_isa() variant. Throws Error when arguments disagree
// (check_backward_arguments).
void attend_backward(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                     const BackwardInputs& in, QueryGrads dq, KvGrads dkv);

// Writes an fp32 gradient to `out` in `dtype` (round to nearest even). Throws Error when
// out_bytes is too small.
void store_gradient(const GradView& grad, DType dtype, void* out, int64_t out_bytes);

}  // namespace cptune::backends
