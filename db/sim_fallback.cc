#include "db/sim_fallback.h"

#include "core/error.h"

namespace cptune::db {

Fallback simulator_fallback(sim::Hardware hardware, Cluster cluster, sim::PredictOptions options,
                            sim::Constraints constraints) {
  return [hardware = std::move(hardware), cluster, options,
          constraints = std::move(constraints)](const AttentionShape& key) -> std::optional<Answer> {
    sim::Ranking ranking;
    try {
      ranking = sim::rank_candidates(key, cluster, hardware, options, constraints);
    } catch (const Error&) {
      return std::nullopt;  // a shape no layout accepts on this cluster has no answer
    }
    const sim::RankedCandidate* best = ranking.best();
    if (!best || !best->prediction.fits) return std::nullopt;
    return Answer{best->candidate, best->prediction.total_s, Source::simulated, 0};
  };
}

Explain simulator_refusal(sim::Hardware hardware, Cluster cluster, sim::PredictOptions options,
                          sim::Constraints constraints) {
  return [hardware = std::move(hardware), cluster, options,
          constraints = std::move(constraints)](const AttentionShape& key) -> std::string {
    try {
      const sim::Ranking ranking = sim::rank_candidates(key, cluster, hardware, options, constraints);
      if (!ranking.candidates.empty()) return "no candidate fits in device memory";
      return ranking.refused.empty() ? "no candidate" : to_string(ranking.refused.back().candidate) + ": " +
                                                            ranking.refused.back().reason;
    } catch (const Error& e) {
      return e.what();
    }
  };
}

}  // namespace cptune::db
