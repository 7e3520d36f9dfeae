// The backward kernel (attend_backward() of attention_cpu.h), compiled once per instruction set
// like the forward (backends/CMakeLists.txt; why nothing here may be shared: isa_common.h).
//
// FlashAttention-2's backward (attention_backward.h) on the forward's tiles: for each query tile
// (query_tile_rows: one query block under a block mask) and head, over the key tiles its rows see
// (the key window, or block_key_spans), recompute S = (scale Q) K^T, P = exp(S - LSE), then
//   dV += P^T dO,  dP = dO V^T,  dS = P o (dP - D),  dQ += dS K,  dK += dS^T (scale Q)
// dQ of the tile stays in cache until its keys are done; dK, dV gather in head-major fp32
// buffers and are added into the caller's gradients once at the end.
#include "backends/kernels/isa/isa_common.h"  // first: it renames Eigen for this variant

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "backends/kernels/attention_backward.h"
#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/isa/attention_cpu_isa.h"

namespace cptune::backends::CPTUNE_ISA_CAT(isa_, CPTUNE_ISA) {
namespace {

// fp32 zeros [heads][tokens][dim]: one dense matrix per head, rows addressed like a HeadMajor.
class HeadMajorGrad {
 public:
  HeadMajorGrad(int64_t tokens, int64_t heads, int64_t dim) : tokens_(tokens), dim_(dim), data_(tokens * heads * dim) {
    std::fill_n(data_.data(), tokens * heads * dim, 0.0f);
  }
  float* rows(int64_t head, int64_t token) { return data_.data() + (head * tokens_ + token) * dim_; }

  // Adds every row of `runs` into the caller's gradient [tokens][heads][dim].
  void add_to(const GradView& grad, std::span<const StoredRun> runs) {
    for (const StoredRun& run : runs)
      for (int64_t token = run.offset; token < run.offset + run.count; ++token)
        for (int64_t head = 0; head < grad.heads; ++head)
          Eigen::Map<Eigen::ArrayXf>(grad.row(token, head), dim_) += Eigen::Map<const Eigen::ArrayXf>(rows(head, token), dim_);
  }

 private:
  int64_t tokens_, dim_;
  Floats data_;
};

// Up to kQueryTile consecutive query rows of one run and one head: their (pre-scaled) Q, dO,
// LSE and D, and their dQ so far, across the key tiles of one call.
class BackwardTile {
 public:
  BackwardTile(const Mask& mask, int64_t head_dim, int64_t v_dim)
      : mask_(&mask),
        head_dim_(head_dim),
        v_dim_(v_dim),
        p_(kQueryTile * kKeyTile),
        ds_(kQueryTile * kKeyTile),
        dq_(kQueryTile * head_dim),
        lse_(kQueryTile),
        delta_(kQueryTile) {}

  // Starts rows [0, rows) at position first_pos: q and d_out hold their rows; lse and delta
  // are read at [row * stride] (the [tokens][heads] layout of BackwardInputs).
  void start(const float* q, const float* d_out, const float* lse, const float* delta, int64_t stride,
             int64_t first_pos, int64_t rows) {
    assert(rows >= 1 && rows <= kQueryTile);
    q_ = q;
    d_out_ = d_out;
    first_pos_ = first_pos;
    rows_ = rows;
    seen_ = false;
    for (int64_t r = 0; r < rows; ++r) {
      lse_[r] = lse[r * stride];
      delta_[r] = delta[r * stride];
    }
    std::fill_n(dq_.data(), rows * head_dim_, 0.0f);
  }

  // The window rule add_keys applies from now on (not owned): a block mask's spans switch it.
  void use_rule(const Mask& mask) { mask_ = &mask; }
  int64_t first_pos() const { return first_pos_; }
  int64_t rows() const { return rows_; }

  // Key positions of [lo, hi) that some row of the tile sees (may be empty).
  KeyWindow visible_in(int64_t lo, int64_t hi) const {
    return {std::max(lo, key_window(*mask_, first_pos_).lo), std::min(hi, key_window(*mask_, first_pos_ + rows_ - 1).hi)};
  }

  // Keys at positions [key_pos, key_pos + keys) with rows k, v (keys <= kKeyTile); their dK, dV
  // rows (head-major, dense) get this tile's share.
  void add_keys(const float* k, const float* v, float* dk, float* dv, int64_t key_pos, int64_t keys) {
    assert(keys >= 1 && keys <= kKeyTile);
    const ConstMatrixMap q(q_, rows_, head_dim_), d_out(d_out_, rows_, v_dim_), kt(k, keys, head_dim_),
        vt(v, keys, v_dim_);
    MatrixMap p(p_.data(), rows_, keys), ds(ds_.data(), rows_, keys);
    p.noalias() = q * kt.transpose();
    recompute_probabilities(key_pos, keys);
    MatrixMap(dv, keys, v_dim_).noalias() += p.transpose() * d_out;
    ds.noalias() = d_out * vt.transpose();  // dP
    for (int64_t r = 0; r < rows_; ++r) ds.row(r).array() = p.row(r).array() * (ds.row(r).array() - delta_[r]);
    MatrixMap(dq_.data(), rows_, head_dim_).noalias() += ds * kt;
    MatrixMap(dk, keys, head_dim_).noalias() += ds.transpose() * q;
    seen_ = true;
  }

  // Adds scale dS K of every row into dQ rows [first_row, first_row + rows) of `head`.
  void add_dq_into(const GradView& dq, int64_t first_row, int64_t head, float scale) const {
    if (!seen_) return;
    for (int64_t r = 0; r < rows_; ++r)
      Eigen::Map<Eigen::ArrayXf>(dq.row(first_row + r, head), head_dim_) +=
          scale * Eigen::Map<const Eigen::ArrayXf>(dq_.data() + r * head_dim_, head_dim_);
  }

 private:
  // Scores of the visible (row, key) pairs become P = exp(s - LSE); the others 0.
  void recompute_probabilities(int64_t key_pos, int64_t keys) {
    const bool all_visible = key_window(*mask_, first_pos_ + rows_ - 1).lo <= key_pos &&
                             key_window(*mask_, first_pos_).hi >= key_pos + keys;
    for (int64_t r = 0; r < rows_; ++r) {
      float* s = p_.data() + r * keys;
      KeyWindow cols{0, keys};
      // A row that saw no key in the forward (LSE -inf) gets no gradient: exp(s + inf) would be
      // inf, and vector exps clamp their argument, so exp(-inf) need not be 0 either.
      if (lse_[r] == kMinusInf) {
        cols = {0, 0};
      } else if (!all_visible) {
        const KeyWindow w = key_window(*mask_, first_pos_ + r);
        cols = {std::clamp(w.lo - key_pos, int64_t{0}, keys), std::clamp(w.hi - key_pos, int64_t{0}, keys)};
        cols.hi = std::max(cols.lo, cols.hi);
      }
      std::fill(s, s + cols.lo, 0.0f);
      Eigen::Map<Eigen::ArrayXf> visible(s + cols.lo, cols.hi - cols.lo);
      visible = (visible - lse_[r]).exp();
      std::fill(s + cols.hi, s + keys, 0.0f);
    }
  }

  const Mask* mask_;  // not owned; a pointer, so use_rule can switch it
  int64_t head_dim_, v_dim_;
  const float* q_ = nullptr;
  const float* d_out_ = nullptr;
  int64_t first_pos_ = 0, rows_ = 0;
  bool seen_ = false;  // whether any key tile reached this tile (else dQ gets nothing)
  Floats p_, ds_, dq_, lse_, delta_;
};

// The tensors of one call in fp32, head-major, and the dK, dV gathered so far.
struct Operands {
  const HeadMajor &k, &v;
  HeadMajorGrad &dk, &dv;
};

// Keys at positions [lo, hi) of kv_run that the tile sees under its current rule, tile by tile.
void backward_keys(BackwardTile& tile, Operands& ops, int64_t kv_head, const StoredRun& kv_run, int64_t lo,
                   int64_t hi) {
  const KeyWindow keys = tile.visible_in(lo, hi);
  for (int64_t pos = keys.lo; pos < keys.hi; pos += kKeyTile) {
    const int64_t row = kv_run.offset + (pos - kv_run.begin);
    tile.add_keys(ops.k.rows(kv_head, row), ops.v.rows(kv_head, row), ops.dk.rows(kv_head, row),
                  ops.dv.rows(kv_head, row), pos, std::min(kKeyTile, keys.hi - pos));
  }
}

// Every key of `kv_runs` that one query tile of sequence `seq` sees (other sequences never).
void backward_tile(BackwardTile& tile, Operands& ops, int64_t kv_head, std::span<const StoredRun> kv_runs,
                   int32_t seq) {
  for (const StoredRun& kv_run : kv_runs)
    if (kv_run.seq == seq && kv_run.count > 0)
      backward_keys(tile, ops, kv_head, kv_run, kv_run.begin, kv_run.begin + kv_run.count);
}

// The same under a block mask for a tile inside one query block: each key run cut into the spans
// of its cells (block_key_spans, the forward's rule), EMPTY cells never visited.
void backward_tile_blocks(BackwardTile& tile, Operands& ops, int64_t kv_head, std::span<const StoredRun> kv_runs,
                          int32_t seq, const Mask& mask, int64_t len) {
  KeySpan spans[kMaxMaskBlocks];
  for (const StoredRun& kv_run : kv_runs) {
    if (kv_run.seq != seq || kv_run.count == 0) continue;
    const int64_t n = block_key_spans(mask, len, tile.first_pos(), tile.rows(), kv_run.begin,
                                      kv_run.begin + kv_run.count, spans);
    for (int64_t s = 0; s < n; ++s) {
      tile.use_rule(span_rule(spans[s].causal));
      backward_keys(tile, ops, kv_head, kv_run, spans[s].lo, spans[s].hi);
    }
  }
}

}  // namespace

void attend_backward(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                     const BackwardInputs& in, QueryGrads dq, KvGrads dkv) {
  check_backward_arguments(queries, block, params, in, dq, dkv, "attention");
  const float scale = params.scale.value_or(1.0f / std::sqrt(static_cast<float>(queries.q.dim)));
  const HeadMajor q(queries.q, scale), d_out(in.d_out, 1.0f), k(block.k, 1.0f), v(block.v, 1.0f);
  HeadMajorGrad dk(block.k.tokens, block.k.heads, block.k.dim), dv(block.v.tokens, block.v.heads, block.v.dim);
  Operands ops{k, v, dk, dv};
  BackwardTile tile(params.mask, queries.q.dim, block.v.dim);
  const bool blocks = params.mask.kind == MaskKind::blocks;
  const int64_t heads = queries.q.heads;
  for (const StoredRun& q_run : queries.runs) {
    // check_attention_arguments made sure a block mask has the length of every run's sequence.
    const int64_t len = blocks ? params.seq_lens[static_cast<size_t>(q_run.seq)] : 0;
    for (int64_t t0 = 0, rows = 0; t0 < q_run.count; t0 += rows) {
      rows = query_tile_rows(q_run, t0, kQueryTile, params.mask, len);
      const int64_t row = q_run.offset + t0;
      for (int64_t h = 0; h < heads; ++h) {
        tile.use_rule(params.mask);
        tile.start(q.rows(h, row), d_out.rows(h, row), in.lse.data() + row * heads + h,
                   in.delta.data() + row * heads + h, heads, q_run.begin + t0, rows);
        if (blocks)
          backward_tile_blocks(tile, ops, params.heads.kv_of(h), block.runs, q_run.seq, params.mask, len);
        else
          backward_tile(tile, ops, params.heads.kv_of(h), block.runs, q_run.seq);
        tile.add_dq_into(dq.dq, row, h, scale);
      }
    }
  }
  dk.add_to(dkv.dk, block.runs);
  dv.add_to(dkv.dv, block.runs);
}

}  // namespace cptune::backends::CPTUNE_ISA_CAT(isa_, CPTUNE_ISA)
