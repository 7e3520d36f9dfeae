#pragma once
// The all-gather motion (allgather-kv, Megatron's context parallelism with all-gathered K,V):
// every rank of my ring group receives every ring index's K,V shard in one all-gather (phase
// allgather), then attends to them one after another (attention). Backward: each rank's share of
// every shard's dK, dV, summed over the group and returned to the shard's owner by a
// reduce-scatter (reduce-scatter).
#include <cstdint>
#include <vector>

#include "backends/exec/rank_context.h"

namespace cptune::backends {

class Comm;

class KvAllGather {
 public:
  // `backward`: attend_backward() and reduce_scatter() will run (their buffers are allocated).
  KvAllGather(const RankContext& ctx, Comm& ring, bool backward = false);

  void gather(const std::byte* mine);       // every shard, mine from `mine` (only read)
  void attend(const AttendBlock& attend);   // each gathered shard in ring-index order
  // Adds my queries' share of every shard's dK, dV into partial sums (zeroed first).
  void attend_backward(const AttendBlockBackward& attend);
  // Every rank's partial dK, dV of my shard, summed (fp32, kv_grad_bytes of my shard); the
  // buffer belongs to this object.
  const std::byte* reduce_scatter();

 private:
  const RankContext& c_;
  Comm& ring_;
  std::vector<int64_t> shard_bytes_;             // per ring index: K,V in the storage dtype
  std::vector<int64_t> grad_bytes_;              // per ring index: dK, dV in fp32
  std::vector<std::vector<StoredRun>> kv_runs_;  // per ring index: the kernel runs of its shard
  DeviceBuffer gathered_;                        // every shard, in ring-index order
  DeviceBuffer partials_, received_;             // backward: my partial dK, dV of every shard; every rank's of mine
};

}  // namespace cptune::backends
