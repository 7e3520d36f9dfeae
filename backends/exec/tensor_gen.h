#pragma once
// Deterministic attention inputs: every element of Q, K, V is a pure function of
// (seed, tensor, sequence, position, sample, head, dim), so each rank makes exactly its own
// shard and the single-device reference makes the same numbers without any communication.
#include <cstdint>
#include <span>
#include <vector>

#include "core/layout.h"

namespace cptune::backends {

// Uniform in [-1, 1).
float input_value(uint64_t seed, Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim);

// Q, K and V given whole (cptune run --inputs) instead of generated: fp32, each
// [batch][total tokens][heads][dim], the tokens of sequence s at offsets[s] + position.
struct GivenInputs {
  std::vector<float> q, k, v;
  std::vector<int64_t> offsets;  // per sequence: sum of the earlier sequences' lengths
  int64_t total_tokens = 0, q_heads = 0, kv_heads = 0, head_dim = 0, v_head_dim = 0;

  float at(Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim) const;
};

// Fills out[sample][token][head - heads.begin][dim] (fp32) for the tokens of `runs` in order,
// `padded` slots per run (padding slots are zero), samples 0..batch-1: generated from the seed,
// or taken from `given` when not null.
void fill_input(std::span<float> out, uint64_t seed, Tensor tensor, std::span<const TokenRun> runs, int64_t batch,
                HeadRange heads, int64_t dim, const GivenInputs* given = nullptr);

}  // namespace cptune::backends
