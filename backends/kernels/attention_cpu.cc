#include "backends/kernels/attention_cpu.h"

#include <fmt/format.h>

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>

#include "backends/kernels/attention.h"
#include "backends/kernels/cpu_isa.h"
#include "backends/kernels/dtype_convert.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// ---- the naive reference ----------------------------------------------------------------------

// One head of a tensor, [tokens][dim], in double (exact for every storage dtype).
RowMatrixD head_in_double(const TensorView& t, int64_t head) {
  RowMatrixD out(t.tokens, t.dim);
  std::vector<float> row(static_cast<size_t>(t.dim));
  const auto* src = static_cast<const unsigned char*>(t.data);
  for (int64_t token = 0; token < t.tokens; ++token) {
    to_float(src + (token * t.heads + head) * t.dim * dtype_bytes(t.dtype), t.dtype, row.data(), t.dim);
    out.row(token) = Eigen::Map<const Eigen::VectorXf>(row.data(), t.dim).cast<double>().transpose();
  }
  return out;
}

// Softmax(scale q.k) V for one query row over every visible key, two passes over the scores.
void reference_row(const RowMatrixD& q, const RowMatrixD& k, const RowMatrixD& v, int64_t q_row, int64_t pos,
                   const StoredRun& q_run, const KvBlock& keys, const Mask& mask, int64_t len, double scale, float* out,
                   float& lse) {
  std::vector<double> scores;
  std::vector<int64_t> key_rows;
  for (const StoredRun& run : keys.runs) {
    if (run.seq != q_run.seq) continue;
    for (int64_t t = 0; t < run.count; ++t) {
      if (!mask.sees(pos, run.begin + t, len)) continue;  // the definition, not the kernel's tiling
      scores.push_back(scale * q.row(q_row).dot(k.row(run.offset + t)));
      key_rows.push_back(run.offset + t);
    }
  }
  Eigen::Map<Eigen::VectorXf> o(out, v.cols());
  if (scores.empty()) {
    o.setZero();
    lse = kMinusInf;
    return;
  }
  const double max = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  Eigen::VectorXd acc = Eigen::VectorXd::Zero(v.cols());
  for (size_t i = 0; i < scores.size(); ++i) {
    const double p = std::exp(scores[i] - max);
    sum += p;
    acc += p * v.row(key_rows[i]).transpose();
  }
  o = (acc / sum).cast<float>();
  lse = static_cast<float>(max + std::log(sum));
}

}  // namespace

AttentionState::AttentionState(int64_t tokens, int64_t q_heads, int64_t v_dim)
    : tokens_(tokens), q_heads_(q_heads), v_dim_(v_dim) {
  if (tokens < 0 || q_heads < 1 || v_dim < 1)
    throw Error(fmt::format("attention state: tokens={} q_heads={} v_dim={}; need tokens >= 0, heads and dims >= 1",
                            tokens, q_heads, v_dim));
  clear();
}

void AttentionState::clear() {
  out_.assign(static_cast<size_t>(tokens_ * q_heads_ * v_dim_), 0.0f);
  lse_.assign(static_cast<size_t>(tokens_ * q_heads_), kMinusInf);
}

// The blocked kernel lives in isa/attention_cpu_isa.cc, built once per instruction set.
void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params, AttentionState& state) {
  active_cpu_kernels().attend(queries, block, params, state);
}

void reference_attention(const Queries& queries, const KvBlock& keys, const AttentionParams& params,
                         AttentionState& state) {
  check_attention_arguments(queries, keys, params, {state.tokens(), state.q_heads(), state.v_dim()}, "attention");
  const double scale = params.scale ? double{*params.scale} : 1.0 / std::sqrt(static_cast<double>(queries.q.dim));
  for (int64_t h = 0; h < queries.q.heads; ++h) {
    const int64_t kv = params.heads.kv_of(h);
    const RowMatrixD q = head_in_double(queries.q, h), k = head_in_double(keys.k, kv), v = head_in_double(keys.v, kv);
    for (const StoredRun& run : queries.runs)
      for (int64_t t = 0; t < run.count; ++t)
        reference_row(q, k, v, run.offset + t, run.begin + t, run, keys, params.mask,
                      seq_len_of(params, run.seq), scale,
                      state.out_row(run.offset + t, h), state.lse_at(run.offset + t, h));
  }
}

void store_output(const AttentionState& state, DType dtype, void* out, int64_t out_bytes) {
  const auto elems = static_cast<int64_t>(state.out().size());
  if (out_bytes < elems * dtype_bytes(dtype))
    throw Error(fmt::format("attention: output buffer of {} bytes is smaller than O ({} {} values, {} bytes)",
                            out_bytes, elems, to_string(dtype), elems * dtype_bytes(dtype)));
  from_float(state.out().data(), dtype, out, elems);
}

}  // namespace cptune::backends
