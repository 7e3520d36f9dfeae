#include "backends/exec/reference.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "backends/exec/reference_rounding.h"
#include "backends/exec/tensor_gen.h"

namespace cptune::backends {

using namespace reference_rounding;

Reference::Reference(const AttentionShape& shape, uint64_t seed, const GivenInputs* given,
                     bool probabilities_in_storage)
    : shape_(shape), seed_(seed), given_(given), probabilities_in_storage_(probabilities_in_storage) {
  int64_t begin = 0;
  for (int64_t len : shape.seq_lens) {
    seq_begin_.push_back(begin);
    begin += len;
  }
}

void Reference::load_kv(int64_t sample, int64_t kv_head) {
  if (sample == loaded_sample_ && kv_head == loaded_kv_) return;
  const int64_t D = shape_.head_dim, Dv = shape_.v_head_dim, total = shape_.total_tokens();
  k_.resize(static_cast<size_t>(total * D));
  v_.resize(static_cast<size_t>(total * Dv));
  for (size_t s = 0; s < shape_.seq_lens.size(); ++s)
    for (int64_t j = 0; j < shape_.seq_lens[s]; ++j) {
      const int64_t t = seq_begin_[s] + j;
      const auto seq = static_cast<int64_t>(s);
      stored_input({k_.data() + t * D, static_cast<size_t>(D)}, seed_, given_, Tensor::k, seq, j, sample, kv_head, shape_.dtype);
      stored_input({v_.data() + t * Dv, static_cast<size_t>(Dv)}, seed_, given_, Tensor::v, seq, j, sample, kv_head, shape_.dtype);
    }
  loaded_sample_ = sample;
  loaded_kv_ = kv_head;
}

// The row from the definition: scores s_j = scale q.k_j for every key j the mask shows,
// p_j = exp(s_j - m) with m = max s_j, Z = sum p_j, O_d = sum p_j v_jd / Z (all in double).
//
// Tolerance of element d, with u = 2^-24 (fp32), u_s the storage dtype's unit roundoff, e_s half
// its subnormal spacing, gamma_k = k u / (1 - k u), n the keys the row sees, D the head dim:
//   tol_d = u_s |O_d| + e_s + (1 + u_s) eps a_d,        a_d = sum p_j |v_jd| / Z  (<= max |v|)
//   eps   = 2 gamma_{D+1} sigma            scores: a dot product of D terms and the scale, each
//                                          s_j off by <= gamma_{D+1} sigma, sigma = max_j
//                                          scale sum_d |q_d k_jd|; moves O by <= 2 (that) a_d
//         + 2 gamma_n + 8 u                the sums of p_j v_jd and of p_j, the exps, the division
//         + 2 M (2 L + 6) u                M = ceil(n / 32) + 16 log-sum-exp merges (key tiles of
//                                          >= 32 keys, ring or gathered blocks), each LSE off by
//                                          <= (L + 3) u with L = |m| + log Z the LSE's size
// The first term is the one rounding of O to the storage dtype: no absolute tolerance assumes
// |O| ~ 1 (|O| is ~ 1/sqrt(n) for these random inputs).
// A kernel that rounds each p_j to the storage dtype before P V (the CUDA kernel: P enters the
// bf16 / fp16 mma; Z sums the fp32 p_j) moves O_d by sum_j |rn(p_j) - p_j| |v_jd| / Z <= u_s a_d:
// eps grows by u_s. Measured on an H200 before this term: worst error / tolerance 4 to 39 on
// every --verify run; the error is that rounding, not a wrong key (those still fail, see
// GpuExecutor.AKernelMissingAKeyFailsVerification).
void Reference::row(const RowId& id, std::span<double> out, std::span<double> tol) {
  const int64_t D = shape_.head_dim, Dv = shape_.v_head_dim;
  assert(static_cast<int64_t>(out.size()) == Dv && static_cast<int64_t>(tol.size()) == Dv);
  const int64_t kv_head = id.head / (shape_.q_heads / shape_.kv_heads);
  load_kv(id.sample, kv_head);
  std::vector<double> q(static_cast<size_t>(D));
  stored_input(q, seed_, given_, Tensor::q, id.seq, id.pos, id.sample, id.head, shape_.dtype);
  const double scale = 1.0 / std::sqrt(double(D));
  const int64_t first = seq_begin_[static_cast<size_t>(id.seq)], len = shape_.seq_lens[static_cast<size_t>(id.seq)];

  scores_.assign(static_cast<size_t>(len), -std::numeric_limits<double>::infinity());
  double m = -std::numeric_limits<double>::infinity(), sigma = 0;
  int64_t n = 0;
  for (int64_t j = 0; j < len; ++j) {
    if (!shape_.mask.sees(id.pos, j, len)) continue;
    const double* k = k_.data() + (first + j) * D;
    double dot = 0, mag = 0;
    for (int64_t d = 0; d < D; ++d) {
      dot += q[d] * k[d];
      mag += std::fabs(q[d] * k[d]);
    }
    scores_[static_cast<size_t>(j)] = scale * dot;
    m = std::max(m, scale * dot);
    sigma = std::max(sigma, scale * mag);
    ++n;
  }
  std::fill(out.begin(), out.end(), 0.0);
  std::vector<double> abs_sum(static_cast<size_t>(Dv), 0.0);
  double z = 0;
  for (int64_t j = 0; j < len && n > 0; ++j) {
    if (!shape_.mask.sees(id.pos, j, len)) continue;
    const double p = std::exp(scores_[static_cast<size_t>(j)] - m);
    const double* v = v_.data() + (first + j) * Dv;
    z += p;
    for (int64_t d = 0; d < Dv; ++d) {
      out[d] += p * v[d];
      abs_sum[d] += p * std::fabs(v[d]);
    }
  }
  const double us = storage_unit(shape_.dtype), es = storage_subnormal(shape_.dtype);
  const double lse = n > 0 ? std::fabs(m) + std::log(z) : 0;
  const double merges = std::ceil(double(n) / 32) + 16;
  const double eps = 2 * fp32_gamma(double(D + 1)) * sigma + 2 * fp32_gamma(double(n)) + 8 * kU32 +
                     2 * merges * (2 * lse + 6) * kU32 + (probabilities_in_storage_ ? us : 0.0);
  for (int64_t d = 0; d < Dv; ++d) {
    if (n > 0) {
      out[d] /= z;
      abs_sum[d] /= z;
    }
    tol[d] = us * std::fabs(out[d]) + es + (1 + us) * eps * abs_sum[d];
  }
}

void RowCheck::add(double err, double tol) {
  // A NaN or infinity in the output or the reference (a non-finite input reaches both) never
  // passes: NaN compares false, so a NaN ratio would slip past std::max and the <= 1 test.
  const bool finite = std::isfinite(err) && std::isfinite(tol);
  if (!finite) err = std::numeric_limits<double>::infinity();
  max_abs_err = std::max(max_abs_err, err);
  if (std::isfinite(tol)) max_tolerance = std::max(max_tolerance, tol);
  const double ratio = !finite ? std::numeric_limits<double>::infinity() : err == 0 ? 0 : err / tol;
  worst_ratio = std::max(worst_ratio, ratio);
}

void RowCheck::merge(const RowCheck& other) {
  max_abs_err = std::max(max_abs_err, other.max_abs_err);
  max_tolerance = std::max(max_tolerance, other.max_tolerance);
  worst_ratio = std::max(worst_ratio, other.worst_ratio);
  rows += other.rows;
}

}  // namespace cptune::backends
