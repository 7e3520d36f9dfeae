#pragma once
// What the store keeps, as plain structs in the vocabulary of docs/design.md: the fingerprint that
// scopes every row, the shape measured, the candidate layout, and one measurement of it.
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/types.h"

namespace cptune::db {

// The hardware and software a measurement was taken on. A lookup never mixes fingerprints.
struct Fingerprint {
  std::string backend;       // "gloo", "nccl"
  std::string device_model;  // "cpu", "NVIDIA H100 80GB HBM3"
  Cluster cluster;           // P and G; nodes derived
  std::string library_versions;  // "gloo 0.5.0; nccl 2.28.9"
  std::string cptune_version;

  bool operator==(const Fingerprint&) const = default;
};

// One candidate measured on one shape. Times in seconds, the slowest rank's, over iterations.
struct MeasurementRow {
  LayoutChoice candidate;
  double median_s = 0;
  double min_s = 0;
  double max_s = 0;
  int64_t iterations = 0;
  std::map<Phase, double> phase_medians_s;        // measured phases -> median seconds
  std::optional<double> verify_max_abs_error;     // nullopt: the run was not verified
  std::optional<double> predicted_s;              // the simulator's time, when it ranked the candidate
  std::string profile;                            // hardware profile that ranked it ("h100-node", "fitted")
  std::string measured_at;                        // ISO 8601 UTC; empty: the store writes "now"

  bool operator==(const MeasurementRow&) const = default;
};

// The fastest candidate of one shape under one fingerprint (a row of the view `best`).
struct BestRow {
  int64_t fingerprint_id = 0;
  AttentionShape shape;
  Pass pass = Pass::forward;  // the pass timed (fwd, bwd, fwd+bwd): each has its own best
  LayoutChoice candidate;
  double median_s = 0;
  int64_t measurements = 0;  // measurements of this shape under this fingerprint, the winner's included
};

std::string describe(const Fingerprint& fp);  // "gloo cpu P=4 G=4 nodes=1"

}  // namespace cptune::db
