#include "backends/exec/phase_timer.h"

#include <algorithm>

#include "backends/comm/comm.h"

namespace cptune::backends {

Spread spread_of(std::vector<double> samples) {
  if (samples.empty()) return {};
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  const double median = n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
  return {median, samples.front(), samples.back()};
}

PhaseTimer::PhaseTimer() : current_(kPhaseCount, 0.0), started_(kPhaseCount), slowest_(kPhaseCount) {}

void PhaseTimer::begin_iteration() {
  std::fill(current_.begin(), current_.end(), 0.0);
  iteration_start_ = clock::now();
}

void PhaseTimer::start(Phase phase) { started_[static_cast<size_t>(phase)] = clock::now(); }

void PhaseTimer::stop(Phase phase) {
  const auto p = static_cast<size_t>(phase);
  current_[p] += std::chrono::duration<double>(clock::now() - started_[p]).count();
}

void PhaseTimer::end_iteration(Comm& comm) {
  std::vector<double> mine = current_;
  mine.push_back(std::chrono::duration<double>(clock::now() - iteration_start_).count());
  std::vector<double> all(mine.size() * static_cast<size_t>(comm.size()));
  comm.allgather_host(mine.data(), static_cast<int64_t>(mine.size() * sizeof(double)), all.data());
  for (size_t p = 0; p <= current_.size(); ++p) {
    double slowest = 0;
    for (int rank = 0; rank < comm.size(); ++rank) slowest = std::max(slowest, all[rank * mine.size() + p]);
    (p < current_.size() ? slowest_[p] : totals_).push_back(slowest);
  }
}

std::vector<PhaseStats> PhaseTimer::phase_stats() const {
  std::vector<PhaseStats> out;
  for (size_t p = 0; p < current_.size(); ++p) {
    const Spread s = spread_of(slowest_[p]);
    if (s.max_s > 0) out.push_back({kAllPhases[p], s});
  }
  return out;
}

}  // namespace cptune::backends
