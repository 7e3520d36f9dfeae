#pragma once
// The reference of a backward --verify: dQ, dK, dV written from their definition, in double
// precision, for the loss L = sum over rows of dO . O (dO from tensor_gen, Tensor kGradOutput).
// Like the forward's (reference.h) it shares nothing with the kernels (no key window, no runs,
// no tiles, no HeadMap, no LSE handed in): query (sample b, sequence s, position i, head h)
// reads KV head h / (Hq / Hkv) and every key j of sequence s with Mask::sees(i, j), and
//   P_ij = softmax_j(scale q_i . k_j),   dP_ij = dO_i . v_j,   D_i = sum_j P_ij dP_ij,
//   dS_ij = P_ij (dP_ij - D_i),  dQ_i = scale sum_j dS_ij k_j,
//   dK_j = scale sum_(i,h) dS_ij q_i,  dV_j = sum_(i,h) P_ij dO_i
// (the sums over (i, h): every query row of every Q head of the KV head's group that sees j).
//
// Each element gets a tolerance: how far an fp32 kernel (FlashAttention-2's backward, given
// the forward's fp32 LSE and D from its O) that stores the gradient in the storage dtype may
// honestly land from the exact value (formula in reference_bwd.cc).
#include <cstdint>
#include <span>
#include <vector>

#include "backends/exec/reference.h"
#include "backends/exec/tensor_gen.h"
#include "core/types.h"

namespace cptune::backends {

struct BackwardReferenceOptions {
  // The forward rounded each p_j to the storage dtype before P V (reference.h): O, hence D,
  // carries that error.
  bool probabilities_in_storage = false;
  // How many times a partial sum of dQ, dK or dV is rounded to the storage dtype on its way
  // (e.g. a ring that sends dK, dV in bf16 between hops); 0 when partial sums stay fp32.
  int64_t storage_sums = 0;
};

class BackwardReference {
 public:
  // `given`: Q, K, V, dO the user passed instead of the generated ones (a tensor it leaves
  // empty is generated); not owned.
  BackwardReference(const AttentionShape& shape, uint64_t seed, const GivenInputs* given = nullptr,
                    BackwardReferenceOptions options = {});

  // out[d] = the exact gradient of one row, tol[d] = the allowed |stored - out[d]|.
  // dq_row: id.head is a Q head, D long. dk_row (D long), dv_row (Dv long): id.head is a KV
  // head. Rows of one (sample, KV head) are computed together: ask for them together.
  void dq_row(const RowId& id, std::span<double> out, std::span<double> tol);
  void dk_row(const RowId& id, std::span<double> out, std::span<double> tol);
  void dv_row(const RowId& id, std::span<double> out, std::span<double> tol);

 private:
  // Every gradient and tolerance of one (sample, KV head), all its group's Q heads at once.
  void load(int64_t sample, int64_t kv_head);
  void backward_row(int64_t head_in_group, int64_t seq, int64_t pos);

  AttentionShape shape_;
  uint64_t seed_;
  const GivenInputs* given_;
  BackwardReferenceOptions options_;
  Reference forward_;                 // O and its tolerance, for D's error
  std::vector<int64_t> seq_begin_;    // first token of each sequence in the packed tensors below
  int64_t loaded_sample_ = -1, loaded_kv_ = -1;
  int64_t sample_ = 0, kv_head_ = 0;  // of the rows being computed
  // Inputs of one (sample, KV head) as the kernels receive them: [token][D] or [token][Dv];
  // q_, d_out_ per head of the group, [group][token][dim].
  std::vector<double> k_, v_, q_, d_out_;
  // Results: values, tolerance parts (see reference_bwd.cc) and counts of pairs summed.
  std::vector<double> dq_, dq_err_, dq_abs_, dk_, dk_err_, dk_abs_, dv_, dv_err_, dv_abs_;
  std::vector<int64_t> dq_terms_, dkv_terms_;
  // One row's scratch: visible keys and per-key values.
  std::vector<int64_t> keys_;
  std::vector<double> score_, sigma_, dp_, tau_;
};

}  // namespace cptune::backends
