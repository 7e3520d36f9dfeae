#pragma once
// Deterministic attention inputs: every element of Q, K, V is a pure function of
// (seed, tensor, sequence, position, sample, head, dim), so each rank makes exactly its own
// shard and the single-device reference makes the same numbers without any communication.
#include <cstdint>
#include <span>

#include "core/layout.h"

namespace cptune::backends {

// Uniform in [-1, 1).
float input_value(uint64_t seed, Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim);

// Fills out[sample][token][head - heads.begin][dim] (fp32) for the tokens of `runs` in order,
// `padded` slots per run (padding slots are zero), samples 0..batch-1.
void fill_input(std::span<float> out, uint64_t seed, Tensor tensor, std::span<const TokenRun> runs, int64_t batch,
                HeadRange heads, int64_t dim);

}  // namespace cptune::backends
