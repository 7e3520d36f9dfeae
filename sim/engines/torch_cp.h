#pragma once
// The torch_cp engine profile (sources and rules in torch_cp.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& torch_cp();
}
