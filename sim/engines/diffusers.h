#pragma once
// diffusers' ContextParallelConfig (huggingface/diffusers @58eb52c, the same CP code as PyPI 0.42.1).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& diffusers();
}
