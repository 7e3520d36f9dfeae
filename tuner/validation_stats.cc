#include "tuner/validation_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "core/error.h"
#include "tuner/tuner.h"

namespace cptune::tuner {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

int sign(double v) { return (v > 0) - (v < 0); }

double median_of(std::vector<double> v) {
  std::erase_if(v, [](double x) { return std::isnan(x); });
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean_of(const std::vector<double>& v) {
  double sum = 0;
  size_t n = 0;
  for (double x : v)
    if (!std::isnan(x)) sum += x, ++n;
  return n ? sum / double(n) : kNaN;
}

std::vector<double> predicted_of(const ShapeValidation& s) {
  std::vector<double> out;
  for (const CandidateMeasurement& c : s.candidates) out.push_back(c.predicted_s);
  return out;
}

std::vector<double> measured_of(const ShapeValidation& s) {
  std::vector<double> out;
  for (const CandidateMeasurement& c : s.candidates) out.push_back(c.measured_s);
  return out;
}

std::vector<ErrorSummary> error_summaries(std::span<const ShapeValidation> shapes) {
  std::map<Strategy, std::vector<double>> by_strategy;
  std::vector<double> all;
  for (const ShapeValidation& s : shapes)
    for (const CandidateMeasurement& c : s.candidates) {
      by_strategy[c.candidate.strategy].push_back(c.relative_error());
      all.push_back(c.relative_error());
    }
  std::vector<ErrorSummary> out;
  auto add = [&](std::string group, const std::vector<double>& errors) {
    if (!errors.empty())
      out.push_back({std::move(group), errors.size(), median_of(errors), *std::max_element(errors.begin(), errors.end())});
  };
  for (Strategy st : kAllStrategies)
    if (by_strategy.count(st)) add(std::string(to_string(st)), by_strategy[st]);
  add("all", all);
  return out;
}

ShapeStats stats_of(const ShapeValidation& s, int top_k, double tolerance) {
  ShapeStats st;
  const std::vector<double> predicted = predicted_of(s), measured = measured_of(s);
  st.tau = kendall_tau_b(predicted, measured);
  st.resolved_tau = resolved_tau(predicted, measured, tolerance, &st.resolved_pairs);
  st.pairs = predicted.size() * (predicted.size() - 1) / 2;
  const double best = *std::min_element(measured.begin(), measured.end());
  // candidates are in ranking order: the first is the predicted fastest.
  st.top_over_best = measured.front() / best;
  st.top_is_best = measured.front() == best;
  st.tuner = outcome_of(s, tuner_selection(s, top_k));
  st.plain = outcome_of(s, plain_top_k(s, top_k));
  return st;
}

}  // namespace

double kendall_tau_b(std::span<const double> x, std::span<const double> y) {
  if (x.size() != y.size()) throw Error("kendall_tau_b: samples of different lengths");
  int64_t concordant = 0, discordant = 0, untied_x = 0, untied_y = 0;
  for (size_t i = 0; i < x.size(); ++i)
    for (size_t j = i + 1; j < x.size(); ++j) {
      const int sx = sign(x[i] - x[j]), sy = sign(y[i] - y[j]);
      untied_x += sx != 0;
      untied_y += sy != 0;
      concordant += sx * sy > 0;
      discordant += sx * sy < 0;
    }
  if (untied_x == 0 || untied_y == 0) return kNaN;
  return double(concordant - discordant) / std::sqrt(double(untied_x) * double(untied_y));
}

double resolved_tau(std::span<const double> predicted, std::span<const double> measured, double tolerance,
                    size_t* pairs) {
  int64_t concordant = 0, discordant = 0;
  size_t kept = 0;
  for (size_t i = 0; i < predicted.size(); ++i)
    for (size_t j = i + 1; j < predicted.size(); ++j) {
      const double lo = std::min(measured[i], measured[j]), hi = std::max(measured[i], measured[j]);
      if (within_tolerance(hi, lo, tolerance)) continue;
      ++kept;
      const int s = sign(predicted[i] - predicted[j]) * sign(measured[i] - measured[j]);
      concordant += s > 0;
      discordant += s < 0;
    }
  if (pairs) *pairs = kept;
  return kept ? double(concordant - discordant) / double(kept) : kNaN;
}

bool within_tolerance(double found_s, double best_s, double tolerance) { return found_s <= (1 + tolerance) * best_s; }

std::vector<size_t> tuner_selection(const ShapeValidation& shape, int top_k) {
  sim::Ranking ranking;
  for (const CandidateMeasurement& c : shape.candidates) {
    sim::RankedCandidate rc;
    rc.candidate = c.candidate;
    rc.prediction.total_s = c.predicted_s;
    ranking.candidates.push_back(rc);  // all fit: validation measures only those that do
  }
  return select_candidates(ranking, top_k, false);
}

std::vector<size_t> plain_top_k(const ShapeValidation& shape, int top_k) {
  std::vector<size_t> out;
  for (size_t i = 0; i < shape.candidates.size() && int(i) < top_k; ++i) out.push_back(i);
  return out;
}

SelectionOutcome outcome_of(const ShapeValidation& shape, std::span<const size_t> selected) {
  SelectionOutcome o;
  o.candidates = shape.candidates.size();
  o.measured = selected.size();
  o.found_s = std::numeric_limits<double>::infinity();
  o.best_s = std::numeric_limits<double>::infinity();
  for (size_t i : selected) o.found_s = std::min(o.found_s, shape.candidates[i].measured_s);
  for (const CandidateMeasurement& c : shape.candidates) o.best_s = std::min(o.best_s, c.measured_s);
  return o;
}

ValidationReport summarize_validation(std::span<const ShapeValidation> shapes, int top_k, double tolerance) {
  if (top_k < 1) throw Error("--top " + std::to_string(top_k) + " must be at least 1");
  if (!(tolerance >= 0)) throw Error("--tolerance " + std::to_string(tolerance) + " must be zero or more");
  ValidationReport r;
  r.top_k = top_k;
  r.tolerance = tolerance;
  r.errors = error_summaries(shapes);
  std::vector<double> taus, resolved;
  size_t most = 0;
  for (const ShapeValidation& s : shapes) {
    if (s.candidates.empty()) throw Error("a validated shape has no measured candidate");
    const ShapeStats st = stats_of(s, top_k, tolerance);
    taus.push_back(st.tau);
    resolved.push_back(st.resolved_tau);
    r.top_is_best += st.top_is_best;
    r.top_within += within_tolerance(st.top_over_best, 1.0, tolerance);
    r.tuner_within += within_tolerance(st.tuner.found_s, st.tuner.best_s, tolerance);
    r.plain_within += within_tolerance(st.plain.found_s, st.plain.best_s, tolerance);
    r.tuner_mean_fraction += st.tuner.fraction() / double(shapes.size());
    r.plain_mean_fraction += st.plain.fraction() / double(shapes.size());
    r.tuner_max_fraction = std::max(r.tuner_max_fraction, st.tuner.fraction());
    r.plain_max_fraction = std::max(r.plain_max_fraction, st.plain.fraction());
    r.pairs += st.pairs;
    r.resolved_pairs += st.resolved_pairs;
    most = std::max(most, s.candidates.size());
    r.shapes.push_back(st);
  }
  r.median_tau = median_of(taus);
  r.mean_tau = mean_of(taus);
  r.median_resolved_tau = median_of(resolved);
  for (int k = 1; k <= int(most); ++k) {
    TopKPoint point{k, 0, 0};
    for (const ShapeValidation& s : shapes) {
      const SelectionOutcome o = outcome_of(s, plain_top_k(s, k));
      point.within += within_tolerance(o.found_s, o.best_s, tolerance);
      point.mean_fraction += o.fraction() / double(shapes.size());
    }
    r.curve.push_back(point);
  }
  return r;
}

}  // namespace cptune::tuner
