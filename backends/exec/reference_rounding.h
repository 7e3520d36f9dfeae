#pragma once
// The rounding both independent references (reference.h for O, reference_bwd.h for dQ, dK, dV)
// derive their tolerances from, and the inputs as the kernels receive them. Shared by the two
// references only: nothing here is the kernels' code.
#include <cstdint>
#include <span>

#include "backends/exec/tensor_gen.h"
#include "core/types.h"

namespace cptune::backends::reference_rounding {

inline constexpr double kU32 = 0x1.0p-24;  // unit roundoff of fp32, the kernels' accumulation type

// Unit roundoff of the storage dtype (round to nearest: |x - dtype(x)| <= u |x| for normal x)
// and half the spacing of its subnormals (the absolute error left below the normal range).
double storage_unit(DType dtype);
double storage_subnormal(DType dtype);

// Higham's gamma_k for fp32: k u / (1 - k u).
double fp32_gamma(double k);

// Values as the kernels receive them: generated (or given) in fp32, rounded to the storage dtype.
void stored_input(std::span<double> out, uint64_t seed, const GivenInputs* given, Tensor tensor, int64_t seq,
                  int64_t pos, int64_t sample, int64_t head, DType dtype);

}  // namespace cptune::backends::reference_rounding
