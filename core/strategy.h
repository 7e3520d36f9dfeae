#pragma once
// One row per strategy (core/types.h Strategy): its traits, its mesh rule and its phase plan,
// said once in core/strategy.cc. Layout, the simulator, the executor and the JSON read them
// here; no other code branches on a strategy's name (printers of names aside). The model is
// nccl-tests' one `struct testColl` per collective.
//
// A phase plan is the ordered phases of one pass (forward, backward or both) on a resolved
// mesh, each with the group it runs over, how it moves data and what it moves. Phases of a
// Ulysses group run only when U > 1, those of a ring group only when R > 1; attention always
// runs, locally when its ring has one member.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "core/types.h"

namespace cptune {

// How a strategy's U x R mesh follows from the world P.
enum class MeshRule {
  ulysses_only,  // U = P, R = 1 (ulysses, uaa)
  ring_only,     // U = 1, R = P (ring, ring-zigzag, allgather-kv)
  both,          // U x R = P, both chosen, U and R at least 2 as candidates (hybrid, hybrid-uaa)
};

// When sequences are cut into 2R chunks, ring index r owning chunks r and 2R-1-r.
enum class ZigzagRule {
  never,
  always,            // ring-zigzag
  unless_full_mask,  // hybrids: zigzag balances any mask that is not full
};

// What a strategy is. Both head policies are open to every strategy; they differ only where
// U > 1 (Layout::place_heads).
struct StrategyTraits {
  Strategy strategy;
  MeshRule mesh;
  bool ulysses;          // a seq->heads all-to-all of Q,K,V and back of O (U may still be 1)
  bool gathers_lengths;  // UAA: per-rank sequence lengths travel before the all-to-all-v
  bool pads_classic;     // classic Ulysses: equal all-to-all, tokens padded to C x U, heads divisible by U
  bool rotates_kv;       // ring attention: K,V blocks rotate over the R ring indices
  bool allgathers_kv;    // K,V all-gathered over the ring group, then local attention
  ZigzagRule zigzag;
  // Block masks on rotating strategies (core/block_placement.h): zigzag keeps its chunks
  // (UltraAttn's baseline), every other one takes the balanced placement.
  bool zigzag_block_placement;
};

const StrategyTraits& strategy_traits(Strategy s);

// The traits as predicates (what older call sites read).
inline bool uses_ulysses(Strategy s) { return strategy_traits(s).ulysses; }
inline bool pads_classic(Strategy s) { return strategy_traits(s).pads_classic; }
inline bool rotates_kv(Strategy s) { return strategy_traits(s).rotates_kv; }
inline bool gathers_lengths(Strategy s) { return strategy_traits(s).gathers_lengths; }
bool zigzag_chunks(Strategy s, const Mask& m);  // 2R chunks per sequence under this mask

// The uneven strategy that lifts a classic one's divisibility rules (ulysses -> uaa,
// hybrid -> hybrid-uaa); an uneven strategy is its own.
Strategy uneven_twin(Strategy s);
// The U x R strategy with the same Ulysses exchange (ulysses -> hybrid, uaa -> hybrid-uaa);
// Ulysses strategies only (Error otherwise).
Strategy hybrid_twin(Strategy s);

// The canonical choice on a cluster, by the mesh rule: ulysses-only strategies get U = P,
// ring-only R = P; hybrids keep theirs, a degree left 0 becomes world / the other. Throws
// Error, in values, when the degrees contradict the strategy or U x R != world.
LayoutChoice resolve(LayoutChoice choice, const Cluster& cluster);
// Every (U, R) a search tries for the strategy on `world` ranks, by the same rule: (P, 1),
// (1, P), or each U in [2, P) dividing P with R = P / U.
std::vector<std::pair<int64_t, int64_t>> candidate_meshes(Strategy s, int64_t world);

// The group a phase runs over.
enum class Group {
  none,     // local: no communication
  ulysses,  // the rank's Ulysses group (same ring index r); only when U > 1
  ring,     // the rank's ring group (same Ulysses index u); only when R > 1
};

// How a phase moves data over its group.
enum class Motion {
  none,               // local attention (forward or backward)
  lengths_allgather,  // every member's per-sequence lengths (int64 each) to every member
  seq_to_heads,       // all-to-all(-v): token owners -> head owners
  heads_to_seq,       // all-to-all(-v): head owners -> token owners
  kv_allgather,       // every ring index's K,V shard to every member
  ring,               // R steps of attention, each block passed on to the next ring index meanwhile
  reduce_scatter,     // every member's partial dK,dV summed and returned to the shard's owner
};

// What a phase moves.
enum class Payload { lengths, q, k, v, o, grad_o, grad_q, grad_k, grad_v };

struct PhaseStep {
  Phase phase = Phase::attention;
  Group group = Group::none;
  Motion motion = Motion::none;
  std::span<const Payload> moves;  // in the order the phase moves them
  int64_t ring_steps = 0;          // Motion::ring: R (steps 0..R-1; the last sends nothing)
  // Backward ring: after the last step each dK,dV block takes one more hop, home to its owner.
  bool returns_to_owner = false;

  bool carries(Payload p) const;
};

// The phases of one pass in order (at most kPhaseCount), only those that run on the mesh.
class PhasePlan {
 public:
  const PhaseStep* begin() const { return steps_.data(); }
  const PhaseStep* end() const { return steps_.data() + size_; }
  size_t size() const { return size_; }
  bool has(Phase p) const { return find(p) != nullptr; }
  const PhaseStep* find(Phase p) const;  // nullptr when the phase does not run
  // Whether the pass's attention (forward or backward) rotates K,V around a ring of R > 1.
  bool ring_attention() const;

  void push_back(const PhaseStep& step);  // internal: phase_plan builds it

 private:
  std::array<PhaseStep, kPhaseCount> steps_{};
  size_t size_ = 0;
};

// The plan of `pass` for a resolved choice (U x R as resolve fills them in). fwd+bwd: the
// forward's phases, then the backward's:
//   Ulysses, UAA   [gather (UAA)], qkv, attention, o | grad-o, attention-bwd, grad-qkv
//   ring, zigzag   attention (ring)                  | attention-bwd (ring, dK,dV return home)
//   allgather-kv   allgather, attention              | attention-bwd, reduce-scatter
//   hybrids        [gather], qkv, attention (ring), o | grad-o, attention-bwd (ring), grad-qkv
PhasePlan phase_plan(const LayoutChoice& choice, Pass pass);

}  // namespace cptune
