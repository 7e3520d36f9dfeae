#pragma once
// The prime_rl engine profile (sources and rules in prime_rl.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& prime_rl();
}
