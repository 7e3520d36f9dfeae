#include "backends/kernels/attention.h"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cmath>

#include "core/block_mask.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

// ---- arguments a caller can get wrong -------------------------------------------------------

void check_tensor(const TensorView& t, const char* name, std::string_view kernel) {
  if (t.tokens < 0 || t.heads < 1 || t.dim < 1)
    throw Error(fmt::format("{}: {} has tokens={} heads={} dim={}; need tokens >= 0, heads >= 1, dim >= 1", kernel, name,
                            t.tokens, t.heads, t.dim));
  if (t.tokens > 0 && t.data == nullptr)
    throw Error(fmt::format("{}: {} has {} tokens but no data", kernel, name, t.tokens));
}

void check_runs(std::span<const StoredRun> runs, int64_t tensor_tokens, const char* name, std::string_view kernel) {
  for (const StoredRun& run : runs) {
    if (run.seq < 0 || run.begin < 0 || run.count < 0 || run.offset < 0 || run.offset + run.count > tensor_tokens)
      throw Error(
          fmt::format("{}: {} run (seq {}, positions {}+{}, rows from {}) does not fit a tensor of "
                      "{} tokens; seq, begin, count and offset must be >= 0 and rows inside the tensor",
                      kernel, name, run.seq, run.begin, run.count, run.offset, tensor_tokens));
  }
}

void check_heads(const HeadMap& heads, int64_t q_heads, int64_t kv_heads, std::string_view kernel) {
  if (heads.group_size < 1 || heads.q_head_begin < 0 || heads.kv_head_begin < 0)
    throw Error(
        fmt::format("{}: head map q_head_begin={} kv_head_begin={} group_size={}; need group_size >= 1 "
                    "and begins >= 0",
                    kernel, heads.q_head_begin, heads.kv_head_begin, heads.group_size));
  // kv_of is monotone in h, so its ends bound every head in between.
  for (int64_t h : {int64_t{0}, q_heads - 1}) {
    const int64_t kv = heads.kv_of(h);
    if (kv < 0 || kv >= kv_heads)
      throw Error(fmt::format(
          "{}: local q head {} (global {}) reads local kv head {}, outside the {} kv heads "
          "held (global {}..{}); check q_head_begin, kv_head_begin and group_size",
          kernel, h, heads.q_head_begin + h, kv, kv_heads, heads.kv_head_begin, heads.kv_head_begin + kv_heads - 1));
  }
}

}  // namespace

void check_attention_arguments(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                               StateShape state, std::string_view kernel) {
  check_tensor(queries.q, "Q", kernel);
  check_tensor(block.k, "K", kernel);
  check_tensor(block.v, "V", kernel);
  const TensorView &q = queries.q, &k = block.k, &v = block.v;
  if (k.dim != q.dim) throw Error(fmt::format("{}: K head dim {} differs from Q head dim {}", kernel, k.dim, q.dim));
  if (v.tokens != k.tokens || v.heads != k.heads)
    throw Error(fmt::format("{}: V has {} tokens x {} heads but K has {} x {}; they must match", kernel, v.tokens,
                            v.heads, k.tokens, k.heads));
  if (state.tokens != q.tokens || state.q_heads != q.heads || state.v_dim != v.dim)
    throw Error(fmt::format("{}: state is {} tokens x {} heads x {} dims but Q, V need {} x {} x {}", kernel,
                            state.tokens, state.q_heads, state.v_dim, q.tokens, q.heads, v.dim));
  check_runs(queries.runs, q.tokens, "Q", kernel);
  check_runs(block.runs, k.tokens, "K,V", kernel);
  check_heads(params.heads, q.heads, k.heads, kernel);
  if (params.mask.kind == MaskKind::sliding_window && params.mask.window < 1)
    throw Error(fmt::format("{}: sliding window {} must be >= 1 token", kernel, params.mask.window));
  if (params.mask.kind == MaskKind::blocks) {
    if (!params.mask.blocks) throw Error(fmt::format("{}: a block mask without its table", kernel));
    for (const auto* runs : {&queries.runs, &block.runs})
      for (const StoredRun& run : *runs)
        if (run.seq < 0 || static_cast<size_t>(run.seq) >= params.seq_lens.size())
          throw Error(fmt::format("{}: block mask {} needs the length of sequence {}, but {} lengths were given",
                                  kernel, params.mask.blocks->name(), run.seq, params.seq_lens.size()));
  }
  if (params.scale && !std::isfinite(*params.scale))
    throw Error(fmt::format("{}: scale {} must be finite", kernel, *params.scale));
}

std::vector<StoredRun> stored_runs(std::span<const TokenRun> runs) {
  std::vector<StoredRun> out;
  int64_t offset = 0;
  for (const TokenRun& run : runs) {
    out.push_back({run.seq, run.begin, run.count, offset});
    offset += std::max(run.padded, run.count);
  }
  return out;
}

std::vector<StoredRun> packed_runs(std::span<const int64_t> seq_lens) {
  std::vector<StoredRun> out;
  int64_t offset = 0;
  for (size_t seq = 0; seq < seq_lens.size(); ++seq) {
    out.push_back({static_cast<int32_t>(seq), 0, seq_lens[seq], offset});
    offset += seq_lens[seq];
  }
  return out;
}

HeadMap HeadMap::of_rank(const RankLayout& rank, const AttentionShape& shape) {
  return {rank.q_heads.begin, rank.kv_heads.begin, shape.group_size()};
}

KeyWindow key_window(const Mask& mask, int64_t i) {
  switch (mask.kind) {
    case MaskKind::full:
      return {-kFarPosition, kFarPosition};
    case MaskKind::causal:
      return {-kFarPosition, i + 1};
    case MaskKind::sliding_window:
      return {i - std::min(mask.window, kFarPosition) + 1, i + 1};
    case MaskKind::blocks:
      // Kernels tile block masks with block_key_spans and never ask; a caller that does is wrong.
      throw Error("attention: a block mask has no single key window; tile it with block_key_spans");
  }
  return {0, 0};
}

int64_t query_block_end(const Mask& mask, int64_t len, int64_t pos) {
  if (mask.kind != MaskKind::blocks) return kFarPosition;
  const int64_t n = mask.blocks->n(), qb = block_of(len, n, pos);
  return qb == n - 1 ? kFarPosition : block_begin(len, n, qb + 1);
}

const Mask& span_rule(bool causal) {
  static const Mask full(MaskKind::full), causal_mask(MaskKind::causal);
  return causal ? causal_mask : full;
}

int64_t block_key_spans(const Mask& mask, int64_t len, int64_t pos, int64_t rows, int64_t ka, int64_t kb,
                        KeySpan* out) {
  assert(mask.kind == MaskKind::blocks && rows >= 1 && pos + rows <= query_block_end(mask, len, pos));
  const BlockTable& table = *mask.blocks;
  const int64_t n = table.n(), qb = block_of(len, n, pos), last_query = pos + rows - 1;
  int64_t spans = 0;
  for (int64_t lo = ka; lo < kb;) {
    const int64_t cell = block_of(len, n, lo);
    const int64_t hi = cell == n - 1 ? kb : std::min(kb, block_begin(len, n, cell + 1));
    switch (table.at(qb, cell)) {
      case BlockKind::empty:
        break;
      case BlockKind::full:
        out[spans++] = {lo, hi, false};
        break;
      case BlockKind::causal: {
        const int64_t seen = std::min(hi, last_query + 1);  // no row sees a key past the last row
        if (lo < seen) out[spans++] = {lo, seen, seen - 1 > pos};
        break;
      }
    }
    lo = hi;
  }
  assert(spans <= kMaxMaskBlocks);
  return spans;
}

}  // namespace cptune::backends
