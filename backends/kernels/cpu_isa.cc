#include "backends/kernels/cpu_isa.h"

#include <fmt/format.h>

#include <cstdlib>
#include <string>

#include "backends/kernels/isa/attention_cpu_isa.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

constexpr CpuIsa kAllIsas[] = {CpuIsa::baseline, CpuIsa::v3, CpuIsa::v4};

// Which variants backends/CMakeLists.txt built (x86-64 with GCC or Clang: all three).
bool built(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::baseline:
      return true;
    case CpuIsa::v3:
#ifdef CPTUNE_CPU_ISA_V3
      return true;
#else
      return false;
#endif
    case CpuIsa::v4:
#ifdef CPTUNE_CPU_ISA_V4
      return true;
#else
      return false;
#endif
  }
  return false;
}

// The features -march=x86-64-v3 / -v4 let the compiler use (libgcc also checks that the OS
// saves the AVX and AVX-512 registers before it reports those features).
bool processor_runs(CpuIsa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  bool v3 = __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
#ifndef __clang__  // GCC 12 names these too; every AVX2 processor has them
  v3 = v3 && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("lzcnt") && __builtin_cpu_supports("movbe");
#endif
  switch (isa) {
    case CpuIsa::baseline:
      return true;
    case CpuIsa::v3:
      return v3;
    case CpuIsa::v4:
      return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
  }
  return false;
#else
  return isa == CpuIsa::baseline;
#endif
}

#define CPTUNE_CPU_KERNELS(variant) \
  CpuKernels {                                                                                  \
    CpuIsa::variant, &isa_##variant::attend, &isa_##variant::attend_backward, &isa_##variant::to_float, \
        &isa_##variant::from_float, &isa_##variant::gemm_abt                                            \
  }

const CpuKernels& kernels_of(CpuIsa isa) {
  static const CpuKernels baseline = CPTUNE_CPU_KERNELS(baseline);
#ifdef CPTUNE_CPU_ISA_V3
  static const CpuKernels v3 = CPTUNE_CPU_KERNELS(v3);
  if (isa == CpuIsa::v3) return v3;
#endif
#ifdef CPTUNE_CPU_ISA_V4
  static const CpuKernels v4 = CPTUNE_CPU_KERNELS(v4);
  if (isa == CpuIsa::v4) return v4;
#endif
  return baseline;
}

std::string runnable_names() {
  std::string names;
  for (CpuIsa isa : runnable_cpu_isas()) names += (names.empty() ? "" : ", ") + std::string(to_string(isa));
  return names;
}

CpuIsa choose_cpu_isa() {
  const char* forced = std::getenv("CPTUNE_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    const CpuIsa isa = parse_cpu_isa(forced);
    cpu_kernels(isa);  // throws when this processor or build cannot run it
    return isa;
  }
  return runnable_cpu_isas().back();
}

}  // namespace

std::string_view to_string(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::baseline:
      return "baseline";
    case CpuIsa::v3:
      return "v3";
    case CpuIsa::v4:
      return "v4";
  }
  return "?";
}

CpuIsa parse_cpu_isa(std::string_view name) {
  for (CpuIsa isa : kAllIsas)
    if (name == to_string(isa)) return isa;
  throw Error(fmt::format("CPTUNE_CPU_ISA={}: unknown instruction set; use baseline, v3 (AVX2+FMA) or v4 (AVX-512)",
                          name));
}

bool cpu_can_run(CpuIsa isa) { return built(isa) && processor_runs(isa); }

std::vector<CpuIsa> runnable_cpu_isas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : kAllIsas)
    if (cpu_can_run(isa)) out.push_back(isa);
  return out;
}

const CpuKernels& cpu_kernels(CpuIsa isa) {
  if (!built(isa))
    throw Error(fmt::format("CPU instruction set {}: this build has no {} kernels (only x86-64 builds do); use baseline",
                            to_string(isa), to_string(isa)));
  if (!processor_runs(isa))
    throw Error(fmt::format("CPU instruction set {}: this processor cannot run it (it lacks {}); use one of: {}",
                            to_string(isa), isa == CpuIsa::v3 ? "AVX2/FMA/BMI2/F16C" : "AVX-512 F/BW/CD/DQ/VL",
                            runnable_names()));
  return kernels_of(isa);
}

CpuIsa active_cpu_isa() {
  static const CpuIsa active = choose_cpu_isa();
  return active;
}

const CpuKernels& active_cpu_kernels() {
  static const CpuKernels& active = cpu_kernels(active_cpu_isa());
  return active;
}

}  // namespace cptune::backends
