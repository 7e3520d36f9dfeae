#pragma once
// sim::Topology: where every rank sits in the machine's levels (docs/design.md "Topology"), and the
// traffic a Layout puts on each level's links, counted in O(P) from the rank-1 structure of
// the Ulysses counts: rank a sends rank b x(a) * y(b) elements (Q,K,V: a's tokens times b's
// head width; O: a's head width times b's tokens), so prefix sums over the group members of
// one level instance give every rank's bytes to and from it without visiting pairs.
#include <cstdint>
#include <vector>

#include "core/layout.h"
#include "sim/hardware.h"

namespace cptune::sim {

// Ranks per instance of each level, innermost first; the last level holds the whole cluster.
struct Topology {
  std::vector<int64_t> level_ranks;
  // Per level: messages that meet there are staged through host memory above the instance
  // (Level::host_bounce on a level with an uplink, e.g. GPUs under one PCIe switch without
  // peer-to-peer), so they also cross the instance's uplink, up and back down. Empty: none.
  std::vector<uint8_t> staged_through_uplink;

  size_t levels() const { return level_ranks.size(); }
  int64_t instance(int64_t rank, size_t level) const { return rank / level_ranks[level]; }
  // The first level whose instance holds both ranks (the last level when no lower one does).
  size_t meet(int64_t a, int64_t b) const;
  bool staged(size_t level) const { return level < staged_through_uplink.size() && staged_through_uplink[level]; }
  bool operator==(const Topology&) const = default;
};

// The levels of levels_of(hw, ranks_per_node) on a cluster of `world` ranks.
Topology topology_of(const Hardware& hw, int64_t ranks_per_node, int64_t world);

// Link parameters of level i as the cost model reads them: the file's levels, or intra and
// inter for a two-level file (so calibrating intra and inter moves them). No allocation.
const LinkClass& level_link(const Hardware& hw, size_t level);
// The rank path's bandwidth at level i: halved where messages bounce through host memory, and
// never above the rank's injection port.
double level_bandwidth(const Hardware& hw, size_t level);
// The uplink of an instance of level i after oversubscription; 0 when it never limits.
double uplink_bandwidth(const Hardware& hw, size_t level);
std::string level_name(const Hardware& hw, size_t level);
size_t level_count(const Hardware& hw);

// One Ulysses exchange on a topology: per rank and level, the bytes it sends to and receives
// from the group members it first meets at that level and how many they are; per level, the
// most loaded uplink (max over that level's instances of max(bytes out, bytes in)).
struct ExchangeTraffic {
  std::vector<LevelBytes> sent, received, peers;  // [rank][level]
  LevelBytes uplink_bytes{};                      // [level]; the last level has no uplink
  bool empty() const { return sent.empty(); }
};

enum class Exchange { qkv, o, gather };
// Empty when the layout has no such exchange (U = 1; gather: only UAA strategies).
ExchangeTraffic exchange_traffic(const Layout& l, const Topology& t, Exchange which);

// The K,V ring (and allgather-kv's ring, which follows the same neighbours): per rank, the
// level at which it meets ring_next; per level, the most loaded uplink counted in K,V heads
// crossing it per step (one block per crossing rank, weighted by the heads it sends).
struct RingTraffic {
  std::vector<uint8_t> hop_level;  // [rank]
  LevelBytes uplink_heads{};       // [level]: max over instances of max(heads out, heads in)
  LevelBytes uplink_hops{};        // [level]: the same counting every hop once (all-gather blocks)
};
RingTraffic ring_traffic(const Layout& l, const Topology& t);

}  // namespace cptune::sim
