#pragma once
// How far the simulator is from the executor, in the numbers issue 7 asks for: relative error
// per strategy and overall, Kendall tau of the candidates within each shape, how often the
// predicted best is the measured best, and whether a tuner that measures only the top k by
// prediction finds a layout within a tolerance of the exhaustive best (and at what cost).
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "tuner/validate.h"

namespace cptune::tuner {

// Kendall's tau-b of two equally long samples: (concordant - discordant) pairs over the
// geometric mean of the pairs untied in each. NaN with fewer than two untied pairs either way.
double kendall_tau_b(std::span<const double> x, std::span<const double> y);

// The same pairs restricted to those whose measured times differ by more than `tolerance`
// (relative): pairs a noisy measurement cannot order are left out. (C - D) / (C + D), NaN when
// no pair is left; `pairs` receives how many were kept.
double resolved_tau(std::span<const double> predicted, std::span<const double> measured, double tolerance,
                    size_t* pairs = nullptr);

// found_s <= (1 + tolerance) * best_s: the tuner's pick is as good as the best, up to tolerance.
bool within_tolerance(double found_s, double best_s, double tolerance);

struct ErrorSummary {
  std::string group;  // a strategy's name, or "all"
  size_t count = 0;
  double median = 0, worst = 0;  // of |predicted - measured| / measured
};

// One selection rule on one shape: what it measured and the best it found among those.
struct SelectionOutcome {
  size_t measured = 0, candidates = 0;
  double found_s = 0, best_s = 0;  // best measured among the selected / among all
  double fraction() const { return candidates ? double(measured) / double(candidates) : 0.0; }
};

// The tuner's rule (tuner::select_candidates: top k by prediction plus the best predicted of
// every strategy) and the plain top k by prediction, as indices into shape.candidates.
std::vector<size_t> tuner_selection(const ShapeValidation& shape, int top_k);
std::vector<size_t> plain_top_k(const ShapeValidation& shape, int top_k);
SelectionOutcome outcome_of(const ShapeValidation& shape, std::span<const size_t> selected);

struct ShapeStats {
  double tau = 0;           // Kendall tau-b, predicted vs measured, over the shape's candidates
  double resolved_tau = 0;  // over pairs measured more than the tolerance apart
  size_t pairs = 0, resolved_pairs = 0;
  bool top_is_best = false;        // the predicted fastest is the measured fastest
  double top_over_best = 1;        // measured time of the predicted fastest / measured best
  SelectionOutcome tuner, plain;   // the two selection rules at top_k
};

// Plain top k for one k: on how many shapes it lands within tolerance, measuring how much.
struct TopKPoint {
  int k = 0;
  size_t within = 0;
  double mean_fraction = 0;
};

struct ValidationReport {
  int top_k = 3;
  double tolerance = 0.05;
  std::vector<ErrorSummary> errors;  // per strategy measured (kAllStrategies order), then "all"
  std::vector<ShapeStats> shapes;    // in input order
  double median_tau = 0, mean_tau = 0, median_resolved_tau = 0;
  size_t resolved_pairs = 0, pairs = 0;  // summed over shapes
  size_t top_is_best = 0, top_within = 0;  // shapes where the predicted best is the best / within tolerance
  size_t tuner_within = 0, plain_within = 0;
  double tuner_mean_fraction = 0, tuner_max_fraction = 0, plain_mean_fraction = 0, plain_max_fraction = 0;
  std::vector<TopKPoint> curve;  // k = 1 .. most candidates of any shape
};

// Throws Error when top_k < 1 or tolerance is negative.
ValidationReport summarize_validation(std::span<const ShapeValidation> shapes, int top_k, double tolerance);

}  // namespace cptune::tuner
