#pragma once
// sim::Hardware: what the cost model knows about a cluster (docs/design.md "Cost model"): per link
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
#include "sim/attention_rate.h"

namespace cptune::sim {

// One link class (intra-node or inter-node) as seen by one rank.
struct LinkClass {
  double alpha_s = 0;                // latency per message: per peer of an all-to-all, per ring step
  double bandwidth_bytes_per_s = 0;  // per rank and per direction (links are full duplex)
  bool operator==(const LinkClass&) const = default;
};

// The collectives a layout issues, each measured apart by nccl-tests (alltoall_perf,
// sendrecv_perf, all_gather_perf): on PCIe servers an all-to-all through the CPUs runs several
// times slower per byte than the send/receive ring of the same GPUs.
enum class Collective { alltoall, sendrecv, all_gather };
inline constexpr std::array<Collective, 3> kCollectives = {Collective::alltoall, Collective::sendrecv, Collective::all_gather};
std::string_view to_string(Collective c);  // "alltoall", "sendrecv", "all_gather": the JSON keys

// Levels of the machine, innermost first (docs/design.md "Topology"): a PCIe switch, a CPU socket,
// a host, an NVLink domain, a leaf or rail group, the spine. Two ranks "meet" at the first level
// whose instance holds both; a message between them uses each sender's and receiver's path at
// that level and crosses the uplink of every instance below it that it leaves.
inline constexpr size_t kMaxLevels = 8;
using LevelBytes = std::array<int64_t, kMaxLevels>;  // one count per level, innermost first

struct Level {
  std::string name;
  int64_t ranks = 0;  // ranks one instance holds; the last level holds the whole cluster (0 here)
  // Each rank's own path to the peers it meets at this level (its NVLink ports, its PCIe lane
  // into the switch, its NIC): latency per message and bytes/s per direction.
  LinkClass link;
  // The instance's uplink to the level above, shared by every rank under it: bytes/s per
  // direction of the whole instance, 0 when it never limits (non-blocking, or the last level).
  double uplink_bytes_per_s = 0;
  // The uplink carries uplink / oversubscription (a leaf with 3x more downlinks than uplinks: 3).
  double oversubscription = 1;
  // Peer-to-peer does not cross this level directly: a message between ranks that meet here is
  // staged through host memory (a copy to a pinned host buffer, then a copy out), NCCL's SHM
  // transport. Modelled as an extra copy on the path: the rank path's bandwidth is halved.
  bool host_bounce = false;
  // Per collective (kCollectives order), the rate of one whose group spans this level (its
  // widest pair of ranks meets here): alpha per message (all-to-all: per peer; all-gather: per
  // ring step), bandwidth for all of a rank's bytes (busbw), as measured, no host bounce or
  // injection applied. Bandwidth 0: none measured, the per-level path model above prices it.
  std::array<LinkClass, 3> collective{};

  const LinkClass* rate_of(Collective c) const {
    const LinkClass& l = collective[static_cast<size_t>(c)];
    return l.bandwidth_bytes_per_s > 0 ? &l : nullptr;
  }
  bool operator==(const Level&) const = default;
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
  // The topology, innermost level first. Empty in a two-level file: then the levels are
  // {node: ranks_per_node ranks, link intra} and {network: link inter} (levels_of() below).
  // In a file with levels, intra and inter mirror the node level and the level above it.
  std::vector<Level> levels;
  // Each rank's one port that all its traffic shares (a PCIe x16 lane), bytes/s per direction;
  // 0 when the paths of different levels are separate engines (NVLink ports and a NIC).
  double injection_bytes_per_s = 0;
  // What a flash-attention kernel achieves at long sequences; predictions use this one.
  DTypeRates attention_flops_per_s;
  // How one call's shape sets its rate (wave quantisation over the units, a tile's fixed part, a
  // call's fixed cost): sim/attention_rate.h. Not modelled (units 0): every FLOP at the rate above.
  AttentionKernel attention_kernel;
  // Attention runs this many times slower while NCCL kernels run beside it (a ring step's
  // send/receive takes SMs and memory bandwidth): 1 = no slowdown. Calibrated by timing attention
  // with and without a concurrent sendrecv.
  double comm_compute_slowdown = 1;
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
  // Backward attention time over the forward's for the same call: FlashAttention-2's backward does
  // 2.5x the forward's FLOPs (5 matmuls against 2, the scores recomputed); a kernel that runs
  // them at a different rate than its forward (the CPU kernel: 1.85x measured) says so here.
  double backward_compute_factor = 2.5;
  // Per-operation costs of a GPU stack, charged once per operation on top of its bytes and
  // FLOPs: a kernel launch (each attention kernel, each ring step's merge, an all-to-all's pack
  // and unpack) and an engine's fixed overhead per attention call (its Python and dispatch
  // work around the kernels). A collective's launch is operation_latency_s above.
  double kernel_launch_s = 0;
  double call_overhead_s = 0;

  int64_t world() const { return nodes * ranks_per_node; }
};

// The rate measured for collective c at level i (nccl-tests), or nullptr: a two-level file has none.
inline const LinkClass* collective_rate(const Hardware& hw, size_t level, Collective c) {
  return level < hw.levels.size() ? hw.levels[level].rate_of(c) : nullptr;
}

// The levels the cost model uses for a cluster of `ranks_per_node` ranks per node: the file's
// levels with the node level (the one holding hw.ranks_per_node ranks) resized to the cluster's,
// levels below it kept (they must divide it), levels above it keeping their nodes per instance;
// or the two levels of a two-level file. Throws Error naming a level that does not fit.
std::vector<Level> levels_of(const Hardware& hw, int64_t ranks_per_node);

// The parameters predict() reads for time, flat, for calibration by least squares. Names are
// the JSON paths of the fields ("intra.alpha_s", "attention_flops_per_s.bf16", ...).
inline constexpr std::array<std::string_view, 14> kFitParameterNames = {
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
    "backward_compute_factor",
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
