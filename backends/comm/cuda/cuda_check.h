#pragma once
// CUDA runtime status codes -> cptune::Error naming the operation, the rank and the runtime's
// own words, so a failed GPU call reads like every other user-facing error. CUDA only: kernels
// include it without seeing NCCL (NCCL's codes: nccl_check.h).
#include <cuda_runtime_api.h>

#include <string>

#include "core/error.h"

namespace cptune::backends {

// Where a call ran, for messages: "rank 3 of 8 (CUDA device 3)". rank < 0: not in a comm yet.
struct GpuWhere {
  int rank = -1;
  int size = 0;
  int device = -1;
  std::string text() const {
    std::string out = rank >= 0 ? "rank " + std::to_string(rank) + " of " + std::to_string(size) : "this process";
    if (device >= 0) out += " (CUDA device " + std::to_string(device) + ")";
    return out;
  }
};

[[noreturn]] inline void throw_cuda(cudaError_t status, const std::string& operation, const GpuWhere& where) {
  throw Error("cuda " + operation + " on " + where.text() + " failed: " + cudaGetErrorString(status) + " (" +
              cudaGetErrorName(status) + ", " + std::to_string(static_cast<int>(status)) + ")");
}

inline void check_cuda(cudaError_t status, const std::string& operation, const GpuWhere& where) {
  if (status != cudaSuccess) throw_cuda(status, operation, where);
}

}  // namespace cptune::backends
