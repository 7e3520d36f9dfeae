#pragma once
// The ring_flash_attn engine profile (sources and rules in ring_flash_attn.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& ring_flash_attn();
}
