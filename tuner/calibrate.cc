#include "tuner/calibrate.h"

#include <algorithm>
#include <cmath>

#include <Eigen/Dense>
#include <fmt/format.h>

#include "core/error.h"

namespace cptune::tuner {
namespace {

// A latency the base leaves at 0 starts here when probes exercise it (log space needs > 0).
constexpr double kLatencyStart = 1e-6;
// Fitted values stay in [1e-12, 1e30]: a latency of 1 ps is zero for every purpose here, and
// every trial step stays a valid hardware description (positive, finite).
constexpr double kSmallest = 1e-12, kLargest = 1e30;

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The residual vector for the full parameter vector `theta` (kFitParameterNames order).
class Objective {
 public:
  Objective(std::span<const Probe> probes, const sim::Hardware& base) : probes_(probes), base_(base) {}

  Eigen::VectorXd residuals(const Eigen::VectorXd& theta) const {
    const sim::Hardware hw = sim::from_vector(base_, theta);
    Eigen::VectorXd r(static_cast<Eigen::Index>(probes_.size()));
    for (size_t i = 0; i < probes_.size(); ++i)
      r[Eigen::Index(i)] = (predict_probe(probes_[i], hw) - probes_[i].measured_s) / probes_[i].measured_s;
    return r;
  }

  // Parameters some probe's prediction depends on: halving or doubling the value (setting it,
  // from 0) moves at least one prediction. Both ways, since a threshold such as compute units
  // may only bite below the starting value.
  std::vector<Eigen::Index> exercised(const Eigen::VectorXd& theta) const {
    std::vector<Eigen::Index> out;
    const Eigen::VectorXd r0 = residuals(theta);
    for (Eigen::Index i = 0; i < theta.size(); ++i) {
      bool moves = false;
      for (double factor : {0.5, 2.0}) {
        Eigen::VectorXd moved = theta;
        moved[i] = theta[i] > 0 ? factor * theta[i] : kLatencyStart;
        moves |= (residuals(moved) - r0).cwiseAbs().maxCoeff() > 1e-12;
      }
      if (moves) out.push_back(i);
    }
    return out;
  }

 private:
  std::span<const Probe> probes_;
  const sim::Hardware& base_;
};

// Levenberg-Marquardt over log(theta[free]) with a central-difference Jacobian: a handful of
// parameters and a hundred probes, so each step costs microseconds.
class LogSpaceFit {
 public:
  LogSpaceFit(const Objective& f, Eigen::VectorXd theta, std::vector<Eigen::Index> free)
      : f_(f), theta_(std::move(theta)), free_(std::move(free)) {}

  int run(int max_steps) {
    Eigen::VectorXd x = log_free();
    double cost = f_.residuals(at(x)).squaredNorm();
    double lambda = 1e-3;
    int steps = 0;
    for (; steps < max_steps; ++steps) {
      const Eigen::MatrixXd J = jacobian(x);
      const Eigen::VectorXd r = f_.residuals(at(x));
      const Eigen::MatrixXd JtJ = J.transpose() * J;
      const Eigen::VectorXd g = J.transpose() * r;
      bool improved = false;
      while (lambda < 1e12) {
        Eigen::MatrixXd A = JtJ;
        A.diagonal() += lambda * (JtJ.diagonal().array() + 1e-12).matrix();
        const Eigen::VectorXd step = A.ldlt().solve(-g);
        const Eigen::VectorXd trial = (x + step).cwiseMax(std::log(kSmallest)).cwiseMin(std::log(kLargest));
        const double trial_cost = f_.residuals(at(trial)).squaredNorm();
        if (trial_cost < cost) {
          const bool converged = cost - trial_cost < 1e-12 * (1 + cost) || step.cwiseAbs().maxCoeff() < 1e-9;
          x = trial;
          cost = trial_cost;
          lambda = std::max(lambda / 3, 1e-12);
          improved = !converged;
          break;
        }
        lambda *= 4;
      }
      if (!improved) break;
    }
    theta_ = at(x);
    return steps;
  }

  const Eigen::VectorXd& theta() const { return theta_; }

 private:
  Eigen::VectorXd log_free() const {
    Eigen::VectorXd x(static_cast<Eigen::Index>(free_.size()));
    for (size_t k = 0; k < free_.size(); ++k)
      x[Eigen::Index(k)] = std::log(std::max(theta_[free_[k]] > 0 ? theta_[free_[k]] : kLatencyStart, kSmallest));
    return x;
  }
  Eigen::VectorXd at(const Eigen::VectorXd& x) const {
    Eigen::VectorXd theta = theta_;
    for (size_t k = 0; k < free_.size(); ++k) theta[free_[k]] = std::exp(x[Eigen::Index(k)]);
    return theta;
  }
  Eigen::MatrixXd jacobian(const Eigen::VectorXd& x) const {
    constexpr double h = 1e-5;
    Eigen::MatrixXd J(f_.residuals(at(x)).size(), x.size());
    for (Eigen::Index k = 0; k < x.size(); ++k) {
      Eigen::VectorXd up = x, down = x;
      up[k] += h;
      down[k] -= h;
      J.col(k) = (f_.residuals(at(up)) - f_.residuals(at(down))) / (2 * h);
    }
    return J;
  }

  const Objective& f_;
  Eigen::VectorXd theta_;
  std::vector<Eigen::Index> free_;
};

void check_probes(std::span<const Probe> probes) {
  if (probes.empty()) throw Error("calibration has no probe measurements to fit");
  for (const Probe& p : probes)
    if (!std::isfinite(p.measured_s) || !(p.measured_s > 0))
      throw Error(fmt::format("probe '{}' measured {} s; every probe needs a positive, finite time", p.label, p.measured_s));
}

}  // namespace

FitResult fit_hardware(std::span<const Probe> probes, const sim::Hardware& base) {
  check_probes(probes);
  const Objective objective(probes, base);
  const Eigen::VectorXd start = sim::to_vector(base);
  const std::vector<Eigen::Index> free = objective.exercised(start);
  LogSpaceFit fit(objective, start, free);
  FitResult out;
  out.iterations = fit.run(200);
  out.hardware = sim::from_vector(base, fit.theta());
  for (Eigen::Index i = 0; i < start.size(); ++i) {
    const bool fitted = std::find(free.begin(), free.end(), i) != free.end();
    (fitted ? out.fitted : out.kept).emplace_back(sim::kFitParameterNames[size_t(i)]);
  }
  for (const Probe& p : probes) out.residuals.push_back({p, predict_probe(p, out.hardware)});
  return out;
}

std::vector<ResidualSummary> summarize(std::span<const Residual> residuals) {
  std::vector<ResidualSummary> out;
  auto add = [&](std::string name, auto&& select) {
    std::vector<double> abs;
    for (const Residual& r : residuals)
      if (select(r)) abs.push_back(std::fabs(r.relative()));
    if (abs.empty()) return;
    out.push_back({std::move(name), abs.size(), median_of(abs), *std::max_element(abs.begin(), abs.end())});
  };
  for (ProbeKind kind : kAllProbeKinds)
    add(std::string(to_string(kind)), [&](const Residual& r) { return r.probe.kind == kind; });
  add("all", [](const Residual&) { return true; });
  return out;
}

}  // namespace cptune::tuner
