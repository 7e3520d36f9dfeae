#pragma once
// The vllm_omni engine profile (sources and rules in vllm_omni.cc).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& vllm_omni();
}
