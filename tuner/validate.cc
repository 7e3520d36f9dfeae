#include "tuner/validate.h"

#include <cmath>

#include "backends/comm/comm.h"
#include "core/error.h"
#include "core/layout.h"

namespace cptune::tuner {

double CandidateMeasurement::relative_error() const { return std::fabs(predicted_s - measured_s) / measured_s; }

std::vector<ShapeValidation> measure_every_candidate(const std::vector<AttentionShape>& shapes,
                                                     const ValidateOptions& options, backends::Comm& world) {
  const Cluster cluster{world.size(), options.ranks_per_node};
  std::vector<ShapeValidation> out;
  for (size_t s = 0; s < shapes.size(); ++s) {
    const sim::Ranking ranking = sim::rank_candidates(shapes[s], cluster, options.hardware, options.predict);
    ShapeValidation shape{shapes[s], {}};
    std::vector<Layout> layouts;
    for (const sim::RankedCandidate& c : ranking.candidates) {
      if (!c.prediction.fits) continue;
      shape.candidates.push_back({c.candidate, c.prediction.total_s});
      layouts.push_back(Layout::build({shapes[s], cluster, c.candidate}));
    }
    if (layouts.empty())
      throw Error("shape " + std::to_string(s + 1) + " has no candidate that lays out and fits in memory on world " +
                  std::to_string(world.size()));
    if (world.rank() == 0 && options.measuring) options.measuring(s, shapes.size(), layouts.size());
    const std::vector<backends::RunResult> results = backends::execute_interleaved(layouts, world, options.executor);
    for (size_t k = 0; k < results.size(); ++k) {
      const backends::RunResult& r = results[k];
      if (r.max_abs_err && !r.verified())
        throw Error("candidate " + to_string(shape.candidates[k].candidate) + " of shape " + std::to_string(s + 1) +
                    " failed verification: max |O - O_ref| " + std::to_string(*r.max_abs_err) + ", worst error / tolerance " +
                      std::to_string(r.worst_ratio) + " > 1 (a cptune bug: please report it with this line)");
      shape.candidates[k].measured_s = options.fastest ? r.time.min_s : r.time.median_s;
      shape.candidates[k].min_s = r.time.min_s;
      shape.candidates[k].max_s = r.time.max_s;
    }
    out.push_back(std::move(shape));
  }
  return out;
}

}  // namespace cptune::tuner
