#include "backends/kernels/dtype_convert.h"

#include "backends/kernels/cpu_isa.h"

namespace cptune::backends {

// The copies live in isa/attention_cpu_isa.cc, built once per instruction set.
void to_float(const void* src, DType dtype, float* dst, int64_t elems) {
  active_cpu_kernels().to_float(src, dtype, dst, elems);
}

void from_float(const float* src, DType dtype, void* dst, int64_t elems) {
  active_cpu_kernels().from_float(src, dtype, dst, elems);
}

}  // namespace cptune::backends
