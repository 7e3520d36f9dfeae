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

namespace {

// Rank 0 alone opens the store; nobody measures for a store that is not there.
std::optional<db::Store> open_store_on_rank0(const std::string& path, backends::Comm& world) {
  const bool writer = world.rank() == 0;
  std::optional<db::Store> store;
  std::string error;
  if (writer) {
    try {
      store.emplace(db::Store::open(path));
    } catch (const Error& e) {
      error = e.what();
    }
  }
  if (!agree_on_rank0(world, writer && store.has_value()))
    throw Error(writer ? error : "rank 0 could not open the store " + path);
  return store;
}

// Every shape ranked, and the candidates chosen to measure (cheap and deterministic on every
// rank, done first so that progress knows the total).
struct Plan {
  std::vector<sim::Ranking> rankings;
  std::vector<std::vector<size_t>> chosen;
  size_t total = 0;
};

Plan plan_shapes(const std::vector<AttentionShape>& shapes, const Cluster& cluster, const TuneOptions& options) {
  Plan plan;
  for (const AttentionShape& shape : shapes) {
    plan.rankings.push_back(sim::rank_candidates(shape, cluster, options.hardware, options.predict, options.constraints));
    plan.chosen.push_back(select_candidates(plan.rankings.back(), options.top_k, options.exhaustive));
    plan.total += plan.chosen.back().size();
  }
  return plan;
}

// Runs the chosen candidates of one shape side by side and turns each result into a row.
// `executor` carries the progress callback of this shape's rounds.
std::vector<db::MeasurementRow> measure_shape(const AttentionShape& shape, const Cluster& cluster,
                                              const sim::Ranking& ranking, const std::vector<size_t>& chosen,
                                              const TuneOptions& options, const backends::ExecutorOptions& executor,
                                              backends::Comm& world) {
  std::vector<Layout> layouts;
  for (size_t i : chosen) layouts.push_back(Layout::build({shape, cluster, ranking.candidates[i].candidate}));
  const std::vector<backends::RunResult> results = backends::execute_interleaved(layouts, world, executor);
  std::vector<db::MeasurementRow> rows;
  for (size_t k = 0; k < chosen.size(); ++k) {
    const backends::RunResult& r = results[k];
    if (r.max_abs_err && !r.verified())
      throw Error("candidate " + to_string(layouts[k].choice()) + " on " + to_string(shape) +
                  " failed verification: max |O - O_ref| " + std::to_string(*r.max_abs_err) + ", worst error / tolerance " +
                  std::to_string(r.worst_ratio) + " > 1 (a cptune bug: please report it with this line)");
    rows.push_back(row_of(ranking.candidates[chosen[k]], r, options.profile));
  }
  return rows;
}

}  // namespace

std::vector<ShapeOutcome> tune(const std::vector<AttentionShape>& shapes, const TuneOptions& options,
                               backends::Comm& world, const TuneProgress& progress) {
  if (options.top_k < 1 && !options.exhaustive)
    throw Error("--top " + std::to_string(options.top_k) + " must be at least 1");
  const Cluster cluster{world.size(), options.ranks_per_node};
  const bool writer = world.rank() == 0;
  std::optional<db::Store> store = open_store_on_rank0(options.db_path, world);
  const Plan plan = plan_shapes(shapes, cluster, options);

  std::vector<ShapeOutcome> outcomes;
  size_t done = 0;
  for (size_t s = 0; s < shapes.size(); ++s) {
    ShapeOutcome outcome;
    outcome.shape = shapes[s];
    for (const auto& c : plan.rankings[s].candidates) outcome.feasible += c.prediction.fits ? 1 : 0;
    const std::vector<size_t>& chosen = plan.chosen[s];
    outcome.skipped = agree_on_rank0(world, writer && store->has_shape(options.fingerprint, outcome.shape, options.executor.pass));
    if (!outcome.skipped && !chosen.empty()) {
      if (writer && progress.measuring) {
        std::vector<LayoutChoice> candidates;
        for (size_t i : chosen) candidates.push_back(plan.rankings[s].candidates[i].candidate);
        progress.measuring(s, shapes.size(), outcome.shape, candidates, done, plan.total);
      }
      backends::ExecutorOptions executor = options.executor;
      const size_t rounds = size_t(executor.warmups + executor.iterations);
      if (writer && progress.round)
        executor.on_round = [&, before = done * rounds, n = chosen.size()](int round, int) {
          progress.round(before + size_t(round) * n, plan.total * rounds);
        };
      outcome.rows = measure_shape(shapes[s], cluster, plan.rankings[s], chosen, options, executor, world);
      if (writer) store->record_shape(options.fingerprint, outcome.shape, outcome.rows, options.executor.pass);
    }
    done += chosen.size();
    if (writer && progress.finished) progress.finished(s, outcome);
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

}  // namespace cptune::tuner
