#pragma once
// What every motion of the executor (Ulysses exchange, ring rotation, K,V all-gather, verify)
// shares about one rank: the layout, the rank's place in it, its device, the sizes its buffers
// are cut by, and the small vocabulary of blocks and placements the motions copy with.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "backends/exec/device.h"
#include "backends/kernels/attention.h"
#include "core/layout.h"

namespace cptune::backends {

// A tensor [batch][tokens][heads][dim] of `elem_bytes` elements inside some device buffer.
struct Block {
  std::byte* data = nullptr;
  int64_t tokens = 0, heads = 0, dim = 0;
  int64_t row_bytes(int64_t eb) const { return heads * dim * eb; }
  std::byte* at(int64_t b, int64_t t, int64_t h, int64_t eb) const {
    return data + ((b * tokens + t) * heads + h) * dim * eb;
  }
  int64_t bytes(int64_t batch, int64_t eb) const { return batch * tokens * heads * dim * eb; }
};

// A rank's input piece as it lands in the attention-side shard: rows [src, src + n) of the
// owner's input go to rows [dst, dst + n) of the shard.
struct Placement {
  int64_t src = 0, dst = 0, n = 0;
};

// Where each of `owner`'s input runs sits inside its ring index's shard.
std::vector<Placement> placements(const Layout& layout, const RankLayout& owner);
// Runs `sub` (a subset of `whole`, in its order, matched by sequence and first position) as rows
// of a block holding `whole` back to back: sub rows [dst, dst + n) are whole rows [src, src + n).
// Throws Error (a layout bug) when a run of sub is not in whole.
std::vector<Placement> sub_rows(std::span<const TokenRun> whole, std::span<const TokenRun> sub);
// Kernel runs for tokens stored in Layout order, every sample: padding rows form their own
// sequences (ids past the real ones) so real tokens never attend to them.
std::vector<StoredRun> kernel_runs(std::span<const TokenRun> runs, int64_t batch, int64_t nseq);
int64_t padded_tokens(std::span<const TokenRun> runs);

struct RankContext {
  RankContext(const Layout& layout, int rank, Device& device);

  const Layout& layout;
  const AttentionShape& shape;
  const RankLayout& me;
  Device& device;
  int64_t batch, head_dim, v_head_dim, elem_bytes, nseq;
  int64_t in_tokens;     // my input tokens, padding included
  int64_t shard_tokens;  // my ring index's shard (the queries I compute), padding included

  int64_t q_heads() const { return me.q_heads.count(); }    // after the all-to-all: mine
  int64_t kv_heads() const { return me.kv_heads.count(); }
  // Copies `ntok` tokens x `nheads` heads of every sample from src to dst (one strided copy of
  // ntok rows per sample). Elements are the storage dtype's unless `eb` says otherwise.
  void copy(const Block& src, int64_t src_tok, int64_t src_head, const Block& dst, int64_t dst_tok, int64_t dst_head,
            int64_t ntok, int64_t nheads, int64_t eb = 0) const;
  // A K,V block of `tokens` rows held as [K: batch x tokens x my kv heads x D][V: ... x Dv].
  Block k_of(std::byte* kv, int64_t tokens) const { return {kv, tokens, kv_heads(), head_dim}; }
  Block v_of(std::byte* kv, int64_t tokens) const {
    return {kv + batch * tokens * kv_heads() * head_dim * elem_bytes, tokens, kv_heads(), v_head_dim};
  }
};

// Attention of my queries against one K,V block (the layout above) with its kernel runs.
using AttendBlock = std::function<void(std::byte* kv, int64_t tokens, std::span<const StoredRun> runs)>;
// Its backward: adds the block's dK, dV into `grads`, fp32 [dK: batch x tokens x my kv heads x D][dV: ... x Dv].
using AttendBlockBackward =
    std::function<void(std::byte* kv, int64_t tokens, std::span<const StoredRun> runs, std::byte* grads)>;
// Bytes of those fp32 dK, dV for `tokens` rows.
inline int64_t kv_grad_bytes(const RankContext& c, int64_t tokens) {
  return c.batch * tokens * c.kv_heads() * (c.head_dim + c.v_head_dim) * static_cast<int64_t>(sizeof(float));
}

}  // namespace cptune::backends
