#include "backends/kernels/dtype_convert.h"

#include <Eigen/Core>
#include <cassert>
#include <cstring>

namespace cptune::backends {
namespace {

template <typename T>
void widen(const void* src, float* dst, int64_t elems) {
  const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> in(static_cast<const T*>(src), elems);
  Eigen::Map<Eigen::ArrayXf>(dst, elems) = in.template cast<float>();
}

template <typename T>
void narrow(const float* src, void* dst, int64_t elems) {
  const Eigen::Map<const Eigen::ArrayXf> in(src, elems);
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(static_cast<T*>(dst), elems) = in.template cast<T>();
}

}  // namespace

void to_float(const void* src, DType dtype, float* dst, int64_t elems) {
  assert(elems >= 0);
  switch (dtype) {
    case DType::bf16:
      return widen<Eigen::bfloat16>(src, dst, elems);
    case DType::fp16:
      return widen<Eigen::half>(src, dst, elems);
    case DType::fp32:
      if (elems > 0) std::memcpy(dst, src, static_cast<size_t>(elems) * sizeof(float));
      return;
  }
}

void from_float(const float* src, DType dtype, void* dst, int64_t elems) {
  assert(elems >= 0);
  switch (dtype) {
    case DType::bf16:
      return narrow<Eigen::bfloat16>(src, dst, elems);
    case DType::fp16:
      return narrow<Eigen::half>(src, dst, elems);
    case DType::fp32:
      if (elems > 0) std::memcpy(dst, src, static_cast<size_t>(elems) * sizeof(float));
      return;
  }
}

}  // namespace cptune::backends
