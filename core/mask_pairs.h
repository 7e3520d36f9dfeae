#pragma once
// Exact counts of visible (query, key) pairs under a mask: what every FLOP count of the layout,
// the block placement and the executor's work estimate is made of.
#include <cstdint>

#include "core/types.h"

namespace cptune {

// Exact count of (i, j) with i in [qa, qb), j in [ka, kb) visible under the mask in one sequence
// of len real tokens (block masks cut it into their blocks; positions past len are padding).
int64_t mask_pairs(const Mask& mask, int64_t len, int64_t qa, int64_t qb, int64_t ka, int64_t kb);

}  // namespace cptune
