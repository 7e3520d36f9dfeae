#pragma once
// core::Layout: the exact placement of every token and head for one strategy on one mesh.
// The single source of truth: the simulator and the executor read split sizes, counts and
// the ring schedule from here and never recompute them.
//
// How tokens are placed (docs/design.md): every sequence is cut into C chunks, C = R (plain) or
// 2R (zigzag: ring index r owns chunks r and 2R-1-r); each chunk is cut into U pieces and
// Ulysses rank u of ring index r holds piece u of each chunk it owns (its input, before the
// all-to-all). Cuts follow torch.tensor_split (part i of n gets floor(L/n) + (i < L mod n));
// classic strategies (ulysses, hybrid) instead pad L up to a multiple of C*U and cut equally,
// as the peers do. After the all-to-all, rank (u, r) holds all tokens of ring index r (its
// "shard") for its own head range; the ring then rotates K,V shards across the R ring indices.
#include <cstdint>
#include <utility>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/mask_pairs.h"
#include "core/strategy.h"
#include "core/tensor_split.h"
#include "core/types.h"

namespace cptune {

// A contiguous run of positions [begin, begin + count) of sequence `seq`.
// Classic strategies store `padded` >= count tokens for the run (padding sits at the end of a
// sequence, so the real tokens are the run's prefix); elsewhere padded == count.
struct TokenRun {
  int32_t seq = 0;
  int64_t begin = 0;
  int64_t count = 0;
  int64_t padded = 0;
  int64_t end() const { return begin + count; }
};

struct HeadRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t count() const { return end - begin; }
};

enum class Tensor { q, k, v, o };

// Bytes a rank moves in one phase, split by link class (self-copies are not link traffic).
struct LinkBytes {
  int64_t send_intra = 0;
  int64_t send_inter = 0;
  int64_t recv_intra = 0;
  int64_t recv_inter = 0;
  int64_t send() const { return send_intra + send_inter; }
  int64_t recv() const { return recv_intra + recv_inter; }
};

// What one rank does and holds. Token and byte counts include the batch where they are bytes.
struct RankLayout {
  int64_t rank = 0, u = 0, r = 0, node = 0;
  std::vector<TokenRun> input_runs;  // real tokens held before the all-to-all, in storage order
  int64_t input_tokens = 0;          // real tokens held (per sample)
  int64_t input_padded_tokens = 0;   // tokens stored, padding included (classic strategies)
  HeadRange q_heads;                 // query heads it computes after the all-to-all
  HeadRange kv_heads;                // KV heads those query heads use (all it receives)

  LinkBytes qkv_bytes;        // Ulysses all-to-all of Q, K, V
  LinkBytes o_bytes;          // Ulysses all-to-all of O back to the token owners
  LinkBytes ring_bytes;       // K,V rotation, all R-1 steps
  LinkBytes allgather_bytes;  // all-gather of K,V (allgather-kv)
  LinkBytes gather_bytes;     // UAA metadata: per-rank sequence lengths (int64 each)
  int64_t flops = 0;          // attention FLOPs computed, padding included, mask exact
  int64_t useful_flops = 0;   // the same over real tokens only
  int64_t peak_bytes = 0;     // all buffers it holds at once (upper bound: their sum)

  int64_t send_bytes() const;
  int64_t recv_bytes() const;
};

// The slowest rank of one ring step (the sim's per-step max of communication and compute).
struct RingStepMax {
  int64_t send_bytes_intra = 0;  // largest K,V block sent over an intra-node link this step
  int64_t send_bytes_inter = 0;  // ... over an inter-node link (0 if none)
  int64_t flops = 0;             // largest attention block computed this step
};

class Layout {
 public:
  // Throws Error naming the bad value and the fix when the spec cannot be laid out.
  static Layout build(const LayoutSpec& spec);

  const LayoutSpec& spec() const { return spec_; }  // choice resolved (U, R filled in)
  const AttentionShape& shape() const { return spec_.shape; }
  const Cluster& cluster() const { return spec_.cluster; }
  const LayoutChoice& choice() const { return spec_.choice; }
  Strategy strategy() const { return spec_.choice.strategy; }
  const StrategyTraits& traits() const { return strategy_traits(spec_.choice.strategy); }
  // The phases one pass runs on this mesh, in order (core/strategy.h).
  PhasePlan plan(Pass pass) const { return phase_plan(spec_.choice, pass); }
  int64_t world() const { return spec_.cluster.world; }
  int64_t ulysses() const { return spec_.choice.ulysses; }
  int64_t ring() const { return spec_.choice.ring; }
  bool zigzag() const { return zigzag_; }
  // How sequences sit on the ring indices: "contiguous", "zigzag" or "lpt". Block masks on ring,
  // hybrid and hybrid-uaa (R <= kMaxPlacedRing) take the balanced placement (core/block_placement.h); ring-zigzag stays
  // zigzag (UltraAttn's baseline); every other mask and strategy keeps its fixed chunks.
  std::string_view placement() const { return placement_; }
  // max / mean over ring indices of their queries' attention pairs, padding included (1 if R = 1).
  double placement_imbalance() const { return placement_imbalance_; }
  int64_t nodes() const { return spec_.cluster.nodes(); }

  // Mesh coordinates. Ulysses groups: same r; ring groups: same u.
  int64_t global_rank(int64_t u, int64_t r) const;
  int64_t node_of(int64_t rank) const { return spec_.cluster.node_of(rank); }
  std::span<const RankLayout> ranks() const { return ranks_; }
  const RankLayout& rank(int64_t p) const { return ranks_[static_cast<size_t>(p)]; }
  const RankLayout& at(int64_t u, int64_t r) const { return rank(global_rank(u, r)); }

  // Tokens attended after the all-to-all by ring index r (its chunks), and their counts.
  std::span<const TokenRun> shard_runs(int64_t r) const;
  int64_t shard_tokens(int64_t r) const { return shard_tokens_[static_cast<size_t>(r)]; }
  int64_t shard_padded_tokens(int64_t r) const { return shard_padded_[static_cast<size_t>(r)]; }

  // Ulysses exchange of tensor t from rank `from` to rank `to` (same Ulysses group), in
  // elements, batch included. For Q, K, V `from` is the token owner; for O it is the rank that
  // computed the heads and `to` the token owner. Zero across Ulysses groups.
  int64_t exchange_elems(Tensor t, int64_t from, int64_t to) const;
  // The same for every member of rank's Ulysses group, in member (u) order.
  std::vector<int64_t> send_counts(Tensor t, int64_t rank) const;
  std::vector<int64_t> recv_counts(Tensor t, int64_t rank) const;

  // Ring schedule: at step k (0..R-1) ring index r computes against the K,V shard of ring
  // index (r - k) mod R and, for k < R-1, sends that shard on to r+1 while receiving the next.
  int64_t ring_kv_source(int64_t r, int64_t step) const;
  int64_t ring_next(int64_t rank) const;  // global rank of the next ring member
  int64_t ring_prev(int64_t rank) const;
  RingStepMax ring_step_max(int64_t step) const;  // O(R * sequences)
  // Block masks on rotating strategies (ring, ring-zigzag, hybrid, hybrid-uaa), 1 < R <= kMaxPlacedRing: a ring
  // step skips the attention of a block no query of the holder sees, and a K,V run travels on only
  // while a later holder needs it. Every other mask: the whole shard every step, compute every step.
  bool ring_skips() const { return ring_skips_; }
  // K,V runs (of ring index ring_kv_source(r, step)) that ring index r holds at `step`: step 0 its own shard_runs(r);
  // later the runs its predecessor forwarded. In storage order (a subset of the source shard's runs, same order).
  std::span<const TokenRun> ring_held_runs(int64_t r, int64_t step) const;
  // The runs ring index r sends on to r+1 at step (step < R-1): those of its held runs that a later receiver's
  // queries see (none of r+1 .. r+R-1-step needs the others). Empty: nothing is sent that step.
  std::span<const TokenRun> ring_forward_runs(int64_t r, int64_t step) const;
  // Whether any query of ring index r sees any key it holds at step (false: the step's attention is skipped).
  bool ring_step_computes(int64_t r, int64_t step) const;
  // Stored (padded) tokens of ring_forward_runs(r, step), in O(1).
  int64_t ring_forward_tokens(int64_t r, int64_t step) const;

  // Attention pairs (query, key) between two token sets under the mask, per head and sample:
  // pairs() over real tokens; run_pairs(..., padded = true) over stored rows, padding included,
  // as the kernels compute them.
  int64_t pairs(std::span<const TokenRun> queries, std::span<const TokenRun> keys) const;
  int64_t run_pairs(std::span<const TokenRun> queries, std::span<const TokenRun> keys, bool padded) const;

  // The formulas every reader of a Layout (sim, executor) uses, said once. FLOPs of `pairs`
  // visible (query, key) pairs on `q_heads` heads: 2 (D + Dv) per pair and head, batch included.
  int64_t attention_flops(int64_t pairs, int64_t q_heads) const {
    return pairs * 2 * (spec_.shape.head_dim + spec_.shape.v_head_dim) * q_heads * spec_.shape.batch;
  }
  // Bytes of a K,V block of `tokens` stored tokens and `kv_heads` heads, batch included.
  int64_t kv_block_bytes(int64_t tokens, int64_t kv_heads) const {
    return tokens * kv_heads * (spec_.shape.head_dim + spec_.shape.v_head_dim) * spec_.shape.batch * elem_bytes();
  }

  // Per sample, over all sequences: padding tokens added (classic only) and heads padded
  // (always 0: cptune never pads heads; classic strategies refuse indivisible heads instead).
  int64_t padding_tokens() const { return padding_tokens_; }
  int64_t padding_heads() const { return 0; }

  int64_t elem_bytes() const { return dtype_bytes(spec_.shape.dtype); }

 private:
  Layout() = default;
  void place_heads();
  void place_tokens();
  void init_ranks();
  void place_sequence(size_t seq);
  void place_blocks();
  void place_chunk(size_t seq, int64_t r, int64_t begin, int64_t size);
  void plan_ring_skips();
  struct Prefixes;
  Prefixes prefixes() const;
  void count_costs();
  void count_ulysses_bytes(RankLayout& rl, const Prefixes& p, bool gathers) const;
  void count_ring_bytes(RankLayout& rl, const Prefixes& p);
  void count_allgather_bytes(RankLayout& rl, const Prefixes& p) const;
  void count_memory(RankLayout& rl, const Prefixes& p, bool rotates, bool allgathers) const;
  std::pair<int64_t, int64_t> ulysses_peers_on_node(int64_t rank) const;  // [lo, hi) of u
  std::pair<int64_t, int64_t> ring_peers_on_node(int64_t rank) const;     // [lo, hi) of r

  LayoutSpec spec_;
  bool zigzag_ = false;
  std::string_view placement_ = "contiguous";
  double placement_imbalance_ = 1.0;
  bool ring_skips_ = false;
  // With ring_skips_, per (r * R + step): runs held, runs forwarded, their stored tokens, compute.
  std::vector<std::vector<TokenRun>> ring_held_, ring_forward_;
  std::vector<int64_t> ring_forward_tokens_;
  std::vector<uint8_t> ring_computes_;
  std::vector<RankLayout> ranks_;
  std::vector<HeadRange> q_heads_by_u_, kv_heads_by_u_;
  std::vector<std::vector<TokenRun>> shard_runs_by_r_;  // real tokens per ring index
  std::vector<int64_t> shard_tokens_, shard_padded_;
  std::vector<int64_t> padded_len_;  // per sequence, after padding (== length if uneven)
  int64_t padding_tokens_ = 0;
  int64_t max_q_heads_ = 0;
  std::vector<int64_t> ring_max_kv_heads_intra_, ring_max_kv_heads_inter_;  // per r, next link
};

}  // namespace cptune
