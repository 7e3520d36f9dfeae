#include "backends/exec/rank_context.h"

#include <cassert>

#include "core/error.h"

namespace cptune::backends {

std::vector<Placement> placements(const Layout& layout, const RankLayout& owner) {
  std::vector<Placement> out;
  int64_t src = 0;
  for (const TokenRun& piece : owner.input_runs) {
    int64_t chunk_offset = 0;
    bool found = false;
    for (const TokenRun& chunk : layout.shard_runs(owner.r)) {
      if (chunk.seq == piece.seq && chunk.begin <= piece.begin && piece.begin < chunk.begin + chunk.padded) {
        out.push_back({src, chunk_offset + piece.begin - chunk.begin, piece.padded});
        found = true;
        break;
      }
      chunk_offset += chunk.padded;
    }
    (void)found;
    assert(found && "every input piece lies inside its ring index's shard");
    src += piece.padded;
  }
  return out;
}

std::vector<Placement> sub_rows(std::span<const TokenRun> whole, std::span<const TokenRun> sub) {
  std::vector<Placement> out;
  int64_t src = 0, dst = 0;
  size_t next = 0;
  for (const TokenRun& run : whole) {
    if (next < sub.size() && sub[next].seq == run.seq && sub[next].begin == run.begin) {
      out.push_back({src, dst, run.padded});
      dst += run.padded;
      ++next;
    }
    src += run.padded;
  }
  if (next != sub.size()) throw Error("ring schedule: a forwarded K,V run is not among the runs held (layout bug)");
  return out;
}

std::vector<StoredRun> kernel_runs(std::span<const TokenRun> runs, int64_t batch, int64_t nseq) {
  std::vector<StoredRun> out;
  const int64_t tokens = padded_tokens(runs);
  for (int64_t b = 0; b < batch; ++b) {
    int64_t offset = b * tokens;
    for (const TokenRun& run : runs) {
      const int32_t id = static_cast<int32_t>(2 * b * nseq + run.seq);
      if (run.count > 0) out.push_back({id, run.begin, run.count, offset});
      if (run.padded > run.count)
        out.push_back({static_cast<int32_t>(id + nseq), run.begin + run.count, run.padded - run.count, offset + run.count});
      offset += run.padded;
    }
  }
  return out;
}

int64_t padded_tokens(std::span<const TokenRun> runs) {
  int64_t tokens = 0;
  for (const TokenRun& run : runs) tokens += run.padded;
  return tokens;
}

RankContext::RankContext(const Layout& l, int rank, Device& d)
    : layout(l),
      shape(l.shape()),
      me(l.rank(rank)),
      device(d),
      batch(shape.batch),
      head_dim(shape.head_dim),
      v_head_dim(shape.v_head_dim),
      elem_bytes(l.elem_bytes()),
      nseq(static_cast<int64_t>(shape.seq_lens.size())),
      in_tokens(me.input_padded_tokens),
      shard_tokens(l.shard_padded_tokens(me.r)) {}

void RankContext::copy(const Block& src, int64_t src_tok, int64_t src_head, const Block& dst, int64_t dst_tok,
                       int64_t dst_head, int64_t ntok, int64_t nheads, int64_t eb) const {
  if (eb == 0) eb = elem_bytes;
  const int64_t width = nheads * src.dim * eb;
  if (width == 0 || ntok == 0) return;
  for (int64_t b = 0; b < batch; ++b)
    device.copy_rows(dst.at(b, dst_tok, dst_head, eb), dst.row_bytes(eb), src.at(b, src_tok, src_head, eb),
                     src.row_bytes(eb), width, ntok);
}

}  // namespace cptune::backends
