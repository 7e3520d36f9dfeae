#pragma once
// The entry points every instruction-set variant of isa/attention_cpu_isa.cc and
// isa/attention_backward_isa.cc defines, in its own
// namespace cptune::backends::isa_<variant> (cpu_isa.h says which exist and picks one).
#include <cstdint>

#include "backends/kernels/attention_cpu.h"

#define CPTUNE_DECLARE_CPU_ISA_VARIANT(variant)                                                                   \
  namespace cptune::backends::isa_##variant {                                                                     \
  void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params, AttentionState& state); \
  void attend_backward(const Queries& queries, const KvBlock& block, const AttentionParams& params,               \
                       const BackwardInputs& in, QueryGrads dq, KvGrads dkv);                                     \
  void to_float(const void* src, DType dtype, float* dst, int64_t elems);                                         \
  void from_float(const float* src, DType dtype, void* dst, int64_t elems);                                       \
  void gemm_abt(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k);                       \
  }

CPTUNE_DECLARE_CPU_ISA_VARIANT(baseline)
CPTUNE_DECLARE_CPU_ISA_VARIANT(v3)
CPTUNE_DECLARE_CPU_ISA_VARIANT(v4)
