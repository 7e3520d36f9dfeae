#pragma once
// The yunchang engine profile (sources and rules in yunchang.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& yunchang();
}
