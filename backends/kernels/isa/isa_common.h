#pragma once
// What the per-instruction-set kernels (attention_cpu_isa.cc, attention_backward_isa.cc) share
// within one variant: tile sizes, fp32 buffers, dtype widening and head-major fp32 copies.
// Include it FIRST in those files, and nowhere else.
//
// One binary holds every variant, so no code of one may be shared with another or with the
// rest of the program: the linker keeps one copy of each inline function or template of a
// given name, and a v4 copy of Eigen's GEMM or of std::vector<float> called from baseline code
// would fault on a processor without AVX-512. Hence: everything here lives in a namespace per
// variant (the entry points) or an anonymous one, Eigen is renamed per variant by the macro
// below, and no std template is instantiated on types shared with other translation units
// (buffers are plain new[] arrays). tests/check_cpu_isa_objects.sh checks the symbols.
#define CPTUNE_ISA_CAT2(a, b) a##b
#define CPTUNE_ISA_CAT(a, b) CPTUNE_ISA_CAT2(a, b)
#define Eigen CPTUNE_ISA_CAT(Eigen_isa_, CPTUNE_ISA)

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <limits>

#include "backends/kernels/attention.h"

// Everything below has internal linkage (an anonymous namespace inside the variant's), so each
// translation unit of a variant holds its own copy and no symbol leaves the object.
namespace cptune::backends::CPTUNE_ISA_CAT(isa_, CPTUNE_ISA) {
namespace {

// Query rows x key rows per tile: a 64x64 fp32 score tile and the 64-row Q and K, V slices
// (D, Dv <= 128) stay in L1/L2 while Eigen multiplies them.
constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<RowMatrix>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;

// An fp32 buffer owned by this variant (see the top of the file: no std::vector<float> here).
class Floats {
 public:
  explicit Floats(int64_t elems) : data_(new float[static_cast<size_t>(elems)]) {}
  Floats(const Floats&) = delete;
  Floats& operator=(const Floats&) = delete;
  ~Floats() { delete[] data_; }
  float* data() { return data_; }
  const float* data() const { return data_; }
  float& operator[](int64_t i) { return data_[i]; }
  float operator[](int64_t i) const { return data_[i]; }

 private:
  float* data_;
};

// ---- dtype copies -----------------------------------------------------------------------------

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

void widen_to(const void* src, DType dtype, float* dst, int64_t elems) {
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

// ---- fp32 head-major copies -----------------------------------------------------------------

// A tensor widened to fp32 (times `scale`) and regrouped [heads][tokens][dim], so each head's
// rows form one dense matrix for the tile products.
class HeadMajor {
 public:
  HeadMajor(const TensorView& t, float scale) : tokens_(t.tokens), dim_(t.dim), data_(t.tokens * t.heads * t.dim) {
    const auto* src = static_cast<const unsigned char*>(t.data);
    const int64_t row_bytes = t.dim * dtype_bytes(t.dtype);
    for (int64_t token = 0; token < t.tokens; ++token)
      for (int64_t head = 0; head < t.heads; ++head)
        widen_to(src + (token * t.heads + head) * row_bytes, t.dtype, mutable_rows(head, token), t.dim);
    if (scale != 1.0f) Eigen::Map<Eigen::ArrayXf>(data_.data(), t.tokens * t.heads * t.dim) *= scale;
  }
  const float* rows(int64_t head, int64_t token) const { return data_.data() + (head * tokens_ + token) * dim_; }

 private:
  float* mutable_rows(int64_t head, int64_t token) { return data_.data() + (head * tokens_ + token) * dim_; }
  int64_t tokens_, dim_;
  Floats data_;
};

}  // namespace
}  // namespace cptune::backends::CPTUNE_ISA_CAT(isa_, CPTUNE_ISA)
