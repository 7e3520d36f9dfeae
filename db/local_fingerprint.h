#pragma once
// The one definition of a fingerprint's device name, shared by `cptune tune`, `cptune lookup`,
// the C ABI (cptune_lookup_open_local) and the Python package: "cpu" for Gloo CPU ranks (the CPU
// model is recorded among library_versions as "host ..."), the GPU model for NCCL ranks.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "db/records.h"

namespace cptune::db {

inline constexpr std::string_view kCpuDeviceModel = "cpu";

// "cpu" for gloo; for nccl the model of the first GPU as the NVIDIA driver names it
// (/proc/driver/nvidia/gpus/*/information, the same text as cudaGetDeviceProperties' name), "gpu"
// when none is visible. Throws Error naming an unknown backend.
std::string local_device_model(std::string_view backend);

// The cluster of world ranks, ranks_per_node on each node, checked against core's limits
// (1..kMaxWorld each): the one check of every entry point that takes a world. Throws Error.
Cluster checked_cluster(int64_t world, int64_t ranks_per_node);

// /proc/cpuinfo's "model name" of this machine, or "cpu".
std::string cpu_model_name();

// This machine's hardware fields (backend, device model, world, ranks per node); the version
// fields left empty, so a lookup matches the latest recorded versions.
Fingerprint local_hardware_fingerprint(std::string_view backend, int64_t world, int64_t ranks_per_node);

// One line for messages and listings: "gloo cpu P=4 G=4 nodes=1 (gloo 0.5.0; ...; cptune 0.1.0)".
std::string describe_full(const Fingerprint& fp);

// Of `candidates`, the index of the one nearest to `fp`: most equal hardware fields (backend,
// device model, world, ranks per node), ties to the later one. -1 when empty.
int closest_fingerprint(const Fingerprint& fp, const std::vector<Fingerprint>& candidates);

}  // namespace cptune::db
