#pragma once
// NCCL status codes -> cptune::Error, as cuda_check.h does for the CUDA runtime.
#include <nccl.h>

#include <string>

#include "backends/comm/cuda/cuda_check.h"
#include "core/error.h"

namespace cptune::backends {

// NCCL's last message (ncclGetLastError) says more than its status string; comm may be null.
[[noreturn]] inline void throw_nccl(ncclResult_t status, const std::string& operation, const GpuWhere& where,
                                    ncclComm_t comm) {
  const char* last = ncclGetLastError(comm);
  std::string detail = last != nullptr && *last != '\0' ? std::string("; NCCL says: ") + last : "";
  throw Error("nccl " + operation + " on " + where.text() + " failed: " + ncclGetErrorString(status) + detail +
              " (set NCCL_DEBUG=WARN for NCCL's log)");
}

inline void check_nccl(ncclResult_t status, const std::string& operation, const GpuWhere& where,
                       ncclComm_t comm = nullptr) {
  if (status != ncclSuccess) throw_nccl(status, operation, where, comm);
}

}  // namespace cptune::backends
