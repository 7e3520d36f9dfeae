#pragma once
// Phase timing like nccl-tests: W warm-ups, N timed iterations, each phase timed on every
// rank, the slowest rank counted per iteration, then median / min / max over iterations.
#include <chrono>
#include <vector>

#include "core/types.h"

namespace cptune::backends {

class Comm;

struct Spread {
  double median_s = 0, min_s = 0, max_s = 0;
};
Spread spread_of(std::vector<double> samples);

struct PhaseStats {
  Phase phase;
  Spread time;
};

// Collects one iteration's phase durations on this rank.
class PhaseTimer {
 public:
  PhaseTimer();
  void start(Phase phase);
  void stop(Phase phase);
  void begin_iteration();
  // Exchanges this iteration's durations with every rank (host channel) and keeps, per phase
  // and for the whole iteration, the slowest rank's.
  void end_iteration(Comm& comm);
  std::vector<PhaseStats> phase_stats() const;  // phases that took any time on any rank
  Spread total() const { return spread_of(totals_); }
  const std::vector<double>& totals() const { return totals_; }
  size_t iterations() const { return totals_.size(); }

 private:
  using clock = std::chrono::steady_clock;
  std::vector<double> current_;  // every core::Phase, in enum order
  std::vector<clock::time_point> started_;
  clock::time_point iteration_start_;
  std::vector<std::vector<double>> slowest_;  // [phase][iteration]
  std::vector<double> totals_;
};

}  // namespace cptune::backends
