#pragma once
// The tuner: for each shape, rank every feasible candidate with the simulator, measure the
// promising ones for real (interleaved, verified), and store every measurement with the
// winner per shape. Runs on every rank of the world; rank 0 alone touches the store.
#include <functional>
#include <string>
#include <vector>

#include "backends/exec/executor.h"
#include "db/records.h"
#include "sim/candidates.h"
#include "sim/hardware.h"

namespace cptune::backends {
class Comm;
}

namespace cptune::tuner {

struct TuneOptions {
  std::string db_path;
  sim::Hardware hardware;    // ranks the candidates
  std::string profile;       // its name as recorded with every measurement
  sim::PredictOptions predict;
  int64_t ranks_per_node = 1;
  int top_k = 3;             // measured: the k fastest predicted, plus the best of each strategy
  bool exhaustive = false;   // measured: every feasible candidate
  backends::ExecutorOptions executor;
  db::Fingerprint fingerprint;
  sim::Constraints constraints;  // measure only what these allow (--engine, --strategy, ...)
};

// Which of a ranking's candidates to measure (indices into ranking.candidates): the top_k that
// fit, plus the fastest fitting candidate of every strategy so that no family goes unmeasured;
// or all that fit when exhaustive. In ranking order.
std::vector<size_t> select_candidates(const sim::Ranking& ranking, int top_k, bool exhaustive);

struct ShapeOutcome {
  AttentionShape shape;
  bool skipped = false;            // already in the store for this fingerprint
  std::vector<db::MeasurementRow> rows;  // measured candidates (empty when skipped)
  size_t feasible = 0;             // candidates that lay out and fit
};

// Progress events for the CLI (called on rank 0 only).
struct TuneProgress {
  std::function<void(size_t shape_index, size_t shapes, const AttentionShape&, const std::vector<LayoutChoice>&,
                     size_t candidates_done, size_t candidates_total)>
      measuring;
  std::function<void(size_t shape_index, const ShapeOutcome&)> finished;
  // After every measuring round of a shape: candidate runs done and in all, over every shape
  // (a candidate run: one candidate measured once, warm-ups included).
  std::function<void(size_t runs_done, size_t runs_total)> round;
};

// Every rank calls it with the same shapes and options. Throws Error on a bad shape list, a
// store that cannot be written, a failed verification or a failed peer.
std::vector<ShapeOutcome> tune(const std::vector<AttentionShape>& shapes, const TuneOptions& options,
                               backends::Comm& world, const TuneProgress& progress = {});

}  // namespace cptune::tuner
