#pragma once
// Storage dtype <-> fp32 for contiguous element arrays. Attention reads bf16 / fp16 / fp32
// and accumulates in fp32; every bf16 and fp16 value is exact in fp32, so widening never
// rounds and only narrowing (round to nearest even) loses precision.
#include <cstdint>

#include "core/types.h"

namespace cptune::backends {

// dst[i] = float(src[i]) for i < elems; src holds `elems` values of `dtype`.
void to_float(const void* src, DType dtype, float* dst, int64_t elems);

// dst[i] = dtype(src[i]) rounded to nearest even; dst has room for `elems` values of `dtype`.
void from_float(const float* src, DType dtype, void* dst, int64_t elems);

}  // namespace cptune::backends
