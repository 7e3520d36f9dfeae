#pragma once
// The ring motion: K,V blocks travel around my ring group, one hop per step, while each rank
// attends to the block it holds (Gloo's transport thread or NCCL's ring stream moves the
// bytes). Plain and zigzag rings differ only in the shards the Layout gives; under a block mask
// the Layout's skip plan lets a step forward only the runs a later receiver needs and skip
// attention its mask removes.
#include <cstdint>
#include <vector>

#include "backends/exec/rank_context.h"

namespace cptune::backends {

class Comm;

class RingRotation {
 public:
  // Plans this rank's steps from the Layout; throws Error when what my predecessor sends at a
  // step is not exactly what I hold at the next (the messages would not match: a layout bug).
  RingRotation(const RankContext& ctx, Comm& ring);

  // Step k attends to the shard of ring index r - k. `first` is my ring index's shard, only read.
  void attend(const std::byte* first, const AttendBlock& attend);

 private:
  // One ring step as this rank runs it (Layout::ring_held_runs and its friends).
  struct Step {
    std::vector<TokenRun> held_runs;  // the runs of the block held, back to back
    std::vector<StoredRun> held;      // their kernel runs
    int64_t held_tokens = 0;          // stored rows per sample, padding included
    std::vector<Placement> forward;   // held rows [src, src + n) go to send rows [dst, dst + n)
    int64_t forward_tokens = 0;       // 0: nothing is sent this step
    int64_t recv_tokens = 0;          // 0: nothing arrives this step
    bool packs = false;               // forwards less than it holds: the rows are packed first
    bool computes = true;
  };
  void pack_forward(const std::byte* held, const Step& step);

  const RankContext& c_;
  Comm& ring_;
  int next_ = 0, prev_ = 0;
  std::vector<Step> steps_;
  DeviceBuffer rotating_[2];  // the blocks of steps 1.. arrive in these, alternately
  DeviceBuffer kv_send_;      // packed forwarded runs, when a step sends fewer than it holds
};

}  // namespace cptune::backends
