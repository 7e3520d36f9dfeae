// The forward kernel and the dtype copies, compiled once per instruction set (backends/CMakeLists.txt):
// CPTUNE_ISA names the variant (baseline, v3, v4) and the build adds its -march. cpu_isa.cc picks
// one at start-up. Why nothing here may be shared with another variant: isa_common.h.
#include "backends/kernels/isa/isa_common.h"  // first: it renames Eigen for this variant

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/isa/attention_cpu_isa.h"

namespace cptune::backends::CPTUNE_ISA_CAT(isa_, CPTUNE_ISA) {
namespace {

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
      : mask_(&mask),
        head_dim_(head_dim),
        v_dim_(v_dim),
        scores_(kQueryTile * kKeyTile),
        acc_(kQueryTile * v_dim),
        max_(kQueryTile),
        sum_(kQueryTile) {}

  // Starts rows [0, rows) at position `first_pos`; q holds their (pre-scaled) rows.
  void start(const float* q, int64_t first_pos, int64_t rows) {
    assert(rows >= 1 && rows <= kQueryTile);
    q_ = q;
    first_pos_ = first_pos;
    rows_ = rows;
    std::fill_n(acc_.data(), rows * v_dim_, 0.0f);
    std::fill_n(max_.data(), rows, kMinusInf);
    std::fill_n(sum_.data(), rows, 0.0f);
  }

  // The window rule add_keys applies from now on (a full, causal or sliding-window mask, not
  // owned): a block mask's spans switch between full and causal.
  void use_rule(const Mask& mask) { mask_ = &mask; }

  int64_t first_pos() const { return first_pos_; }
  int64_t rows() const { return rows_; }

  // Key positions of [lo, hi) that some row of the tile sees (may be empty).
  KeyWindow visible_in(int64_t lo, int64_t hi) const {
    return {std::max(lo, key_window(*mask_, first_pos_).lo), std::min(hi, key_window(*mask_, first_pos_ + rows_ - 1).hi)};
  }

  // Adds keys at positions [key_pos, key_pos + keys) with rows k, v (keys <= kKeyTile).
  void add_keys(const float* k, const float* v, int64_t key_pos, int64_t keys) {
    assert(keys >= 1 && keys <= kKeyTile);
    const ConstMatrixMap q(q_, rows_, head_dim_), kt(k, keys, head_dim_), vt(v, keys, v_dim_);
    MatrixMap scores(scores_.data(), rows_, keys);
    scores.noalias() = q * kt.transpose();
    const bool all_visible = key_window(*mask_, first_pos_ + rows_ - 1).lo <= key_pos &&
                             key_window(*mask_, first_pos_).hi >= key_pos + keys;
    for (int64_t r = 0; r < rows_; ++r) {
      KeyWindow cols{0, keys};
      if (!all_visible) {
        const KeyWindow w = key_window(*mask_, first_pos_ + r);
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

  // Not owned (a copy would instantiate shared_ptr code per ISA); a pointer, so use_rule can switch it.
  const Mask* mask_;
  int64_t head_dim_, v_dim_;
  const float* q_ = nullptr;
  int64_t first_pos_ = 0, rows_ = 0;
  Floats scores_, acc_, max_, sum_;
};

// Keys at positions [lo, hi) of kv_run that the tile sees under its current rule, tile by tile.
void attend_keys(QueryTile& tile, const HeadMajor& k, const HeadMajor& v, int64_t kv_head, const StoredRun& kv_run,
                 int64_t lo, int64_t hi) {
  const KeyWindow keys = tile.visible_in(lo, hi);
  for (int64_t pos = keys.lo; pos < keys.hi; pos += kKeyTile) {
    const int64_t row = kv_run.offset + (pos - kv_run.begin);
    tile.add_keys(k.rows(kv_head, row), v.rows(kv_head, row), pos, std::min(kKeyTile, keys.hi - pos));
  }
}

// Keys of `kv_runs` (runs of the block) that one query tile sees, tile by tile.
void attend_tile(QueryTile& tile, const HeadMajor& k, const HeadMajor& v, int64_t kv_head,
                 std::span<const StoredRun> kv_runs, int32_t seq) {
  for (const StoredRun& kv_run : kv_runs) {
    if (kv_run.seq != seq || kv_run.count == 0) continue;  // other sequences are never visible
    attend_keys(tile, k, v, kv_head, kv_run, kv_run.begin, kv_run.begin + kv_run.count);
  }
}

// A block mask applied to one sequence: its table and the sequence's length, which cuts it into blocks.
struct BlockRules {
  const Mask& mask;
  int64_t len;
};

// The same as attend_tile under a block mask, for a tile inside one query block: each key run
// cut into the spans of its cells, EMPTY cells never visited, FULL spans without a per-element
// test, CAUSAL spans by the causal window.
void attend_tile_blocks(QueryTile& tile, const HeadMajor& k, const HeadMajor& v, int64_t kv_head,
                        std::span<const StoredRun> kv_runs, int32_t seq, const BlockRules& rules) {
  KeySpan spans[kMaxMaskBlocks];
  for (const StoredRun& kv_run : kv_runs) {
    if (kv_run.seq != seq || kv_run.count == 0) continue;
    const int64_t n = block_key_spans(rules.mask, rules.len, tile.first_pos(), tile.rows(), kv_run.begin,
                                      kv_run.begin + kv_run.count, spans);
    for (int64_t s = 0; s < n; ++s) {
      tile.use_rule(span_rule(spans[s].causal));
      attend_keys(tile, k, v, kv_head, kv_run, spans[s].lo, spans[s].hi);
    }
  }
}

}  // namespace

void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params, AttentionState& state) {
  check_attention_arguments(queries, block, params, {state.tokens(), state.q_heads(), state.v_dim()}, "attention");
  const float scale = params.scale.value_or(1.0f / std::sqrt(static_cast<float>(queries.q.dim)));
  const HeadMajor q(queries.q, scale), k(block.k, 1.0f), v(block.v, 1.0f);
  QueryTile tile(params.mask, queries.q.dim, block.v.dim);
  const bool blocks = params.mask.kind == MaskKind::blocks;
  for (const StoredRun& q_run : queries.runs) {
    // check_attention_arguments made sure a block mask has the length of every run's sequence.
    const int64_t len = blocks ? params.seq_lens[static_cast<size_t>(q_run.seq)] : 0;
    const BlockRules rules{params.mask, len};
    for (int64_t t0 = 0, rows = 0; t0 < q_run.count; t0 += rows) {
      const int64_t pos = q_run.begin + t0;
      // Under a block mask a tile stops at its query block's end, so one table row covers it.
      rows = query_tile_rows(q_run, t0, kQueryTile, params.mask, len);
      for (int64_t h = 0; h < queries.q.heads; ++h) {
        tile.start(q.rows(h, q_run.offset + t0), pos, rows);
        if (blocks)
          attend_tile_blocks(tile, k, v, params.heads.kv_of(h), block.runs, q_run.seq, rules);
        else
          attend_tile(tile, k, v, params.heads.kv_of(h), block.runs, q_run.seq);
        tile.merge_into(state, q_run.offset + t0, h);
      }
    }
  }
}

void gemm_abt(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k) {
  MatrixMap(c, m, n).noalias() = ConstMatrixMap(a, m, k) * ConstMatrixMap(b, n, k).transpose();
}

void to_float(const void* src, DType dtype, float* dst, int64_t elems) {
  assert(elems >= 0);
  widen_to(src, dtype, dst, elems);
}

void from_float(const float* src, DType dtype, void* dst, int64_t elems) {
  assert(elems >= 0);
  switch (dtype) {
    case DType::bf16:
      return narrow<Eigen::bfloat16>(src, dst, elems);
    case DType::fp16:
      return narrow<Eigen::half>(src, dst, elems);
    case DType::fp32:
      if (elems > 0) std::memcpy(dst, src, static_cast<size_t>(elems) * sizeof(float));
      return;
  }
}

}  // namespace cptune::backends::CPTUNE_ISA_CAT(isa_, CPTUNE_ISA)
