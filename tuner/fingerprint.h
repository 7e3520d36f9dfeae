#pragma once
// The full fingerprint of the cluster a run measures on: what scopes every row of the store.
// Built on db::local_hardware_fingerprint (db/local_fingerprint.h, the one definition of the
// hardware fields and the device name) with the versions only the tuner can see: the kernels'
// instruction-set variant and the libraries cptune was built against.
#include <string>

#include "db/records.h"

namespace cptune::tuner {

// db::local_hardware_fingerprint(backend, world, ranks_per_node), and as versions: the
// libraries that move bytes and compute (for gloo also the CPU kernels' variant and "host <CPU
// model>"), cptune's version.
db::Fingerprint local_fingerprint(const std::string& backend, int64_t world, int64_t ranks_per_node);

}  // namespace cptune::tuner
