#pragma once
// Deterministic attention inputs: every element of Q, K, V is a pure function of
// (seed, tensor, sequence, position, sample, head, dim), so each rank makes exactly its own
// shard and the single-device reference makes the same numbers without any communication.
#include <cstdint>
#include <span>
#include <vector>

#include "core/layout.h"

namespace cptune::backends {

// dO, the gradient of a loss with respect to O, is an input of the backward as Q, K, V are of
// the forward: it has O's shape and placement ([tokens][q heads][Dv], where O lies), so Tensor::o
// names it here: input_value(seed, kGradOutput, ...), fill_input(..., kGradOutput, ..., q heads, Dv).
inline constexpr Tensor kGradOutput = Tensor::o;

// Uniform in [-1, 1).
float input_value(uint64_t seed, Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim);

// Q, K, V (and for a backward dO) given whole (cptune run --inputs) instead of generated: fp32,
// each [batch][total tokens][heads][dim], the tokens of sequence s at offsets[s] + position;
// d_out [batch][total tokens][q heads][Dv]. A tensor left empty is generated from the seed.
struct GivenInputs {
  std::vector<float> q, k, v, d_out;
  std::vector<int64_t> offsets;  // per sequence: sum of the earlier sequences' lengths
  int64_t total_tokens = 0, q_heads = 0, kv_heads = 0, head_dim = 0, v_head_dim = 0;

  bool has(Tensor tensor) const;  // given (not empty)
  float at(Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim) const;
};

// The value of one element: given->at() when `given` holds the tensor, else input_value().
float input_or_given(uint64_t seed, const GivenInputs* given, Tensor tensor, int64_t seq, int64_t pos, int64_t sample,
                     int64_t head, int64_t dim);

// Fills out[sample][token][head - heads.begin][dim] (fp32) for the tokens of `runs` in order,
// `padded` slots per run (padding slots are zero), samples 0..batch-1: generated from the seed,
// or taken from `given` when it holds the tensor (input_or_given).
void fill_input(std::span<float> out, uint64_t seed, Tensor tensor, std::span<const TokenRun> runs, int64_t batch,
                HeadRange heads, int64_t dim, const GivenInputs* given = nullptr);

}  // namespace cptune::backends
