#pragma once
// sim candidates: every layout worth comparing for one shape on one cluster, and their ranking
// by the cost model. The tuner (what to measure) and the lookup's "simulated" fallback (what
// to answer without a measurement) both start here.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/layout.h"
#include "sim/constraints.h"
#include "sim/cost_model.h"
#include "sim/hardware.h"

namespace cptune::sim {

// The cluster a hardware file describes: its world and ranks per node.
inline Cluster cluster_of(const Hardware& hw) { return {hw.world(), hw.ranks_per_node}; }

// A candidate Layout::build refuses, with its Error's message (what peers cannot do and why).
struct Refusal {
  LayoutChoice candidate;
  std::string reason;
};

// Every strategy; hybrids over every U x R with 1 < U < P (U = P and R = P are the pure
// strategies); both rank orders where the mesh spans nodes of more than one rank (on one node
// every link is intra-node, with one rank per node every link is inter-node: orders tie);
// both head policies where they place heads differently (not for MHA, nor when Hkv % U == 0).
// Calls `feasible` with each candidate that builds and its Layout; the others go to `refused`.
// Only candidates `constraints` selects are visited; those its engine rules refuse go to
// `refused` with the rule's reason.
void for_each_candidate(const AttentionShape& shape, const Cluster& cluster,
                        const std::function<void(const LayoutChoice&, const Layout&)>& feasible,
                        std::vector<Refusal>* refused = nullptr, const Constraints& constraints = {});
std::vector<LayoutChoice> enumerate_candidates(const AttentionShape& shape, const Cluster& cluster,
                                            std::vector<Refusal>* refused = nullptr,
                                            const Constraints& constraints = {});

struct RankedCandidate {
  LayoutChoice candidate;
  Prediction prediction;
  double speedup_over_worst = 1;               // worst time / this time
  std::optional<double> speedup_over_ulysses;  // classic Ulysses time / this time, if it builds
};

struct Ranking {
  // Fastest first among those that fit in device memory, then the others, fastest first.
  std::vector<RankedCandidate> candidates;
  std::vector<Refusal> refused;
  std::optional<double> ulysses_s;  // classic Ulysses, when it builds
  double worst_s = 0;               // slowest that fits (slowest of all when none fits)
  std::vector<std::string> level_names;  // the topology's levels, innermost first (Prediction::level_bytes)
  const RankedCandidate* best() const { return candidates.empty() ? nullptr : &candidates.front(); }
};

Ranking rank_candidates(const AttentionShape& shape, const Cluster& cluster, const Hardware& hw,
                        const PredictOptions& options = {}, const Constraints& constraints = {});

}  // namespace cptune::sim
