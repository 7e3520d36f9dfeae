#pragma once
// The Ulysses motion: inside a Ulysses group, tensors move between the token owners (every head
// of my input tokens) and the head owners (my heads of my ring index's whole shard) by one
// all-to-all(-v) per phase, uneven token counts and head splits included. Forward: Q, K, V to
// the heads (phase qkv), O back (o); backward: dO to the heads (grad-o), dQ, dK, dV back
// (grad-qkv). UAA's metadata step (gather) lives here too.
#include <cstdint>
#include <span>
#include <vector>

#include "backends/exec/rank_context.h"

namespace cptune::backends {

class Comm;

class UlyssesExchange {
 public:
  // `group`: my Ulysses group, its members in ring-index-major order (member u = Layout::at(u, r)).
  // `backward`: the exchange will also move gradients (to_tokens of parts that sum).
  UlyssesExchange(const RankContext& ctx, Comm& group, MetadataChannel metadata, bool backward = false);

  // One tensor in both places: `tokens` [batch][my input tokens][all its heads][dim],
  // `heads` [batch][my shard's tokens][my heads][dim]. Q, dQ, O, dO take the Q heads and
  // their dims, K, dK, V, dV the KV heads.
  struct Part {
    Tensor tensor;
    std::byte* tokens;
    std::byte* heads;
    // dK, dV on their way home: where head owners share a KV head (a group's Q heads split over
    // members, or fewer KV heads than members) the token owner adds their parts, in fp32.
    bool sums = false;
  };
  void to_heads(std::span<const Part> parts);   // token owners -> head owners, one all-to-all-v
  void to_tokens(std::span<const Part> parts);  // head owners -> token owners

  // UAA's metadata step: the group learns every member's token count and checks it against the
  // layout each rank computed on its own. On the cpu channel (UAA*) the lengths never touch the
  // device; on the device channel they go through device memory and the Comm, and the copy back
  // to the host waits for the stream, as in peers that gather a tensor.
  void exchange_lengths();

  // Whether some KV head is held by several members (their dK, dV of it add up on the way home).
  bool shares_kv_heads() const { return shares_kv_heads_; }

 private:
  const RankContext& c_;
  Comm& group_;
  MetadataChannel metadata_;
  std::vector<std::vector<Placement>> member_places_;  // per member: its input runs in my shard
  int64_t length_slots_ = 0;                           // run lengths per rank in the length exchange
  DeviceBuffer send_, recv_;
  DeviceBuffer lengths_send_, lengths_recv_;           // device channel: lengths in device memory
  bool shares_kv_heads_ = false;
  DeviceBuffer sums_[2];                               // fp32 token-side sums of the summing parts

  int64_t heads_of(Tensor t, const RankLayout& rank) const;
  HeadRange head_range(Tensor t, const RankLayout& rank) const;
  int64_t all_heads(Tensor t) const;
  int64_t dim(Tensor t) const;
};

}  // namespace cptune::backends
