#pragma once
// sim::PreparedLayout: everything the cost model reads from one Layout, reduced once so that
// a prediction is a few dozen flops (the calibration fit and hardware what-if studies predict
// the same layouts many times). Every number is read from the Layout: link bytes per phase,
// FLOPs, peak memory, ring-step maxima, shard sizes; nothing is re-derived from the shape.
//
// Exactness: the slowest rank of a phase depends on the hardware (a rank with more peers but
// fewer bytes may be slower on a high-latency network), so the per-rank loads are kept, not
// their separate maxima; only loads that another load matches or exceeds in every coordinate
// are dropped, which cannot change any maximum because every term is non-decreasing in them.
#include <cstdint>
#include <vector>

#include "core/layout.h"
#include "sim/topology.h"

namespace cptune::sim {

// One rank's side of an all-to-all-v (Ulysses Q,K,V or O) or of the metadata gather. Level 0
// and 1 of a two-level topology are the intra-node and inter-node link classes.
struct ExchangeLoad {
  LevelBytes peers{};           // group members it first meets at each level
  LevelBytes bytes{};           // max(sent, received) to and from them: links are full duplex
  int64_t injection_bytes = 0;  // max(all sent, all received): what its own port carries
  int64_t copy_bytes = 0;  // local memory traffic: pack the send buffer, unpack the receive buffer
};

// The attention FLOPs of every rank of one node, as runs of equal values in ascending order:
// what the node's ranks wait on when they share its compute units (CPU ranks on fewer cores,
// Hardware::compute_units_per_node). Kept for the node that computes the most in total; on one
// node, the only case where units are shared today, it is exact.
struct NodeWork {
  std::vector<std::pair<int64_t, int64_t>> flops_ranks;  // (FLOPs of a rank, ranks with that many)
  bool operator==(const NodeWork&) const = default;
};

// One ring step's slowest rank, and how many consecutive steps share the same numbers.
struct RingStepLoad {
  LevelBytes bytes{};                         // largest K,V block sent to a neighbour met at each level
  int64_t flops = 0;                          // largest attention block computed
  int64_t merge_bytes = 0;                    // online-softmax merge traffic (0 on step 0)
  NodeWork node;                              // every rank's block on the busiest node
  int64_t repeat = 1;
};

// Bytes sent over each link class, summed over all ranks.
struct ClassBytes {
  int64_t intra = 0, inter = 0;
  ClassBytes& operator+=(const ClassBytes& o) {
    intra += o.intra;
    inter += o.inter;
    return *this;
  }
};

struct PreparedLayout {
  DType dtype = DType::bf16;
  Topology topology;  // the levels every LevelBytes below counts

  // Ulysses all-to-alls (empty when U = 1) and the UAA gather of sequence lengths, and per
  // level the most loaded uplink of each (max over instances of max(out, in) bytes).
  std::vector<ExchangeLoad> qkv, o, gather;
  LevelBytes qkv_uplink{}, o_uplink{}, gather_uplink{};

  // Ring attention (rotating strategies with R > 1): steps in order, runs of equal steps merged.
  std::vector<RingStepLoad> ring_steps;
  // Per level, the most loaded uplink of a step that sends: the heads crossing it times the
  // largest shard (exact when shards hold equal tokens, else at most a token per chunk above).
  LevelBytes ring_uplink{};
  // Backward only: the final hop that returns each dK,dV block to its owner (fp32 bytes).
  LevelBytes ring_return_bytes{};
  ClassBytes ring_return_total;

  // All-gather of K,V (allgather-kv): R-1 ring steps of the largest shard's K,V bytes.
  int64_t allgather_steps = 0;
  int64_t allgather_block_bytes = 0;
  LevelBytes allgather_hops{};    // 1 where its ring has a hop between ranks meeting at that level
  LevelBytes allgather_uplink{};  // per step, as ring_uplink

  // Bytes sent across each level, summed over ranks, per forward phase and the backward's return hop.
  LevelBytes qkv_levels{}, o_levels{}, gather_levels{}, ring_levels{}, ring_return_levels{}, allgather_levels{};

  // Attention without a ring: the rank with the most FLOPs (padding included) and its useful part.
  int64_t max_flops = 0;
  int64_t useful_flops_of_max = 0;
  NodeWork attention_node;  // every rank's attention FLOPs on the busiest node

  // The shape of one attention call (sim/attention_rate.h): query rows of the call on the rank
  // with the most FLOPs (its whole shard), of a ring step's block (the largest shard), the
  // (batch, query head) pairs of one call, and the head dim (mean of D and Dv).
  int64_t attention_query_rows = 0, ring_query_rows = 0, attention_batch_heads = 0, call_head_dim = 0;

  int64_t peak_bytes = 0;           // forward, largest rank
  double padding_fraction = 0;      // padding tokens / stored tokens (classic strategies)
  ClassBytes qkv_total, o_total, ring_total, allgather_total, gather_total;  // per Layout phase

  // Gradients of K,V travel in fp32 wherever they are summed on the way (the ring's dK,dV hops
  // and hop home, the reduce-scatter): kKvGradElemBytes per element instead of elem_bytes. So
  // does cptune's executor (backends/exec/ring_rotation, kv_allgather) and ring-flash-attn
  // (zigzag_ring_flash_attn.py @8996282: dk, dv .to(torch.float32) before they rotate).
  static constexpr int64_t kKvGradElemBytes = 4;
  int64_t elem_bytes = 0;  // of the storage dtype
  int64_t kv_grad(int64_t stored_bytes) const { return stored_bytes * kKvGradElemBytes / elem_bytes; }
  LevelBytes kv_grad(const LevelBytes& stored) const {
    LevelBytes out{};
    for (size_t i = 0; i < kMaxLevels; ++i) out[i] = kv_grad(stored[i]);
    return out;
  }
  ClassBytes kv_grad(const ClassBytes& stored) const { return {kv_grad(stored.intra), kv_grad(stored.inter)}; }

  bool has_ring() const { return !ring_steps.empty(); }
};

struct PrepareOptions {
  // Keep every ring step's busiest-node work (NodeWork): O(P) per step, read only when ranks
  // share compute units (Hardware::compute_units_per_node > 0). Without it a ring costs O(P).
  bool node_work = true;
};

// On the two levels of the layout's mesh (its nodes and the network between them).
PreparedLayout prepare(const Layout& layout);
// On a topology (topology_of(hw, ...)); O(P) per candidate plus O(segments) per ring step.
PreparedLayout prepare(const Layout& layout, const Topology& topology, const PrepareOptions& options = {});

}  // namespace cptune::sim
