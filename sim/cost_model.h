#pragma once
// sim::predict: time, bytes and memory of one Layout on one Hardware (docs/design.md "Cost model").
// Phases run one after another on the slowest rank; each is an alpha-beta term per link class
// plus compute, as written next to each phase in cost_model.cc. No phase is ever predicted
// below its physical floor: its bytes over the link bandwidth, its FLOPs over the peak.
#include <array>
#include <cstdint>
#include <string_view>

#include "core/layout.h"
#include "sim/hardware.h"
#include "sim/prepared_layout.h"

namespace cptune::sim {

// The pass is core's (core/types.h): fwd, bwd (the backward's phases alone) or fwd+bwd.
using cptune::Pass;
struct PredictOptions {
  Pass pass = Pass::forward;
  MetadataChannel metadata = MetadataChannel::cpu;
};

// The simulator's JSON and CSV keep their first spelling of the passes, "fwd", "bwd" and
// "fwd-bwd", so that files written before compare with new ones.
std::string_view report_name(Pass p);


struct Prediction {
  std::array<double, kPhaseCount> phase_s{};  // seconds, slowest rank of each phase
  double total_s = 0;                         // phases run back to back
  int64_t bytes_intra = 0, bytes_inter = 0;   // sent over each link class, summed over ranks
  int64_t peak_bytes = 0;                     // largest rank (forward and backward: x2, gradients)
  bool fits = true;                           // peak_bytes <= the device's memory
  double padding_waste_s = 0;                 // the part of total_s spent on padding (classic)
  // Per level of the topology (level_name(hw, i)): bytes sent to peers first met there, summed
  // over ranks and phases (levels 0 and 1 of a two-level file are intra and inter), and the
  // time its busiest link (a rank's path there, or an uplink into it) is busy, summed over phases.
  size_t levels = 0;
  LevelBytes level_bytes{};
  std::array<double, kMaxLevels> level_s{};

  double phase(Phase p) const { return phase_s[static_cast<size_t>(p)]; }
  double& phase(Phase p) { return phase_s[static_cast<size_t>(p)]; }
};

Prediction predict(const PreparedLayout& layout, const Hardware& hw, const PredictOptions& options = {});

// The terms predict() adds up, one rank's view each. Public so that calibration predicts a
// micro-measurement (one all-to-all-v, one ring hop, one attention call) with exactly the term
// that predicts the same operation inside a layout.
// shared_s: the phase's most loaded uplink (bytes over its bandwidth), 0 without uplinks.
double exchange_time_s(const ExchangeLoad& load, const Hardware& hw, double shared_s = 0);  // all-to-all-v + pack/unpack
// The same exchange at a collective's measured rate for the group's widest level when the
// hardware has one (Level::collective), else the per-level path model.
double collective_exchange_s(const ExchangeLoad& load, const Hardware& hw, double shared_s, Collective collective);
// Launches the CPU issues between UAA's lengths sync and the attention kernel: the Q,K,V pack,
// the all-to-all-v, the unpack.
inline constexpr int64_t kLaunchesAfterLengthsSync = 3;
// A host sync as a pipeline drain: the round trip plus the CPU's launches queued behind it.
double host_sync_s(const Hardware& hw, int64_t launches_behind);
double gather_time_s(const ExchangeLoad& load, const Hardware& hw, MetadataChannel channel, double shared_s = 0);
// One ring message: bytes[i] the largest block sent to a neighbour met at level i; shared_s the
// most loaded uplink's time, its latency included.
double hop_time_s(const LevelBytes& bytes, const Hardware& hw, double shared_s = 0);
// A ring step that sends while it computes: max(hop, compute) + overlap_exposed_fraction x min.
double ring_step_time_s(double hop_s, double compute_s, const Hardware& hw);
double attention_time_s(int64_t flops, DType dtype, const Hardware& hw);           // forward FLOPs, one rank
// One call at its own shape (Hardware::attention_kernel); FLOPs alone when the kernel is not modelled.
double attention_time_s(const AttentionCall& call, DType dtype, const Hardware& hw);
AttentionCall whole_call(const PreparedLayout& p);
AttentionCall ring_step_call(const PreparedLayout& p, const RingStepLoad& step);
// The node's ranks computing at once on hw.compute_units_per_node shared units (0 when units
// are not shared); a phase takes the larger of this and its slowest rank's attention_time_s.
double node_attention_time_s(const NodeWork& node, DType dtype, const Hardware& hw);
// The same as predict(prepare(layout, topology_of(hw, ...)), ...); prepare once when predicting
// a layout many times. predict(PreparedLayout) throws Error when the layout was prepared for
// another number of levels than the hardware has.
Prediction predict(const Layout& layout, const Hardware& hw, const PredictOptions& options = {});

}  // namespace cptune::sim
