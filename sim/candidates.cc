#include "sim/candidates.h"

#include <algorithm>

#include "core/error.h"

namespace cptune::sim {
namespace {

// Both policies give the same layout when every Ulysses rank gets the same heads either way.
bool same_heads(const Layout& a, const Layout& b) {
  for (int64_t u = 0; u < a.ulysses(); ++u) {
    const RankLayout& x = a.at(u, 0);
    const RankLayout& y = b.at(u, 0);
    if (x.q_heads.begin != y.q_heads.begin || x.q_heads.end != y.q_heads.end || x.kv_heads.begin != y.kv_heads.begin ||
        x.kv_heads.end != y.kv_heads.end)
      return false;
  }
  return true;
}

std::optional<Layout> try_build(const LayoutChoice& c, const AttentionShape& shape, const Cluster& cluster,
                                std::vector<Refusal>* refused, const Constraints& constraints) {
  if (const std::string why = constraints.rule_refusal(c, view_of(shape)); !why.empty()) {
    if (refused) refused->push_back({c, why});
    return std::nullopt;
  }
  try {
    return Layout::build({constraints.priced_shape(c, shape), cluster, c});  // what the engine moves
  } catch (const Error& e) {
    if (refused) refused->push_back({c, e.what()});
    return std::nullopt;
  }
}

// One mesh (strategy, U, R, order): balanced, and kv-aligned where it places heads differently.
void visit_policies(LayoutChoice c, const AttentionShape& shape, const Cluster& cluster,
                    const std::function<void(const LayoutChoice&, const Layout&)>& feasible, std::vector<Refusal>* refused,
                    const Constraints& constraints) {
  c.head_policy = HeadPolicy::balanced;
  std::optional<Layout> balanced;
  if (constraints.selects(c)) {
    balanced = try_build(c, shape, cluster, refused, constraints);
    if (balanced) feasible(c, *balanced);
  }
  if (c.ulysses < 2) return;  // one Ulysses rank holds every head under either policy
  c.head_policy = HeadPolicy::kv_aligned;
  if (!constraints.selects(c)) return;
  // Built even when balanced is not selected: kv-aligned counts only where it differs.
  if (!balanced) {
    LayoutChoice b = c;
    b.head_policy = HeadPolicy::balanced;
    try {
      balanced = Layout::build({shape, cluster, b});
    } catch (const Error&) {
    }
  }
  std::optional<Layout> aligned = try_build(c, shape, cluster, refused, constraints);
  if (aligned && !(balanced && same_heads(*balanced, *aligned))) feasible(c, *aligned);
}

}  // namespace

void for_each_candidate(const AttentionShape& shape, const Cluster& cluster,
                        const std::function<void(const LayoutChoice&, const Layout&)>& feasible,
                        std::vector<Refusal>* refused, const Constraints& constraints) {
  const int64_t P = cluster.world;
  const bool orders_differ = cluster.nodes() > 1 && cluster.ranks_per_node > 1;
  for (Strategy s : kAllStrategies) {
    for (auto [U, R] : candidate_meshes(s, P)) {
      for (RankOrder order : {RankOrder::ulysses_inner, RankOrder::ring_inner}) {
        // One of U, R being 1, both orders give the same ranks.
        if (order == RankOrder::ring_inner && (!orders_differ || U == 1 || R == 1)) continue;
        visit_policies(LayoutChoice{s, U, R, order}, shape, cluster, feasible, refused, constraints);
      }
    }
  }
}

std::vector<LayoutChoice> enumerate_candidates(const AttentionShape& shape, const Cluster& cluster,
                                            std::vector<Refusal>* refused, const Constraints& constraints) {
  std::vector<LayoutChoice> out;
  for_each_candidate(shape, cluster, [&](const LayoutChoice& c, const Layout&) { out.push_back(c); }, refused,
                     constraints);
  return out;
}

Ranking rank_candidates(const AttentionShape& shape, const Cluster& cluster, const Hardware& hw,
                        const PredictOptions& options, const Constraints& constraints) {
  Ranking ranking;
  const Topology topology = topology_of(hw, cluster.ranks_per_node, cluster.world);
  // Ring steps keep their busiest node's work only where ranks share compute units.
  const PrepareOptions prepare_options{hw.compute_units_per_node > 0};
  for (size_t i = 0; i < topology.levels(); ++i) ranking.level_names.push_back(level_name(hw, i));
  for_each_candidate(
      shape, cluster,
      [&](const LayoutChoice& c, const Layout& layout) {
        ranking.candidates.push_back({c, predict(prepare(layout, topology, prepare_options), hw, options), 1.0, std::nullopt});
      },
      &ranking.refused, constraints);
  std::stable_sort(ranking.candidates.begin(), ranking.candidates.end(),
                   [](const RankedCandidate& a, const RankedCandidate& b) {
                     if (a.prediction.fits != b.prediction.fits) return a.prediction.fits;
                     return a.prediction.total_s < b.prediction.total_s;
                   });
  const bool any_fits = !ranking.candidates.empty() && ranking.candidates.front().prediction.fits;
  for (const RankedCandidate& rc : ranking.candidates) {
    if (rc.prediction.fits || !any_fits) ranking.worst_s = std::max(ranking.worst_s, rc.prediction.total_s);
    if (rc.candidate.strategy == Strategy::ulysses)
      ranking.ulysses_s = std::min(ranking.ulysses_s.value_or(rc.prediction.total_s), rc.prediction.total_s);
  }
  for (RankedCandidate& rc : ranking.candidates) {
    rc.speedup_over_worst = ranking.worst_s / rc.prediction.total_s;
    if (ranking.ulysses_s) rc.speedup_over_ulysses = *ranking.ulysses_s / rc.prediction.total_s;
  }
  return ranking;
}

}  // namespace cptune::sim
