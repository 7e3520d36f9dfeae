#pragma once
// The lookup's last resort: when nothing of a shape's family was measured, answer with the
// simulator's fastest feasible candidate on the given hardware description and cluster.
#include "db/lookup.h"
#include "sim/candidates.h"
#include "sim/hardware.h"

namespace cptune::db {

// With constraints, only the layouts they allow (an engine's, the CLI's flags).
Fallback simulator_fallback(sim::Hardware hardware, Cluster cluster, sim::PredictOptions options = {},
                            sim::Constraints constraints = {});
// Why the simulator has no feasible candidate for a shape: the reason of the last candidate
// refused (an engine's rule and its source, a layout that cannot build), as `simulate` says it.
Explain simulator_refusal(sim::Hardware hardware, Cluster cluster, sim::PredictOptions options = {},
                          sim::Constraints constraints = {});

}  // namespace cptune::db
