#include "backends/exec/reference_bwd.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "backends/exec/reference_rounding.h"

namespace cptune::backends {

using namespace reference_rounding;

namespace {

// Absolute error of one fp32 probability near underflow: exp flushes or goes subnormal below
// FLT_MIN (2^-126); twice that covers either.
constexpr double kUnderflowP = 0x1.0p-125;
// Absolute error of one fp32 product or sum in the subnormal range (half its spacing, 2^-150), doubled.
constexpr double kUnderflowOp = 0x1.0p-149;

}  // namespace

BackwardReference::BackwardReference(const AttentionShape& shape, uint64_t seed, const GivenInputs* given,
                                     BackwardReferenceOptions options)
    : shape_(shape),
      seed_(seed),
      given_(given),
      options_(options),
      forward_(shape, seed, given, options.probabilities_in_storage) {
  int64_t begin = 0;
  for (int64_t len : shape.seq_lens) {
    seq_begin_.push_back(begin);
    begin += len;
  }
}

void BackwardReference::load(int64_t sample, int64_t kv_head) {
  if (sample == loaded_sample_ && kv_head == loaded_kv_) return;
  const int64_t D = shape_.head_dim, Dv = shape_.v_head_dim, total = shape_.total_tokens(),
                group = shape_.group_size();
  const auto sz = [](int64_t n) { return static_cast<size_t>(n); };
  k_.assign(sz(total * D), 0.0);
  v_.assign(sz(total * Dv), 0.0);
  q_.assign(sz(group * total * D), 0.0);
  d_out_.assign(sz(group * total * Dv), 0.0);
  for (size_t s = 0; s < shape_.seq_lens.size(); ++s)
    for (int64_t j = 0; j < shape_.seq_lens[s]; ++j) {
      const int64_t t = seq_begin_[s] + j;
      const auto seq = static_cast<int64_t>(s);
      stored_input({k_.data() + t * D, static_cast<size_t>(D)}, seed_, given_, Tensor::k, seq, j, sample, kv_head, shape_.dtype);
      stored_input({v_.data() + t * Dv, static_cast<size_t>(Dv)}, seed_, given_, Tensor::v, seq, j, sample, kv_head, shape_.dtype);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t head = kv_head * group + g;
        stored_input({q_.data() + (g * total + t) * D, static_cast<size_t>(D)}, seed_, given_, Tensor::q, seq, j, sample, head, shape_.dtype);
        stored_input({d_out_.data() + (g * total + t) * Dv, static_cast<size_t>(Dv)}, seed_, given_, kGradOutput, seq, j, sample, head,
                 shape_.dtype);
      }
    }
  for (auto* v : {&dq_, &dq_err_, &dq_abs_}) v->assign(sz(group * total * D), 0.0);
  for (auto* v : {&dk_, &dk_err_, &dk_abs_}) v->assign(sz(total * D), 0.0);
  for (auto* v : {&dv_, &dv_err_, &dv_abs_}) v->assign(sz(total * Dv), 0.0);
  dq_terms_.assign(sz(group * total), 0);
  dkv_terms_.assign(sz(total), 0);
  sample_ = sample;
  kv_head_ = kv_head;
  for (int64_t g = 0; g < group; ++g)
    for (size_t s = 0; s < shape_.seq_lens.size(); ++s)
      for (int64_t i = 0; i < shape_.seq_lens[s]; ++i) backward_row(g, static_cast<int64_t>(s), i);
  loaded_sample_ = sample;
  loaded_kv_ = kv_head;
}

// One query row's terms, from the definition, and what each may be off by in the kernel.
//
// The kernel (fp32, u = 2^-24, gamma_k = k u / (1 - k u)) recomputes for each visible pair
//   s_ij  off by <= gamma_{D+1} sigma_ij     sigma_ij = scale sum_d |q_id k_jd| (a D-term dot of
//                                            pre-scaled q)
//   P_ij = exp(s_ij - LSE_i) with the forward's fp32 LSE, off by <= eps_L from the exact L_i:
//     eps_L = gamma_{D+1} max_j sigma_ij + M (2 L + 6) u, the forward's bound (reference.cc):
//     M = ceil(n / 32) + 16 merges, L = |m| + log Z its size
//   so |P^_ij - P_ij| <= P_ij (gamma_{D+1} sigma_ij + eps_L + u |s_ij - L_i| + 4u) + 2^-125 =: errP_ij
//     (the subtraction, the exp and its rounding; the last term: exp near fp32 underflow)
//   dP_ij = dO_i . v_j    off by <= gamma_{Dv} tau_ij,  tau_ij = sum_d |dO_id v_jd|
//   D_i = dO_i . O_i      off by <= e_D = gamma_{Dv} sum_d |dO_id O_id| + sum_d |dO_id| tol_O,d
//                         (O as the kernel was given it, within the forward reference's tol_O)
//   dS_ij = P (dP - D)    off by <= errP_ij |g| + P (gamma_{Dv} tau_ij + e_D + 2u |g|),  g = dP_ij - D_i
// and sums the pairs: dQ_i = scale sum_j dS_ij k_j, dK_j = scale sum_i dS_ij q_i,
// dV_j = sum_i P_ij dO_i. A sum of n products in any order (tiles, ring steps, ranks) is off by
// <= gamma_n sum |terms| beyond its terms' own errors; the products and the scale add 3 more
// roundings. So for element d of each gradient, with A = sum |terms| and E = sum |term error|:
//   tol = (1 + u_s) (E + gamma_{n+3} A + storage_sums u_s A + (n + 3) 2^-149) + u_s |g_d| + e_s
// (u_s, e_s: the storage dtype's unit roundoff and half subnormal spacing, one final rounding;
// n: the pairs summed, i.e. keys the row sees for dQ, (query, head) pairs that see the key for
// dK, dV). First order: the products of two error terms are below u times the terms kept.
void BackwardReference::backward_row(int64_t g, int64_t seq, int64_t pos) {
  const int64_t D = shape_.head_dim, Dv = shape_.v_head_dim, total = shape_.total_tokens();
  const int64_t first = seq_begin_[static_cast<size_t>(seq)], len = shape_.seq_lens[static_cast<size_t>(seq)];
  const int64_t row = first + pos;
  const double scale = 1.0 / std::sqrt(double(D));
  const double* q = q_.data() + (g * total + row) * D;
  const double* d_out = d_out_.data() + (g * total + row) * Dv;

  keys_.clear();
  score_.clear();
  sigma_.clear();
  double m = -std::numeric_limits<double>::infinity(), sigma_max = 0;
  for (int64_t j = 0; j < len; ++j) {
    if (!shape_.mask.sees(pos, j, len)) continue;
    const double* k = k_.data() + (first + j) * D;
    double dot = 0, mag = 0;
    for (int64_t d = 0; d < D; ++d) {
      dot += q[d] * k[d];
      mag += std::fabs(q[d] * k[d]);
    }
    keys_.push_back(first + j);
    score_.push_back(scale * dot);
    sigma_.push_back(scale * mag);
    m = std::max(m, scale * dot);
    sigma_max = std::max(sigma_max, scale * mag);
  }
  const auto n = static_cast<int64_t>(keys_.size());
  if (n == 0) return;  // sees nothing: every gradient term is zero
  double z = 0;
  for (double s : score_) z += std::exp(s - m);
  const double lse = m + std::log(z);

  // D from the definition, dP and tau per key.
  dp_.assign(static_cast<size_t>(n), 0.0);
  tau_.assign(static_cast<size_t>(n), 0.0);
  double delta = 0;
  for (int64_t x = 0; x < n; ++x) {
    const double* v = v_.data() + keys_[x] * Dv;
    double dot = 0, mag = 0;
    for (int64_t d = 0; d < Dv; ++d) {
      dot += d_out[d] * v[d];
      mag += std::fabs(d_out[d] * v[d]);
    }
    dp_[x] = dot;
    tau_[x] = mag;
    delta += std::exp(score_[x] - lse) * dot;
  }

  // D's error in the kernel, from O as the forward reference bounds it.
  std::vector<double> o(static_cast<size_t>(Dv)), o_tol(o.size());
  forward_.row({sample_, seq, pos, kv_head_ * shape_.group_size() + g}, o, o_tol);
  double e_delta = 0, abs_delta = 0;
  for (int64_t d = 0; d < Dv; ++d) {
    abs_delta += std::fabs(d_out[d] * o[d]);
    e_delta += std::fabs(d_out[d]) * o_tol[d];
  }
  e_delta += fp32_gamma(double(Dv)) * abs_delta;

  const double merges = std::ceil(double(n) / 32) + 16;
  const double eps_lse = fp32_gamma(double(D + 1)) * sigma_max + merges * (2 * (std::fabs(m) + std::log(z)) + 6) * kU32;
  double* dq = dq_.data() + (g * total + row) * D;
  double* dq_err = dq_err_.data() + (g * total + row) * D;
  double* dq_abs = dq_abs_.data() + (g * total + row) * D;
  for (int64_t x = 0; x < n; ++x) {
    const int64_t j = keys_[x];
    const double p = std::exp(score_[x] - lse);
    const double p_err =
        p * (fp32_gamma(double(D + 1)) * sigma_[x] + eps_lse + kU32 * std::fabs(score_[x] - lse) + 4 * kU32) + kUnderflowP;
    const double gap = dp_[x] - delta;
    const double ds = p * gap;
    const double ds_err = p_err * std::fabs(gap) + p * (fp32_gamma(double(Dv)) * tau_[x] + e_delta + 2 * kU32 * std::fabs(gap));
    const double* k = k_.data() + j * D;
    double* dk = dk_.data() + j * D;
    double* dk_err = dk_err_.data() + j * D;
    double* dk_abs = dk_abs_.data() + j * D;
    for (int64_t d = 0; d < D; ++d) {
      dq[d] += scale * ds * k[d];
      dq_err[d] += scale * ds_err * std::fabs(k[d]);
      dq_abs[d] += scale * std::fabs(ds * k[d]);
      dk[d] += scale * ds * q[d];
      dk_err[d] += scale * ds_err * std::fabs(q[d]);
      dk_abs[d] += scale * std::fabs(ds * q[d]);
    }
    double* dv = dv_.data() + j * Dv;
    double* dv_err = dv_err_.data() + j * Dv;
    double* dv_abs = dv_abs_.data() + j * Dv;
    for (int64_t d = 0; d < Dv; ++d) {
      dv[d] += p * d_out[d];
      dv_err[d] += p_err * std::fabs(d_out[d]);
      dv_abs[d] += p * std::fabs(d_out[d]);
    }
    ++dkv_terms_[static_cast<size_t>(j)];
  }
  dq_terms_[static_cast<size_t>(g * total + row)] = n;
}

namespace {

// The tolerance formula of backward_row's comment, for `dim` elements of one row.
void finish(const double* value, const double* err, const double* abs, int64_t terms, int64_t dim, DType dtype,
            int64_t storage_sums, std::span<double> out, std::span<double> tol) {
  assert(static_cast<int64_t>(out.size()) == dim && static_cast<int64_t>(tol.size()) == dim);
  const double us = storage_unit(dtype), es = storage_subnormal(dtype), n = double(terms);
  for (int64_t d = 0; d < dim; ++d) {
    out[d] = value[d];
    tol[d] = (1 + us) * (err[d] + (fp32_gamma(n + 3) + double(storage_sums) * us) * abs[d] + (n + 3) * kUnderflowOp) +
             us * std::fabs(value[d]) + es;
  }
}

}  // namespace

void BackwardReference::dq_row(const RowId& id, std::span<double> out, std::span<double> tol) {
  const int64_t group = shape_.group_size(), D = shape_.head_dim, total = shape_.total_tokens();
  load(id.sample, id.head / group);
  const int64_t at = (id.head % group) * total + seq_begin_[static_cast<size_t>(id.seq)] + id.pos;
  finish(dq_.data() + at * D, dq_err_.data() + at * D, dq_abs_.data() + at * D, dq_terms_[static_cast<size_t>(at)], D,
         shape_.dtype, options_.storage_sums, out, tol);
}

void BackwardReference::dk_row(const RowId& id, std::span<double> out, std::span<double> tol) {
  const int64_t D = shape_.head_dim;
  load(id.sample, id.head);
  const int64_t at = seq_begin_[static_cast<size_t>(id.seq)] + id.pos;
  finish(dk_.data() + at * D, dk_err_.data() + at * D, dk_abs_.data() + at * D, dkv_terms_[static_cast<size_t>(at)], D,
         shape_.dtype, options_.storage_sums, out, tol);
}

void BackwardReference::dv_row(const RowId& id, std::span<double> out, std::span<double> tol) {
  const int64_t Dv = shape_.v_head_dim;
  load(id.sample, id.head);
  const int64_t at = seq_begin_[static_cast<size_t>(id.seq)] + id.pos;
  finish(dv_.data() + at * Dv, dv_err_.data() + at * Dv, dv_abs_.data() + at * Dv, dkv_terms_[static_cast<size_t>(at)],
         Dv, shape_.dtype, options_.storage_sums, out, tol);
}

}  // namespace cptune::backends
