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
#include "backends/kernels/dtype_convert.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

// Query rows x key rows per tile: a 64x64 fp32 score tile and the 64-row Q and K, V slices
// (D, Dv <= 128) stay in L1/L2 while Eigen multiplies them.
constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<RowMatrix>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;
using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

float scale_of(const AttentionParams& params, int64_t head_dim) {
  return params.scale.value_or(1.0f / std::sqrt(static_cast<float>(head_dim)));
}

// ---- the mask as key ranges -----------------------------------------------------------------


// ---- fp32 head-major copies -----------------------------------------------------------------

// A tensor widened to fp32 (times `scale`) and regrouped [heads][tokens][dim], so each head's
// rows form one dense matrix for the tile products.
class HeadMajor {
 public:
  HeadMajor(const TensorView& t, float scale)
      : tokens_(t.tokens), dim_(t.dim), data_(static_cast<size_t>(t.tokens * t.heads * t.dim)) {
    const auto* src = static_cast<const unsigned char*>(t.data);
    const int64_t row_bytes = t.dim * dtype_bytes(t.dtype);
    for (int64_t token = 0; token < t.tokens; ++token)
      for (int64_t head = 0; head < t.heads; ++head)
        to_float(src + (token * t.heads + head) * row_bytes, t.dtype, mutable_rows(head, token), t.dim);
    if (scale != 1.0f) Eigen::Map<Eigen::ArrayXf>(data_.data(), static_cast<Eigen::Index>(data_.size())) *= scale;
  }
  const float* rows(int64_t head, int64_t token) const { return data_.data() + (head * tokens_ + token) * dim_; }

 private:
  float* mutable_rows(int64_t head, int64_t token) { return data_.data() + (head * tokens_ + token) * dim_; }
  int64_t tokens_, dim_;
  std::vector<float> data_;
};

// ---- merge by log-sum-exp -------------------------------------------------------------------

// Merges a partial result (unnormalised output `acc` with softmax sum `sum` and LSE lse_b) into
// a state row. Empty partials never reach here, so lse_b is finite and nothing becomes NaN.
void merge_row(float* out, float& lse, const float* acc, float sum, float lse_b, int64_t v_dim) {
  Eigen::Map<Eigen::ArrayXf> o(out, v_dim);
  const Eigen::Map<const Eigen::ArrayXf> partial(acc, v_dim);
  if (lse == kMinusInf) {
    o = partial / sum;
    lse = lse_b;
    return;
  }
  const float merged = std::max(lse, lse_b) + std::log1p(std::exp(-std::abs(lse - lse_b)));
  const float weight_a = std::exp(lse - merged);
  const float weight_b = std::exp(lse_b - merged) / sum;
  o = o * weight_a + partial * weight_b;
  lse = merged;
}

// ---- one query tile, one head: flash attention over key tiles ---------------------------------

// Online softmax of up to kQueryTile consecutive query rows of one run and one head across the
// key tiles of one attend() call: running max, running sum and unnormalised output per row.
class QueryTile {
 public:
  QueryTile(const Mask& mask, int64_t head_dim, int64_t v_dim)
      : mask_(mask),
        head_dim_(head_dim),
        v_dim_(v_dim),
        scores_(static_cast<size_t>(kQueryTile * kKeyTile)),
        acc_(static_cast<size_t>(kQueryTile * v_dim)),
        max_(kQueryTile),
        sum_(kQueryTile) {}

  // Starts rows [0, rows) at position `first_pos`; q holds their (pre-scaled) rows.
  void start(const float* q, int64_t first_pos, int64_t rows) {
    assert(rows >= 1 && rows <= kQueryTile);
    q_ = q;
    first_pos_ = first_pos;
    rows_ = rows;
    std::fill_n(acc_.begin(), rows * v_dim_, 0.0f);
    std::fill_n(max_.begin(), rows, kMinusInf);
    std::fill_n(sum_.begin(), rows, 0.0f);
  }

  // Key positions of `run` that some row of the tile sees (may be empty).
  KeyWindow visible_in(const StoredRun& run) const {
    return {std::max(run.begin, key_window(mask_, first_pos_).lo),
            std::min(run.begin + run.count, key_window(mask_, first_pos_ + rows_ - 1).hi)};
  }

  // Adds keys at positions [key_pos, key_pos + keys) with rows k, v (keys <= kKeyTile).
  void add_keys(const float* k, const float* v, int64_t key_pos, int64_t keys) {
    assert(keys >= 1 && keys <= kKeyTile);
    const ConstMatrixMap q(q_, rows_, head_dim_), kt(k, keys, head_dim_), vt(v, keys, v_dim_);
    MatrixMap scores(scores_.data(), rows_, keys);
    scores.noalias() = q * kt.transpose();
    const bool all_visible =
        key_window(mask_, first_pos_ + rows_ - 1).lo <= key_pos && key_window(mask_, first_pos_).hi >= key_pos + keys;
    for (int64_t r = 0; r < rows_; ++r) {
      KeyWindow cols{0, keys};
      if (!all_visible) {
        const KeyWindow w = key_window(mask_, first_pos_ + r);
        cols = {std::clamp(w.lo - key_pos, int64_t{0}, keys), std::clamp(w.hi - key_pos, int64_t{0}, keys)};
      }
      softmax_row(r, cols, keys);
    }
    MatrixMap(acc_.data(), rows_, v_dim_).noalias() += scores * vt;
  }

  // Merges every row that saw a key into state rows [first_row, first_row + rows) of `head`.
  void merge_into(AttentionState& state, int64_t first_row, int64_t head) const {
    for (int64_t r = 0; r < rows_; ++r) {
      if (sum_[r] == 0.0f) continue;
      merge_row(state.out_row(first_row + r, head), state.lse_at(first_row + r, head), acc_.data() + r * v_dim_,
                sum_[r], max_[r] + std::log(sum_[r]), v_dim_);
    }
  }

 private:
  // Turns score row r into softmax weights over its visible columns [cols.lo, cols.hi) (the
  // rest become 0) and rescales the row's running sum and output to the new maximum.
  void softmax_row(int64_t r, KeyWindow cols, int64_t keys) {
    float* s = scores_.data() + r * keys;
    if (cols.lo >= cols.hi) {
      std::fill_n(s, keys, 0.0f);
      return;
    }
    Eigen::Map<Eigen::ArrayXf> visible(s + cols.lo, cols.hi - cols.lo);
    const float new_max = std::max(max_[r], visible.maxCoeff());
    const float rescale = std::exp(max_[r] - new_max);  // exp(-inf) = 0 on the first keys
    visible = (visible - new_max).exp();
    std::fill(s, s + cols.lo, 0.0f);
    std::fill(s + cols.hi, s + keys, 0.0f);
    sum_[r] = sum_[r] * rescale + visible.sum();
    if (rescale != 1.0f) Eigen::Map<Eigen::ArrayXf>(acc_.data() + r * v_dim_, v_dim_) *= rescale;
    max_[r] = new_max;
  }

  Mask mask_;
  int64_t head_dim_, v_dim_;
  const float* q_ = nullptr;
  int64_t first_pos_ = 0, rows_ = 0;
  std::vector<float> scores_, acc_, max_, sum_;
};

// Runs of the block in the same sequence as `run`: only those can be visible.
std::vector<const StoredRun*> same_sequence(const StoredRun& run, std::span<const StoredRun> runs) {
  std::vector<const StoredRun*> out;
  for (const StoredRun& other : runs)
    if (other.seq == run.seq && other.count > 0) out.push_back(&other);
  return out;
}

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
                   const StoredRun& q_run, const KvBlock& keys, const Mask& mask, double scale, float* out,
                   float& lse) {
  std::vector<double> scores;
  std::vector<int64_t> key_rows;
  for (const StoredRun& run : keys.runs) {
    if (run.seq != q_run.seq) continue;
    for (int64_t t = 0; t < run.count; ++t) {
      if (!mask.sees(pos, run.begin + t)) continue;  // the definition, not the kernel's tiling
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

void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params, AttentionState& state) {
  check_attention_arguments(queries, block, params, {state.tokens(), state.q_heads(), state.v_dim()}, "attention");
  const HeadMajor q(queries.q, scale_of(params, queries.q.dim)), k(block.k, 1.0f), v(block.v, 1.0f);
  QueryTile tile(params.mask, queries.q.dim, block.v.dim);
  for (const StoredRun& q_run : queries.runs) {
    const std::vector<const StoredRun*> kv_runs = same_sequence(q_run, block.runs);
    if (kv_runs.empty()) continue;
    for (int64_t t0 = 0; t0 < q_run.count; t0 += kQueryTile) {
      const int64_t rows = std::min(kQueryTile, q_run.count - t0);
      for (int64_t h = 0; h < queries.q.heads; ++h) {
        const int64_t kv = params.heads.kv_of(h);
        tile.start(q.rows(h, q_run.offset + t0), q_run.begin + t0, rows);
        for (const StoredRun* kv_run : kv_runs) {
          const KeyWindow keys = tile.visible_in(*kv_run);
          for (int64_t pos = keys.lo; pos < keys.hi; pos += kKeyTile) {
            const int64_t row = kv_run->offset + (pos - kv_run->begin);
            tile.add_keys(k.rows(kv, row), v.rows(kv, row), pos, std::min(kKeyTile, keys.hi - pos));
          }
        }
        tile.merge_into(state, q_run.offset + t0, h);
      }
    }
  }
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
        reference_row(q, k, v, run.offset + t, run.begin + t, run, keys, params.mask, scale,
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
