#pragma once
// The CPU kernels' hot loops (attend(), attend_backward(), the dtype copies, the LSE merge) are built once per x86
// instruction set and one build is chosen at start-up from what the processor runs, so one
// portable binary computes at the machine's vector width (README, "CPU kernel instruction
// sets"). CPTUNE_CPU_ISA=baseline|v3|v4 forces one.
//   baseline  the build's own flags (x86-64: SSE2)
//   v3        x86-64-v3: AVX2, FMA, F16C, BMI2 (Haswell and later, Zen)
//   v4        x86-64-v4: AVX-512 F/BW/CD/DQ/VL (Skylake-X and later, Zen 4)
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/types.h"

namespace cptune::backends {

enum class CpuIsa { baseline, v3, v4 };

std::string_view to_string(CpuIsa isa);
// "baseline", "v3" or "v4"; anything else throws Error naming the value.
CpuIsa parse_cpu_isa(std::string_view name);

// Built into this binary and runnable on this processor.
bool cpu_can_run(CpuIsa isa);
// Every variant cpu_can_run(), baseline first.
std::vector<CpuIsa> runnable_cpu_isas();
// The variant the public kernels use: CPTUNE_CPU_ISA if set, else the widest runnable one.
// Decided at the first call; throws Error naming the value when CPTUNE_CPU_ISA is unknown or
// names a variant this processor or build cannot run.
CpuIsa active_cpu_isa();

struct Queries;
struct KvBlock;
struct AttentionParams;
class AttentionState;
struct BackwardInputs;
struct QueryGrads;
struct KvGrads;

// One variant's entry points; the public attend(), attend_backward(), to_float() and from_float() call those of
// active_cpu_isa(). Tests and benchmarks pick a variant by name.
struct CpuKernels {
  CpuIsa isa;
  void (*attend)(const Queries& queries, const KvBlock& block, const AttentionParams& params, AttentionState& state);
  // attend_backward() of attention_cpu.h.
  void (*attend_backward)(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                          const BackwardInputs& in, QueryGrads dq, KvGrads dkv);
  void (*to_float)(const void* src, DType dtype, float* dst, int64_t elems);
  void (*from_float)(const float* src, DType dtype, void* dst, int64_t elems);
  // C [m][n] = A [m][k] times B [n][k] transposed, row-major fp32: the Q.K^T tile product of
  // attend(), the roofline bench_attention_cpu compares the kernel to.
  void (*gemm_abt)(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k);
};
// Throws Error naming the variant when !cpu_can_run(isa).
const CpuKernels& cpu_kernels(CpuIsa isa);
const CpuKernels& active_cpu_kernels();

}  // namespace cptune::backends
