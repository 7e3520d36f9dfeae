#pragma once
// cache-dit's ParallelismConfig (vipshop/cache-dit @f86744a, the same code as PyPI 1.5.3).
#include "sim/engines/engine.h"

namespace cptune::sim::engines {
const Profile& cache_dit();
}
