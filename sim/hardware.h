#pragma once
// sim::Hardware: what the cost model knows about a cluster (DESIGN.md "Cost model"): per link
// class an alpha-beta pair, per device the attention throughput, memory bandwidth and size,
// and the two latencies of the UAA metadata path. Presets live in sim/hardware/*.json, each
// with its sources; a user's own file in the same format works the same way.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "core/types.h"

namespace cptune::sim {

// One link class (intra-node or inter-node) as seen by one rank.
struct LinkClass {
  double alpha_s = 0;                // latency per message: per peer of an all-to-all, per ring step
  double bandwidth_bytes_per_s = 0;  // per rank and per direction (links are full duplex)
};

// A rate per dtype (FLOP/s).
struct DTypeRates {
  double bf16 = 0, fp16 = 0, fp32 = 0;
  double of(DType d) const { return d == DType::bf16 ? bf16 : d == DType::fp16 ? fp16 : fp32; }
  double& at(DType d) { return d == DType::bf16 ? bf16 : d == DType::fp16 ? fp16 : fp32; }
};

struct Hardware {
  std::string name;
  std::string source;  // where every number comes from, one line per item
  int64_t nodes = 1;   // the default cluster: nodes x ranks_per_node (the CLI may override it)
  int64_t ranks_per_node = 1;
  LinkClass intra;  // NVLink, PCIe or loopback between ranks of one node
  LinkClass inter;  // the network between nodes (per rank: its share of the node's NICs)
  // What a flash-attention kernel achieves at long sequences; predictions use this one.
  DTypeRates attention_flops_per_s;
  // Dense peak of the device; no phase is ever predicted faster than its FLOPs over this.
  DTypeRates peak_flops_per_s;
  double memory_bandwidth_bytes_per_s = 0;  // local copies: all-to-all pack/unpack, ring merges
  int64_t device_memory_bytes = 0;
  // UAA metadata (per-rank sequence lengths): a device all-gather then a device-to-host copy
  // and stream sync when there is no CPU channel; with one, only the CPU gather's exposed
  // latency per peer (it runs while the device still works on earlier kernels).
  double device_sync_s = 0;
  double host_gather_alpha_s = 0;
  // How many ranks of a node can compute at full rate at once: the cores CPU ranks share (a
  // fraction when other work takes part of them). 0: every rank has a device of its own (GPUs).
  // With fewer units than busy ranks the node's attention is shared by processor sharing, so an
  // idle rank's unit helps the others (see shared_compute_s in cost_model.cc).
  double compute_units_per_node = 0;
  // Fixed software cost of one communication operation (an all-to-all-v, a ring send/receive
  // pair, a gather) on top of the per-peer alphas: on CPU ranks over Gloo, waking processes
  // that sleep on the transport while other ranks hold the cores. 0 on the GPU presets.
  double operation_latency_s = 0;
  // The share of the shorter of a ring step's hop and compute that still adds to the step when
  // both run at once (a step lasts max + this x min). 0: the link moves bytes without the
  // compute units (copy engines, NICs); near 1: CPU ranks whose transfers need the same cores.
  double overlap_exposed_fraction = 0;

  int64_t world() const { return nodes * ranks_per_node; }
};

// The parameters predict() reads for time, flat, for calibration by least squares. Names are
// the JSON paths of the fields ("intra.alpha_s", "attention_flops_per_s.bf16", ...).
inline constexpr std::array<std::string_view, 13> kFitParameterNames = {
    "intra.alpha_s",
    "intra.bandwidth_bytes_per_s",
    "inter.alpha_s",
    "inter.bandwidth_bytes_per_s",
    "attention_flops_per_s.bf16",
    "attention_flops_per_s.fp16",
    "attention_flops_per_s.fp32",
    "memory_bandwidth_bytes_per_s",
    "device_sync_s",
    "host_gather_alpha_s",
    "compute_units_per_node",
    "operation_latency_s",
    "overlap_exposed_fraction",
};
Eigen::VectorXd to_vector(const Hardware& hw);
// `base` with the fitted parameters replaced; throws Error naming a parameter that is not a
// valid value (negative latency, non-positive rate, not finite).
Hardware from_vector(Hardware base, const Eigen::VectorXd& params);

// Throws Error naming `where` and the first bad field.
void validate(const Hardware& hw, const std::string& where);

nlohmann::json to_json(const Hardware& hw);
Hardware hardware_from_json(const nlohmann::json& doc, const std::string& where);

// A preset name (h100-sxm, h200, a100, l20, cpu-gloo), looked up in the source tree's
// sim/hardware, then the installed share/cptune/hardware; or a path to a JSON file.
Hardware load_hardware(const std::string& name_or_path);
void save_hardware(const Hardware& hw, const std::string& path);
// What the store records as the profile that ranked a tuner's candidates: a preset's name, or a
// file's name field with the file ("gloo-p4-calibrated (profile.json)").
std::string profile_label(const Hardware& hw, const std::string& name_or_path);
std::vector<std::string> preset_names();  // sorted, from whichever preset folders exist

}  // namespace cptune::sim
