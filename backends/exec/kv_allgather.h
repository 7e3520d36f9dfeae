#pragma once
// The all-gather motion (allgather-kv, Megatron's context parallelism with all-gathered K,V):
// every rank of my ring group receives every ring index's K,V shard in one all-gather, then
// attends to them one after another.
#include <cstdint>
#include <vector>

#include "backends/exec/rank_context.h"

namespace cptune::backends {

class Comm;

class KvAllGather {
 public:
  KvAllGather(const RankContext& ctx, Comm& ring);

  // Gathers every shard (mine from `mine`, only read) and attends to each in ring-index order.
  void attend(const std::byte* mine, const AttendBlock& attend);

 private:
  const RankContext& c_;
  Comm& ring_;
  std::vector<int64_t> shard_bytes_;             // per ring index
  std::vector<std::vector<StoredRun>> kv_runs_;  // per ring index: the kernel runs of its shard
  DeviceBuffer gathered_;                        // every shard, in ring-index order
};

}  // namespace cptune::backends
