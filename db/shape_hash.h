#pragma once
// 64-bit keys of a shape and of its family, computed from the fields without allocating, so a
// lookup query is one hash and one probe. Equal shapes (families) have equal keys; the lookup
// still compares the fields, so a collision costs a probe, never a wrong answer.
#include <cstdint>

#include "db/records.h"

namespace cptune::db {

uint64_t family_hash(const ShapeView& shape);  // every field but the sequence lengths
uint64_t shape_hash(const ShapeView& shape);   // the family's key extended by the sequence lengths

bool same_shape(const ShapeView& a, const ShapeView& b);

}  // namespace cptune::db
