#pragma once
// The megatron engine profile (sources and rules in megatron.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& megatron();
}
