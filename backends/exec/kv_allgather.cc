#include "backends/exec/kv_allgather.h"

#include "backends/comm/comm.h"

namespace cptune::backends {

KvAllGather::KvAllGather(const RankContext& ctx, Comm& ring) : c_(ctx), ring_(ring) {
  const Layout& L = c_.layout;
  int64_t total = 0;
  for (int64_t r = 0; r < L.ring(); ++r) {
    shard_bytes_.push_back(L.kv_block_bytes(L.shard_padded_tokens(r), c_.kv_heads()));
    kv_runs_.push_back(kernel_runs(L.shard_runs(r), c_.batch, c_.nseq));
    total += shard_bytes_.back();
  }
  gathered_ = c_.device.allocate(total);
}

void KvAllGather::attend(const std::byte* mine, const AttendBlock& attend) {
  const Layout& L = c_.layout;
  ring_.allgatherv(mine, shard_bytes_[static_cast<size_t>(c_.me.r)], gathered_.data(), shard_bytes_);
  std::byte* block = gathered_.data();
  for (int64_t r = 0; r < L.ring(); ++r) {
    attend(block, L.shard_padded_tokens(r), kv_runs_[static_cast<size_t>(r)]);
    block += shard_bytes_[static_cast<size_t>(r)];
  }
}

}  // namespace cptune::backends
