#include "tuner/tuner.h"

#include <algorithm>
#include <optional>
#include <set>

#include "backends/comm/comm.h"
#include "core/error.h"
#include "db/store.h"

namespace cptune::tuner {
namespace {

// Rank 0 decides (it alone reads the store); everyone follows.
bool agree_on_rank0(backends::Comm& world, bool mine) {
  const uint8_t flag = mine ? 1 : 0;
  std::vector<uint8_t> all(static_cast<size_t>(world.size()));
  world.allgather_host(&flag, 1, all.data());
  return all[0] != 0;
}

db::MeasurementRow row_of(const sim::RankedCandidate& ranked, const backends::RunResult& result,
                          const std::string& profile) {
  db::MeasurementRow row;
  row.candidate = ranked.candidate;
  row.median_s = result.time.median_s;
  row.min_s = result.time.min_s;
  row.max_s = result.time.max_s;
  row.iterations = result.iterations;
  for (const auto& phase : result.phases) row.phase_medians_s[phase.phase] = phase.time.median_s;
  row.verify_max_abs_error = result.max_abs_err;
  row.predicted_s = ranked.prediction.total_s;
  row.profile = profile;
  return row;
}

}  // namespace

std::vector<size_t> select_candidates(const sim::Ranking& ranking, int top_k, bool exhaustive) {
  std::vector<size_t> chosen;
  std::set<Strategy> families;
  for (size_t i = 0; i < ranking.candidates.size(); ++i) {
    const sim::RankedCandidate& c = ranking.candidates[i];
    if (!c.prediction.fits) continue;
    const bool first_of_family = families.insert(c.candidate.strategy).second;
    if (exhaustive || static_cast<int>(chosen.size()) < top_k || first_of_family) chosen.push_back(i);
  }
  return chosen;
}

std::vector<ShapeOutcome> tune(const std::vector<AttentionShape>& shapes, const TuneOptions& options,
                               backends::Comm& world, const TuneProgress& progress) {
  if (options.top_k < 1 && !options.exhaustive)
    throw Error("--top-k " + std::to_string(options.top_k) + " must be at least 1");
  const Cluster cluster{world.size(), options.ranks_per_node};
  const bool writer = world.rank() == 0;
  std::optional<db::Store> store;
  std::string store_error;
  if (writer) {
    try {
      store.emplace(db::Store::open(options.db_path));
    } catch (const Error& e) {
      store_error = e.what();
    }
  }
  if (!agree_on_rank0(world, writer && store.has_value()))  // nobody measures for a store that is not there
    throw Error(writer ? store_error : "rank 0 could not open the store " + options.db_path);

  // Rank every shape first (cheap, deterministic on every rank) so progress knows the total.
  std::vector<sim::Ranking> rankings;
  std::vector<std::vector<size_t>> selections;
  size_t total = 0;
  for (const AttentionShape& shape : shapes) {
    rankings.push_back(sim::rank_candidates(shape, cluster, options.hardware, options.predict, options.constraints));
    selections.push_back(select_candidates(rankings.back(), options.top_k, options.exhaustive));
    total += selections.back().size();
  }

  std::vector<ShapeOutcome> outcomes;
  size_t done = 0;
  for (size_t s = 0; s < shapes.size(); ++s) {
    ShapeOutcome outcome;
    outcome.shape = shapes[s];
    for (const auto& c : rankings[s].candidates) outcome.feasible += c.prediction.fits ? 1 : 0;
    const std::vector<size_t>& chosen = selections[s];
    outcome.skipped = agree_on_rank0(world, writer && store->has_shape(options.fingerprint, outcome.shape));
    if (!outcome.skipped && !chosen.empty()) {
      std::vector<Layout> layouts;
      std::vector<LayoutChoice> candidates;
      for (size_t i : chosen) {
        candidates.push_back(rankings[s].candidates[i].candidate);
        layouts.push_back(Layout::build({shapes[s], cluster, candidates.back()}));
      }
      if (writer && progress.measuring) progress.measuring(s, shapes.size(), outcome.shape, candidates, done, total);
      backends::ExecutorOptions executor = options.executor;
      const size_t rounds = size_t(executor.warmups + executor.iterations);
      if (writer && progress.round)
        executor.on_round = [&, before = done * rounds, n = chosen.size()](int round, int) {
          progress.round(before + size_t(round) * n, total * rounds);
        };
      const std::vector<backends::RunResult> results = backends::execute_interleaved(layouts, world, executor);
      for (size_t k = 0; k < chosen.size(); ++k) {
        const backends::RunResult& r = results[k];
        if (r.max_abs_err && !r.verified())
          throw Error("candidate " + to_string(candidates[k]) + " on " + to_string(outcome.shape) +
                      " failed verification: max |O - O_ref| " + std::to_string(*r.max_abs_err) + " > " +
                      std::to_string(r.tolerance) + " (a cptune bug: please report it with this line)");
        outcome.rows.push_back(row_of(rankings[s].candidates[chosen[k]], r, options.profile));
      }
      if (writer) store->record_shape(options.fingerprint, outcome.shape, outcome.rows);
    }
    done += chosen.size();
    if (writer && progress.finished) progress.finished(s, outcome);
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

}  // namespace cptune::tuner
