#pragma once
// Calibration (docs/design.md "Cost model"): fits the hardware description's latencies, bandwidths
// and throughputs to probe measurements by least squares, and reports how far each probe
// still is from its prediction. The fit minimises relative residuals (predicted - measured) /
// measured, so a 50 us message and a 500 ms attention call weigh alike, over the logarithms
// of the parameters, which keeps every fitted rate and latency positive.
#include <span>
#include <string>
#include <vector>

#include "sim/hardware.h"
#include "tuner/probes.h"

namespace cptune::tuner {

struct Residual {
  Probe probe;
  double predicted_s = 0;
  double relative() const { return (predicted_s - probe.measured_s) / probe.measured_s; }
};

// |relative residual| of one probe kind (or all probes: kind empty), median and worst.
struct ResidualSummary {
  std::string kind;  // to_string(ProbeKind), or "all"
  size_t probes = 0;
  double median_abs = 0;
  double max_abs = 0;
};

struct FitResult {
  sim::Hardware hardware;           // the base with every fitted parameter replaced
  std::vector<std::string> fitted;  // kFitParameterNames the probes determine
  std::vector<std::string> kept;    // names no probe exercises (inter-node links on one host,
                                    // device sync on CPUs): kept from the base
  std::vector<Residual> residuals;  // every probe, predicted by the fitted hardware
  int iterations = 0;               // Levenberg-Marquardt steps taken
};

// Throws Error when there are no probes, a probe's measured time is not positive and finite,
// or the fitted values are not a valid hardware description.
FitResult fit_hardware(std::span<const Probe> probes, const sim::Hardware& base);

// Per probe kind in kAllProbeKinds order (kinds without probes left out), then "all".
std::vector<ResidualSummary> summarize(std::span<const Residual> residuals);

}  // namespace cptune::tuner
