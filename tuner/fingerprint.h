#pragma once
// The fingerprint of the cluster a run measures on: what scopes every row of the store.
#include <string>

#include "db/records.h"

namespace cptune::cli {

// backend, this machine's device model (db::local_device_model: "cpu" for gloo, the GPU's model
// for nccl), world, ranks per node, nodes, versions of the libraries that move bytes and compute
// (for gloo also the CPU kernels' variant and "host <CPU model>"), cptune's version.
db::Fingerprint local_fingerprint(const std::string& backend, int64_t world, int64_t ranks_per_node);
std::string cpu_model_name();  // /proc/cpuinfo "model name", or "cpu"

}  // namespace cptune::cli
