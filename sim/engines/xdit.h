#pragma once
// The xdit engine profile (sources and rules in xdit.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& xdit();
}
