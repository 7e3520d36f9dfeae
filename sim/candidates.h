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
#include "sim/cost_model.h"
#include "sim/hardware.h"

namespace cptune::sim {

// The ranks of the context-parallel group and how they sit on nodes.
struct Cluster {
  int64_t world = 1;
  int64_t ranks_per_node = 1;  // G; rank p is on node p / G
  int64_t nodes() const { return (world + ranks_per_node - 1) / ranks_per_node; }
  static Cluster of(const Hardware& hw) { return {hw.world(), hw.ranks_per_node}; }
};

// One point of the search space: a strategy on a U x R mesh with a rank order and head policy.
struct Candidate {
  Strategy strategy = Strategy::uaa;
  int64_t ulysses = 1;
  int64_t ring = 1;
  RankOrder order = RankOrder::ulysses_inner;
  HeadPolicy head_policy = HeadPolicy::balanced;

  LayoutSpec to_spec(const AttentionShape& shape, const Cluster& cluster) const;
  // The spec's mesh is resolved first, so U and R are filled in for every strategy.
  static Candidate from_spec(const LayoutSpec& spec);
  std::string label() const;  // "hybrid-uaa U=4 R=4 ring-inner kv-aligned"
  bool operator==(const Candidate&) const = default;
};

// A candidate Layout::build refuses, with its Error's message (what peers cannot do and why).
struct Refusal {
  Candidate candidate;
  std::string reason;
};

// Every strategy; hybrids over every U x R with 1 < U < P (U = P and R = P are the pure
// strategies); both rank orders where the mesh spans nodes of more than one rank (on one node
// every link is intra-node, with one rank per node every link is inter-node: orders tie);
// both head policies where they place heads differently (not for MHA, nor when Hkv % U == 0).
// Calls `feasible` with each candidate that builds and its Layout; the others go to `refused`.
void for_each_candidate(const AttentionShape& shape, const Cluster& cluster,
                        const std::function<void(const Candidate&, const Layout&)>& feasible,
                        std::vector<Refusal>* refused = nullptr);
std::vector<Candidate> enumerate_candidates(const AttentionShape& shape, const Cluster& cluster,
                                            std::vector<Refusal>* refused = nullptr);

struct RankedCandidate {
  Candidate candidate;
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
                        const PredictOptions& options = {});

}  // namespace cptune::sim
