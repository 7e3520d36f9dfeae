#pragma once
// Validation of the simulator against the executor: every feasible candidate of each shape is
// predicted and measured (interleaved, so a shared machine's drift hits all alike), and the
// pairs (predicted, measured) are what validation_stats.h judges.
#include <cstddef>
#include <functional>
#include <vector>

#include "backends/exec/executor.h"
#include "core/types.h"
#include "sim/candidates.h"
#include "sim/hardware.h"

namespace cptune::backends {
class Comm;
}

namespace cptune::tuner {

struct CandidateMeasurement {
  LayoutChoice candidate;
  double predicted_s = 0;  // the cost model's forward time
  double measured_s = 0;   // the slowest rank's whole forward: median over iterations (or minimum)
  double min_s = 0, max_s = 0;
  double relative_error() const;  // |predicted - measured| / measured
};

struct ShapeValidation {
  AttentionShape shape;
  // Every candidate that lays out and fits, fastest predicted first (the ranking's order).
  std::vector<CandidateMeasurement> candidates;
};

struct ValidateOptions {
  sim::Hardware hardware;
  sim::PredictOptions predict;
  int64_t ranks_per_node = 1;
  backends::ExecutorOptions executor;
  bool fastest = false;  // measured_s is the minimum over iterations instead of the median
  // Rank 0 only: called before each shape is measured (index, shapes, candidates).
  std::function<void(size_t, size_t, size_t)> measuring;
};

// Every rank calls it with the same shapes and options. Throws Error when a shape has no
// feasible candidate or when verification (options.executor.verify) fails.
std::vector<ShapeValidation> measure_every_candidate(const std::vector<AttentionShape>& shapes,
                                                     const ValidateOptions& options, backends::Comm& world);

}  // namespace cptune::tuner
