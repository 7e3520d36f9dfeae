#include "backends/exec/reference_rounding.h"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "backends/kernels/dtype_convert.h"

namespace cptune::backends::reference_rounding {

double storage_unit(DType dtype) {
  switch (dtype) {
    case DType::bf16: return 0x1.0p-8;
    case DType::fp16: return 0x1.0p-11;
    case DType::fp32: return kU32;
  }
  return 0;
}

double storage_subnormal(DType dtype) {
  switch (dtype) {
    case DType::bf16: return 0x1.0p-134;
    case DType::fp16: return 0x1.0p-25;
    case DType::fp32: return 0x1.0p-150;
  }
  return 0;
}

double fp32_gamma(double k) { return k * kU32 / (1 - k * kU32); }

void stored_input(std::span<double> out, uint64_t seed, const GivenInputs* given, Tensor tensor, int64_t seq,
                  int64_t pos, int64_t sample, int64_t head, DType dtype) {
  const auto elems = static_cast<int64_t>(out.size());
  std::vector<float> values(out.size()), back(out.size());
  for (int64_t d = 0; d < elems; ++d)
    values[static_cast<size_t>(d)] = input_or_given(seed, given, tensor, seq, pos, sample, head, d);
  std::vector<std::byte> stored(values.size() * static_cast<size_t>(dtype_bytes(dtype)));
  from_float(values.data(), dtype, stored.data(), elems);
  to_float(stored.data(), dtype, back.data(), elems);
  std::copy(back.begin(), back.end(), out.begin());
}

}  // namespace cptune::backends::reference_rounding
