#pragma once
// The vocabulary of the attention backward, shared by the CPU (attention_cpu.h) and CUDA
// (cuda/attention_cuda.h) kernels: what a backward call reads besides Q, K, V, the fp32
// gradients it adds into, and the argument check every backward runs.
//
// FlashAttention-2's backward (Dao 2023, arXiv:2307.08691, Algorithm 2): with S = scale Q K^T,
// P = exp(S - LSE) per row (recomputed per tile from the forward's LSE, never stored),
//   D  = rowsum(dO o O)                        once per query row, before any call
//   dV = P^T dO      dP = dO V^T      dS = P o (dP - D)
//   dQ = scale dS K  dK = scale dS^T Q
// where dO = dL/dO of some loss L, and dQ, dK, dV are dL/dQ, dL/dK, dL/dV of the same L.
//
// The contract of a ring (why a backward call takes one K,V block, like attend()): given the
// FINAL LSE and D of every query row (those of the forward over ALL keys, not of one block),
// every term above is a function of one (query, key) pair alone, so results over disjoint key
// sets and disjoint query sets simply add:
//   - dQ of a query row is the sum over the K,V blocks it attends: call once per block (ring
//     step), adding into one dQ accumulator, in any order;
//   - dK, dV of a block are complete for the queries of the call; a block that meets several
//     query sets (ranks of a ring, ranks of an all-gather) sums their contributions, so dK, dV
//     may travel with their block around the ring, each rank adding its own, and arrive home whole;
//   - GQA: dK, dV of a KV head sum over the local Q heads that read it (HeadMap); when a head
//     split gives one group's Q heads to several ranks, their dK, dV of that KV head add up too.
// Sums are fp32; only the final values are rounded to the storage dtype (store_gradient).
#include <cstdint>
#include <span>
#include <string_view>

#include "backends/kernels/attention.h"

namespace cptune::backends {

// Per query row, what the backward reads besides Q, K, V. Indexed like the Q tensor: rows of
// queries.runs, [tokens][local q heads].
struct BackwardInputs {
  TensorView d_out;              // dO [q tokens][local q heads][Dv], storage dtype (or fp32)
  std::span<const float> lse;    // the forward's final LSE (natural log, AttentionState::lse())
  std::span<const float> delta;  // D = rowsum(dO o O) of the final O (compute_delta)
};

// An fp32 gradient [tokens][heads][dim] in memory the caller owns (host memory for the CPU
// kernel, GPU memory for CUDA): the backward ADDS into it, so the caller zeroes it once and may
// send it between calls (a ring's dK, dV travel as these bytes).
struct GradView {
  float* data = nullptr;
  int64_t tokens = 0, heads = 0, dim = 0;

  int64_t elems() const { return tokens * heads * dim; }
  float* row(int64_t token, int64_t head) const { return data + (token * heads + head) * dim; }
};

// dQ [q tokens][local q heads][D]: the backward adds into the rows of queries.runs.
struct QueryGrads {
  GradView dq;
};

// dK [kv tokens][local kv heads][D] and dV [kv tokens][local kv heads][Dv]: the backward adds
// into the rows of block.runs (rows no query of the call sees get + 0).
struct KvGrads {
  GradView dk, dv;
};

// The forward's checks (check_attention_arguments) plus: dO of the Q tensor's rows and heads and
// V's head dim; LSE and D one value per (Q row, local q head); dQ shaped like Q, dK like K,
// dV like V, each with data. Throws Error prefixed with `kernel`.
void check_backward_arguments(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                              const BackwardInputs& in, const QueryGrads& dq, const KvGrads& dkv,
                              std::string_view kernel);

}  // namespace cptune::backends
