#include "backends/kernels/cudnn_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <limits>
#include <map>
#include <tuple>

#include "core/block_mask.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

// The bands a plan uses. Causal and sliding-window pieces end their rows where their keys end, so
// bottom-right alignment puts every sequence's diagonal where its positions say, whatever the
// entry's lengths; rows past the keys' end under a sliding window use the top-left band.
CudnnDiagonal full_band() { return {}; }
CudnnDiagonal causal_band() { return {true, std::nullopt, 0}; }
CudnnDiagonal window_band(int64_t window) { return {true, window, 0}; }
CudnnDiagonal window_tail_band(int64_t window) { return {false, 1, window - 1}; }

struct Piece {
  CudnnDiagonal diagonal;
  CudnnEntry entry;
};

// Positions [q_lo, q_hi) of q_run against [k_lo, k_hi) of kv_run (both inside their runs) under
// `diagonal`. One query row that sees every key is FULL, so it merges with its neighbours.
void add_piece(std::vector<Piece>& out, CudnnDiagonal diagonal, const StoredRun& q_run, int64_t q_lo, int64_t q_hi,
               const StoredRun& kv_run, int64_t k_lo, int64_t k_hi) {
  if (q_lo >= q_hi || k_lo >= k_hi) return;
  const int64_t s_q = q_hi - q_lo, s_kv = k_hi - k_lo;
  if (s_q == 1 && diagonal.sees(0, 0, s_q, s_kv) && diagonal.sees(0, s_kv - 1, s_q, s_kv)) diagonal = full_band();
  out.push_back({diagonal,
                 {q_run.seq, q_run.offset + (q_lo - q_run.begin), q_lo, s_q, kv_run.offset + (k_lo - kv_run.begin), k_lo,
                  s_kv}});
}

// Causal, query positions [qa, qb) against keys [ka, kb): rows before the keys' end see a
// triangle ending where the keys end (bottom-right); rows at or past it see every key.
void add_causal(std::vector<Piece>& out, const StoredRun& q_run, int64_t qa, int64_t qb, const StoredRun& kv_run,
                int64_t ka, int64_t kb) {
  const int64_t r0 = std::max(qa, ka), e = std::min(qb, kb);
  add_piece(out, causal_band(), q_run, r0, e, kv_run, ka, e);
  add_piece(out, full_band(), q_run, std::max(qa, kb), qb, kv_run, ka, kb);
}

// Sliding window w (query i sees keys (i - w, i]): rows before the keys' end see the bottom-right
// band (keys no row sees cut off the front); rows past the end that still reach back to the first
// key see every key; the later rows see [i - w + 1, kb), a band aligned top-left at its first row.
void add_window(std::vector<Piece>& out, const StoredRun& q_run, int64_t qa, int64_t qb, const StoredRun& kv_run,
                int64_t ka, int64_t kb, int64_t w) {
  if (w >= qb - ka) return add_causal(out, q_run, qa, qb, kv_run, ka, kb);  // no pair is that far apart
  const int64_t r0 = std::max(qa, ka), e = std::min(qb, kb);
  add_piece(out, window_band(w), q_run, r0, e, kv_run, std::max(ka, r0 - w + 1), e);
  add_piece(out, full_band(), q_run, std::max(qa, kb), std::min(qb, ka + w), kv_run, ka, kb);
  const int64_t c0 = std::max({qa, kb, ka + w}), c1 = std::min(qb, kb + w - 1);
  add_piece(out, window_tail_band(w), q_run, c0, c1, kv_run, c0 - w + 1, kb);
}

// Block mask: each query block of q_run against the cells of kv_run (block_key_spans, the rule
// the other kernels tile by): FULL spans whole, CAUSAL spans as causal pieces.
void add_blocks(std::vector<Piece>& out, const Mask& mask, int64_t len, const StoredRun& q_run,
                const StoredRun& kv_run) {
  KeySpan spans[kMaxMaskBlocks];
  for (int64_t t0 = 0, rows = 0; t0 < q_run.count; t0 += rows) {
    rows = query_tile_rows(q_run, t0, q_run.count, mask, len);
    const int64_t pos = q_run.begin + t0;
    const int64_t n = block_key_spans(mask, len, pos, rows, kv_run.begin, kv_run.begin + kv_run.count, spans);
    for (int64_t s = 0; s < n; ++s) {
      if (spans[s].causal)
        add_causal(out, q_run, pos, pos + rows, kv_run, spans[s].lo, spans[s].hi);
      else
        add_piece(out, full_band(), q_run, pos, pos + rows, kv_run, spans[s].lo, spans[s].hi);
    }
  }
}

// FULL pieces side by side (same query rows, keys that continue each other in positions and rows)
// become one, then those one above the other (same keys, query rows that continue): a block
// mask's runs of FULL cells, and a column of them, are one entry each.
void merge_full(std::vector<Piece>& pieces) {
  std::vector<CudnnEntry> full;
  std::vector<Piece> rest;
  for (Piece& p : pieces) {
    if (p.diagonal.full())
      full.push_back(p.entry);
    else
      rest.push_back(p);
  }
  auto merge = [&full](auto order, auto continues, auto join) {
    std::sort(full.begin(), full.end(), order);
    std::vector<CudnnEntry> merged;
    for (const CudnnEntry& e : full) {
      if (!merged.empty() && continues(merged.back(), e))
        join(merged.back(), e);
      else
        merged.push_back(e);
    }
    full = std::move(merged);
  };
  merge([](const CudnnEntry& a, const CudnnEntry& b) {
          return std::tie(a.seq, a.q_row, a.q_pos, a.q_tokens, a.kv_row) <
                 std::tie(b.seq, b.q_row, b.q_pos, b.q_tokens, b.kv_row);
        },
        [](const CudnnEntry& a, const CudnnEntry& b) {
          return a.seq == b.seq && a.q_row == b.q_row && a.q_pos == b.q_pos && a.q_tokens == b.q_tokens &&
                 a.kv_row + a.kv_tokens == b.kv_row && a.kv_pos + a.kv_tokens == b.kv_pos;
        },
        [](CudnnEntry& a, const CudnnEntry& b) { a.kv_tokens += b.kv_tokens; });
  merge([](const CudnnEntry& a, const CudnnEntry& b) {
          return std::tie(a.seq, a.kv_row, a.kv_pos, a.kv_tokens, a.q_row) <
                 std::tie(b.seq, b.kv_row, b.kv_pos, b.kv_tokens, b.q_row);
        },
        [](const CudnnEntry& a, const CudnnEntry& b) {
          return a.seq == b.seq && a.kv_row == b.kv_row && a.kv_pos == b.kv_pos && a.kv_tokens == b.kv_tokens &&
                 a.q_row + a.q_tokens == b.q_row && a.q_pos + a.q_tokens == b.q_pos;
        },
        [](CudnnEntry& a, const CudnnEntry& b) { a.q_tokens += b.q_tokens; });
  for (const CudnnEntry& e : full) rest.push_back({full_band(), e});
  pieces = std::move(rest);
}

// Rows of a call being filled: where its query rows end so far (entries come sorted by q_row, so
// a new one is disjoint when it starts there or later) and, for a backward, its K,V rows.
struct OpenCall {
  CudnnCall call;
  int64_t q_end = std::numeric_limits<int64_t>::min();
  std::map<int64_t, int64_t> kv_rows;  // begin -> end

  bool kv_free(int64_t begin, int64_t end) const {
    auto next = kv_rows.lower_bound(begin);
    if (next != kv_rows.end() && next->first < end) return false;
    return next == kv_rows.begin() || std::prev(next)->second <= begin;
  }
};

// Entries of one band go into the first call whose rows they do not overlap (first fit).
std::vector<CudnnCall> pack_calls(std::vector<Piece> pieces, bool kv_disjoint) {
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    return std::tie(a.entry.q_row, a.entry.kv_row) < std::tie(b.entry.q_row, b.entry.kv_row);
  });
  std::vector<OpenCall> open;
  for (const Piece& p : pieces) {
    const CudnnEntry& e = p.entry;
    auto fits = [&](const OpenCall& c) {
      return c.call.diagonal == p.diagonal && e.q_row >= c.q_end &&
             (!kv_disjoint || c.kv_free(e.kv_row, e.kv_row + e.kv_tokens));
    };
    auto it = std::find_if(open.begin(), open.end(), fits);
    if (it == open.end()) {
      open.push_back({});
      it = std::prev(open.end());
      it->call.diagonal = p.diagonal;
    }
    it->call.entries.push_back(e);
    it->q_end = e.q_row + e.q_tokens;
    if (kv_disjoint) it->kv_rows[e.kv_row] = e.kv_row + e.kv_tokens;
  }
  std::vector<CudnnCall> calls;
  for (OpenCall& c : open) calls.push_back(std::move(c.call));
  return calls;
}

void check_int32(int64_t tokens, const CudnnEntry& e) {
  if (tokens > std::numeric_limits<int32_t>::max())
    throw Error(fmt::format("cuDNN attention: an entry of sequence {} has {} tokens; cuDNN takes at most {} per entry",
                            e.seq, tokens, std::numeric_limits<int32_t>::max()));
}

}  // namespace

std::string to_string(const CudnnDiagonal& d) {
  if (d.full()) return "full";
  if (d.bottom_right && !d.left_bound && d.right_bound == 0) return "causal-br";
  if (d.bottom_right && d.right_bound == 0) return fmt::format("band-br:{}", *d.left_bound);
  return fmt::format("band-{}:{},{}", d.bottom_right ? "br" : "tl", d.left_bound ? *d.left_bound : -1,
                     d.right_bound ? *d.right_bound : -1);
}

int64_t CudnnCall::max_q_tokens() const {
  int64_t m = 0;
  for (const CudnnEntry& e : entries) m = std::max(m, e.q_tokens);
  return m;
}

int64_t CudnnCall::max_kv_tokens() const {
  int64_t m = 0;
  for (const CudnnEntry& e : entries) m = std::max(m, e.kv_tokens);
  return m;
}

CudnnPlan plan_cudnn_attention(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs,
                               const Mask& mask, std::span<const int64_t> seq_lens, Pass pass) {
  if (mask.kind == MaskKind::sliding_window && mask.window < 1)
    throw Error(fmt::format("cuDNN attention: sliding window {} must be >= 1 token", mask.window));
  if (mask.kind == MaskKind::blocks && !mask.blocks) throw Error("cuDNN attention: a block mask without its table");
  std::vector<Piece> pieces;
  for (const StoredRun& q : q_runs) {
    if (q.count <= 0) continue;
    for (const StoredRun& kv : kv_runs) {
      if (kv.seq != q.seq || kv.count <= 0) continue;
      const int64_t qa = q.begin, qb = q.begin + q.count, ka = kv.begin, kb = kv.begin + kv.count;
      switch (mask.kind) {
        case MaskKind::full:
          add_piece(pieces, full_band(), q, qa, qb, kv, ka, kb);
          break;
        case MaskKind::causal:
          add_causal(pieces, q, qa, qb, kv, ka, kb);
          break;
        case MaskKind::sliding_window:
          add_window(pieces, q, qa, qb, kv, ka, kb, mask.window);
          break;
        case MaskKind::blocks:
          if (q.seq < 0 || static_cast<size_t>(q.seq) >= seq_lens.size())
            throw Error(fmt::format("cuDNN attention: block mask {} needs the length of sequence {}, but {} lengths "
                                    "were given",
                                    mask.blocks->name(), q.seq, seq_lens.size()));
          add_blocks(pieces, mask, seq_lens[static_cast<size_t>(q.seq)], q, kv);
          break;
      }
    }
  }
  merge_full(pieces);
  return {pack_calls(std::move(pieces), has_backward(pass))};
}

std::vector<CudnnHeadSlice> cudnn_head_slices(const HeadMap& heads, int64_t q_heads) {
  // Consecutive local q heads reading one kv head form a group; groups of equal size form a slice.
  std::vector<CudnnHeadSlice> slices;
  for (int64_t h = 0; h < q_heads;) {
    const int64_t kv = heads.kv_of(h);
    int64_t end = h + 1;
    while (end < q_heads && heads.kv_of(end) == kv) ++end;
    const int64_t group = end - h;
    CudnnHeadSlice* last = slices.empty() ? nullptr : &slices.back();
    if (last && last->q_heads / last->kv_heads == group && last->kv_head + last->kv_heads == kv) {
      last->q_heads += group;
      last->kv_heads += 1;
    } else {
      slices.push_back({h, group, kv, 1});
    }
    h = end;
  }
  return slices;
}

void check_cudnn_tensors(const CudnnTensors& t) {
  if (t.dtype != DType::bf16 && t.dtype != DType::fp16)
    throw Error(fmt::format("cuDNN attention runs bf16 and fp16, not {}; use cptune's own kernel", to_string(t.dtype)));
  for (auto [name, dim] : {std::pair{"head dim", t.head_dim}, std::pair{"V head dim", t.v_head_dim}})
    if (dim < 8 || dim > 256 || dim % 8 != 0)
      throw Error(fmt::format("cuDNN attention: {} {} must be a multiple of 8 from 8 to 256; use cptune's own kernel",
                              name, dim));
  if (t.q_heads < 1 || t.kv_heads < 1)
    throw Error(fmt::format("cuDNN attention: {} q heads and {} kv heads; need at least one of each", t.q_heads,
                            t.kv_heads));
}

CudnnRaggedOffsets cudnn_ragged_offsets(const CudnnCall& call, const CudnnTensors& t) {
  CudnnRaggedOffsets r;
  int64_t q_end = 0, kv_end = 0;
  for (const CudnnEntry& e : call.entries) {
    check_int32(e.q_tokens, e);
    check_int32(e.kv_tokens, e);
    r.seq_len_q.push_back(static_cast<int32_t>(e.q_tokens));
    r.seq_len_kv.push_back(static_cast<int32_t>(e.kv_tokens));
    r.q.push_back(e.q_row * t.q_row_elems());
    r.o.push_back(e.q_row * t.o_row_elems());
    r.lse.push_back(e.q_row * t.lse_row_elems());
    r.k.push_back(e.kv_row * t.k_row_elems());
    r.v.push_back(e.kv_row * t.v_row_elems());
    q_end = std::max(q_end, e.q_row + e.q_tokens);
    kv_end = std::max(kv_end, e.kv_row + e.kv_tokens);
  }
  r.q.push_back(q_end * t.q_row_elems());
  r.o.push_back(q_end * t.o_row_elems());
  r.lse.push_back(q_end * t.lse_row_elems());
  r.k.push_back(kv_end * t.k_row_elems());
  r.v.push_back(kv_end * t.v_row_elems());
  return r;
}

int64_t cudnn_token_bucket(int64_t tokens) {
  return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(std::max<int64_t>(tokens, 64))));
}

CudnnGraphKey cudnn_graph_key(const CudnnCall& call, const CudnnHeadSlice& slice, const CudnnTensors& t,
                              bool backward) {
  CudnnGraphKey key;
  key.backward = backward;
  key.dtype = t.dtype;
  key.batch = static_cast<int64_t>(call.entries.size());
  key.q_tokens = cudnn_token_bucket(call.max_q_tokens());
  key.kv_tokens = cudnn_token_bucket(call.max_kv_tokens());
  key.q_heads = slice.q_heads;
  key.kv_heads = slice.kv_heads;
  key.head_dim = t.head_dim;
  key.v_head_dim = t.v_head_dim;
  key.q_row_elems = t.q_row_elems();
  key.k_row_elems = t.k_row_elems();
  key.v_row_elems = t.v_row_elems();
  key.o_row_elems = t.o_row_elems();
  key.diagonal = call.diagonal;
  key.scale = t.scale;
  return key;
}

std::string to_string(const CudnnGraphKey& k) {
  return fmt::format("{} {} b={} s_q={} s_kv={} h_q={} h_kv={} d={} dv={} rows={}/{}/{}/{} {} scale={}",
                     k.backward ? "bwd" : "fwd", to_string(k.dtype), k.batch, k.q_tokens, k.kv_tokens, k.q_heads,
                     k.kv_heads, k.head_dim, k.v_head_dim, k.q_row_elems, k.k_row_elems, k.v_row_elems, k.o_row_elems,
                     to_string(k.diagonal), k.scale);
}

size_t CudnnGraphKeyHash::operator()(const CudnnGraphKey& k) const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
  auto mix = [&h](int64_t v) {
    h ^= static_cast<uint64_t>(v);
    h *= 1099511628211ull;
  };
  for (int64_t v : {int64_t{k.backward}, static_cast<int64_t>(k.dtype), k.batch, k.q_tokens, k.kv_tokens, k.q_heads,
                    k.kv_heads, k.head_dim, k.v_head_dim, k.q_row_elems, k.k_row_elems, k.v_row_elems, k.o_row_elems,
                    int64_t{k.diagonal.bottom_right}, k.diagonal.left_bound.value_or(-1),
                    k.diagonal.right_bound.value_or(-1), int64_t{std::bit_cast<uint32_t>(k.scale)}})
    mix(v);
  return static_cast<size_t>(h);
}

}  // namespace cptune::backends
