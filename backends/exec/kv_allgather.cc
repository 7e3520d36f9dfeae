#include "backends/exec/kv_allgather.h"

#include "backends/comm/comm.h"

namespace cptune::backends {

KvAllGather::KvAllGather(const RankContext& ctx, Comm& ring, bool backward) : c_(ctx), ring_(ring) {
  const Layout& L = c_.layout;
  int64_t total = 0, grads = 0;
  for (int64_t r = 0; r < L.ring(); ++r) {
    shard_bytes_.push_back(L.kv_block_bytes(L.shard_padded_tokens(r), c_.kv_heads()));
    grad_bytes_.push_back(kv_grad_bytes(c_, L.shard_padded_tokens(r)));
    kv_runs_.push_back(kernel_runs(L.shard_runs(r), c_.batch, c_.nseq));
    total += shard_bytes_.back();
    grads += grad_bytes_.back();
  }
  gathered_ = c_.device.allocate(total);
  if (!backward) return;
  partials_ = c_.device.allocate(grads);
  received_ = c_.device.allocate(L.ring() * grad_bytes_[static_cast<size_t>(c_.me.r)]);
}

void KvAllGather::gather(const std::byte* mine) {
  ring_.allgatherv(mine, shard_bytes_[static_cast<size_t>(c_.me.r)], gathered_.data(), shard_bytes_);
}

void KvAllGather::attend(const AttendBlock& attend) {
  const Layout& L = c_.layout;
  std::byte* block = gathered_.data();
  for (int64_t r = 0; r < L.ring(); ++r) {
    attend(block, L.shard_padded_tokens(r), kv_runs_[static_cast<size_t>(r)]);
    block += shard_bytes_[static_cast<size_t>(r)];
  }
}

void KvAllGather::attend_backward(const AttendBlockBackward& attend) {
  const Layout& L = c_.layout;
  c_.device.zero(partials_.data(), partials_.bytes());
  std::byte* block = gathered_.data();
  std::byte* grads = partials_.data();
  for (int64_t r = 0; r < L.ring(); ++r) {
    attend(block, L.shard_padded_tokens(r), kv_runs_[static_cast<size_t>(r)], grads);
    block += shard_bytes_[static_cast<size_t>(r)];
    grads += grad_bytes_[static_cast<size_t>(r)];
  }
}

// A reduce-scatter written as the all-to-all-v it is on the wire: every rank's partial dK, dV
// of shard r go to ring index r, which adds up the R it receives in fp32, in rank order.
const std::byte* KvAllGather::reduce_scatter() {
  const int64_t R = c_.layout.ring(), mine = grad_bytes_[static_cast<size_t>(c_.me.r)];
  const std::vector<int64_t> recv_bytes(static_cast<size_t>(R), mine);
  ring_.alltoallv(partials_.data(), grad_bytes_, received_.data(), recv_bytes);
  const int64_t elems = mine / static_cast<int64_t>(sizeof(float));
  for (int64_t r = 1; r < R; ++r) c_.device.add_floats(received_.data(), received_.data() + r * mine, elems);
  return received_.data();
}

}  // namespace cptune::backends
