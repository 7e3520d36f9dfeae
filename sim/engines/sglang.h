#pragma once
// The sglang engine profile (sources and rules in sglang.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& sglang();
}
