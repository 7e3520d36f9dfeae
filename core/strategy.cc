#include "core/strategy.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace cptune {
namespace {

using P = Payload;
constexpr Payload kLengths[] = {P::lengths};
constexpr Payload kQKV[] = {P::q, P::k, P::v};
constexpr Payload kO[] = {P::o};
constexpr Payload kKV[] = {P::k, P::v};
constexpr Payload kGradO[] = {P::grad_o};
constexpr Payload kGradQKV[] = {P::grad_q, P::grad_k, P::grad_v};
constexpr Payload kGradKV[] = {P::grad_k, P::grad_v};
constexpr Payload kKVGradKV[] = {P::k, P::v, P::grad_k, P::grad_v};

// The steps plans are made of; a step of a group runs only where its group has two members.
constexpr PhaseStep kGather{Phase::gather, Group::ulysses, Motion::lengths_allgather, kLengths};
constexpr PhaseStep kScatterQKV{Phase::qkv, Group::ulysses, Motion::seq_to_heads, kQKV};
constexpr PhaseStep kAllgatherKV{Phase::allgather, Group::ring, Motion::kv_allgather, kKV};
constexpr PhaseStep kLocal{Phase::attention, Group::none, Motion::none, {}};
constexpr PhaseStep kRing{Phase::attention, Group::ring, Motion::ring, kKV};
constexpr PhaseStep kGatherO{Phase::o, Group::ulysses, Motion::heads_to_seq, kO};
constexpr PhaseStep kScatterGradO{Phase::grad_o, Group::ulysses, Motion::seq_to_heads, kGradO};
constexpr PhaseStep kLocalBwd{Phase::attention_bwd, Group::none, Motion::none, {}};
constexpr PhaseStep kRingBwd{Phase::attention_bwd, Group::ring, Motion::ring, kKVGradKV, 0, true};
constexpr PhaseStep kGatherGradQKV{Phase::grad_qkv, Group::ulysses, Motion::heads_to_seq, kGradQKV};
constexpr PhaseStep kReduceScatterGradKV{Phase::reduce_scatter, Group::ring, Motion::reduce_scatter, kGradKV};

constexpr PhaseStep kUlyssesFwd[] = {kScatterQKV, kLocal, kGatherO};
constexpr PhaseStep kUaaFwd[] = {kGather, kScatterQKV, kLocal, kGatherO};
constexpr PhaseStep kUlyssesBwd[] = {kScatterGradO, kLocalBwd, kGatherGradQKV};
constexpr PhaseStep kRingFwd[] = {kRing};
constexpr PhaseStep kRingBwdPlan[] = {kRingBwd};
constexpr PhaseStep kAllgatherFwd[] = {kAllgatherKV, kLocal};
constexpr PhaseStep kAllgatherBwd[] = {kLocalBwd, kReduceScatterGradKV};
constexpr PhaseStep kHybridFwd[] = {kScatterQKV, kRing, kGatherO};
constexpr PhaseStep kHybridUaaFwd[] = {kGather, kScatterQKV, kRing, kGatherO};
constexpr PhaseStep kHybridBwd[] = {kScatterGradO, kRingBwd, kGatherGradQKV};

struct Row {
  StrategyTraits traits;
  std::span<const PhaseStep> forward, backward;
};

using M = MeshRule;
using Z = ZigzagRule;
using S = Strategy;
// strategy, mesh, ulysses, gathers lengths, pads classic, rotates K,V, all-gathers K,V, zigzag,
// zigzag block placement; forward plan, backward plan.
constexpr Row kTable[] = {
    {{S::ulysses, M::ulysses_only, true, false, true, false, false, Z::never, false}, kUlyssesFwd, kUlyssesBwd},
    {{S::uaa, M::ulysses_only, true, true, false, false, false, Z::never, false}, kUaaFwd, kUlyssesBwd},
    {{S::ring, M::ring_only, false, false, false, true, false, Z::never, false}, kRingFwd, kRingBwdPlan},
    {{S::ring_zigzag, M::ring_only, false, false, false, true, false, Z::always, true}, kRingFwd, kRingBwdPlan},
    {{S::allgather_kv, M::ring_only, false, false, false, false, true, Z::never, false}, kAllgatherFwd, kAllgatherBwd},
    {{S::hybrid, M::both, true, false, true, true, false, Z::unless_full_mask, false}, kHybridFwd, kHybridBwd},
    {{S::hybrid_uaa, M::both, true, true, false, true, false, Z::unless_full_mask, false}, kHybridUaaFwd, kHybridBwd},
};

const Row& row_of(Strategy s) {
  for (const Row& row : kTable)
    if (row.traits.strategy == s) return row;
  throw Error("unknown strategy " + std::to_string(static_cast<int>(s)));
}

// The strategy with exactly these traits.
Strategy find(MeshRule mesh, bool ulysses, bool gathers, bool classic, bool rotates) {
  for (const Row& row : kTable) {
    const StrategyTraits& t = row.traits;
    if (t.mesh == mesh && t.ulysses == ulysses && t.gathers_lengths == gathers && t.pads_classic == classic &&
        t.rotates_kv == rotates)
      return t.strategy;
  }
  throw Error("no strategy has these traits");
}

void add_steps(PhasePlan& plan, std::span<const PhaseStep> steps, const LayoutChoice& c) {
  for (PhaseStep step : steps) {
    if (step.group == Group::ulysses && c.ulysses < 2) continue;
    const bool attention = step.phase == Phase::attention || step.phase == Phase::attention_bwd;
    if (step.group == Group::ring && c.ring < 2) {
      if (!attention) continue;
      step = {step.phase, Group::none, Motion::none, {}};  // a ring of one attends locally
    }
    if (step.motion == Motion::ring) step.ring_steps = c.ring;
    plan.push_back(step);
  }
}

}  // namespace

const StrategyTraits& strategy_traits(Strategy s) { return row_of(s).traits; }

bool zigzag_chunks(Strategy s, const Mask& m) {
  switch (strategy_traits(s).zigzag) {
    case ZigzagRule::never:
      return false;
    case ZigzagRule::always:
      return true;
    case ZigzagRule::unless_full_mask:
      return m.kind != MaskKind::full;
  }
  return false;
}

Strategy uneven_twin(Strategy s) {
  const StrategyTraits& t = strategy_traits(s);
  if (!t.pads_classic) return s;
  return find(t.mesh, t.ulysses, t.ulysses, false, t.rotates_kv);
}

Strategy hybrid_twin(Strategy s) {
  const StrategyTraits& t = strategy_traits(s);
  return find(MeshRule::both, true, t.gathers_lengths, t.pads_classic, true);
}

LayoutChoice resolve(LayoutChoice c, const Cluster& cluster) {
  if (cluster.world < 1) throw Error("world size " + std::to_string(cluster.world) + " must be at least 1");
  if (cluster.ranks_per_node < 1)
    throw Error("ranks per node " + std::to_string(cluster.ranks_per_node) + " must be at least 1");
  const std::string name(to_string(c.strategy));
  switch (strategy_traits(c.strategy).mesh) {
    case MeshRule::ulysses_only:
      if (c.ring > 1)
        throw Error(name + " has no ring degree (got ring degree " + std::to_string(c.ring) + "); use " +
                    std::string(to_string(hybrid_twin(c.strategy))) + " for U x R meshes");
      c.ulysses = cluster.world;
      c.ring = 1;
      break;
    case MeshRule::ring_only:
      if (c.ulysses > 1)
        throw Error(name + " has no Ulysses degree (got Ulysses degree " + std::to_string(c.ulysses) +
                    "); use hybrid or hybrid-uaa for U x R meshes");
      c.ulysses = 1;
      c.ring = cluster.world;
      break;
    case MeshRule::both:
      // One degree given (the other 0): the other is what makes U x R = world.
      if (c.ulysses == 0 && c.ring > 0 && cluster.world % c.ring == 0) c.ulysses = cluster.world / c.ring;
      if (c.ring == 0 && c.ulysses > 0 && cluster.world % c.ulysses == 0) c.ring = cluster.world / c.ulysses;
      if (c.ulysses < 1 || c.ring < 1)
        throw Error(name + " needs a Ulysses degree and a ring degree of at least 1 (got U=" + std::to_string(c.ulysses) +
                    ", R=" + std::to_string(c.ring) + ")");
      if (c.ulysses * c.ring != cluster.world)
        throw Error("Ulysses degree " + std::to_string(c.ulysses) + " x ring degree " + std::to_string(c.ring) +
                    " != world " + std::to_string(cluster.world) + "; choose U and R with U x R = world");
      break;
  }
  return c;
}

std::vector<std::pair<int64_t, int64_t>> candidate_meshes(Strategy s, int64_t world) {
  switch (strategy_traits(s).mesh) {
    case MeshRule::ulysses_only:
      return {{world, 1}};
    case MeshRule::ring_only:
      return {{1, world}};
    case MeshRule::both:
      break;
  }
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t u = 2; u < world; ++u)
    if (world % u == 0) out.emplace_back(u, world / u);
  return out;
}

bool PhaseStep::carries(Payload p) const { return std::find(moves.begin(), moves.end(), p) != moves.end(); }

const PhaseStep* PhasePlan::find(Phase p) const {
  for (const PhaseStep& step : *this)
    if (step.phase == p) return &step;
  return nullptr;
}

bool PhasePlan::ring_attention() const {
  return std::any_of(begin(), end(), [](const PhaseStep& s) { return s.motion == Motion::ring; });
}

void PhasePlan::push_back(const PhaseStep& step) {
  if (size_ == steps_.size()) throw Error("a phase plan holds at most " + std::to_string(kPhaseCount) + " phases");
  steps_[size_++] = step;
}

PhasePlan phase_plan(const LayoutChoice& choice, Pass pass) {
  const Row& row = row_of(choice.strategy);
  PhasePlan plan;
  if (has_forward(pass)) add_steps(plan, row.forward, choice);
  if (has_backward(pass)) add_steps(plan, row.backward, choice);
  return plan;
}

}  // namespace cptune
