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
  // `backward`: attend_backward() will run (its dK, dV buffers are allocated).
  RingRotation(const RankContext& ctx, Comm& ring, bool backward = false);

  // Step k attends to the shard of ring index r - k. `first` is my ring index's shard, only read.
  void attend(const std::byte* first, const AttendBlock& attend);

  // The backward: K,V travel again as in attend(), and with each block its dK, dV (fp32, the
  // whole shard of its ring index) gathering every rank's share; after the last step each
  // takes one more hop, home to its owner (my successor holds my block then). Returns my
  // shard's dK, dV (kv_grad_bytes), in a buffer of this object.
  const std::byte* attend_backward(const std::byte* first, const AttendBlockBackward& attend);

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
    int64_t source_tokens = 0;        // stored rows of the whole shard the block belongs to
    std::vector<Placement> in_source; // shard rows [src, src + n) are held rows [dst, dst + n)
  };
  void pack_forward(const std::byte* held, const Step& step);
  void add_held_grads(const Step& step, std::byte* shard_grads);

  const RankContext& c_;
  Comm& ring_;
  int next_ = 0, prev_ = 0;
  std::vector<Step> steps_;
  DeviceBuffer rotating_[2];  // the blocks of steps 1.. arrive in these, alternately
  DeviceBuffer kv_send_;      // packed forwarded runs, when a step sends fewer than it holds
  DeviceBuffer grads_[2];     // backward: dK, dV of the block held and of the one arriving
  DeviceBuffer scratch_;      // backward: dK, dV of a block that holds fewer rows than its shard
};

}  // namespace cptune::backends
