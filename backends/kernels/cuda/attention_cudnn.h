#pragma once
// cuDNN's fused attention (SDPA through the cuDNN frontend) running the calls of a CudnnPlan
// (cudnn_plan.h) on device tensors: a forward with its softmax stats (LSE, natural log) and a
// backward (dQ, dK, dV). One graph per CudnnGraphKey, built on first use and cached.
// Built only where cuDNN and its frontend were found (CPTUNE_HAVE_CUDNN); libcudnn.so.9 is loaded
// when the first CudnnAttention is made, so programs start on machines without it.
//
// Not yet wired into attend_cuda / the executor (--kernel cudnn|cptune comes later): each call
// writes its entries' rows of O / LSE (or dQ, dK, dV), which the caller merges like a ring step.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "backends/kernels/cudnn_plan.h"

namespace cptune::backends {

// Device pointers of one call, every tensor [tokens][heads][dim] as CudnnTensors describes
// (all local heads: the slice's offset is applied here). lse: fp32 [tokens][q_heads].
struct CudnnForwardTensors {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;  // in the tensors' dtype
  float* lse = nullptr;
};
struct CudnnBackwardTensors {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* o = nullptr;      // the final O, in the tensors' dtype
  const void* d_out = nullptr;  // dO, same layout
  const float* lse = nullptr;   // the final LSE
  void* dq = nullptr;           // written (not added) for the entries' rows, in the tensors' dtype
  void* dk = nullptr;
  void* dv = nullptr;
};

class CudnnAttention {
 public:
  // Loads libcudnn.so.9 (the loader's path, then the CUDA install found at build time) and makes a
  // handle on `stream`. Throws Error when cuDNN cannot be loaded or started.
  explicit CudnnAttention(cudaStream_t stream);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Enqueues one call for one head slice. Throws Error when cuDNN refuses the graph (its message
  // and the key) or a CUDA copy fails.
  void forward(const CudnnCall& call, const CudnnHeadSlice& slice, const CudnnTensors& tensors,
               const CudnnForwardTensors& x);
  void backward(const CudnnCall& call, const CudnnHeadSlice& slice, const CudnnTensors& tensors,
                const CudnnBackwardTensors& x);

  int64_t graphs_built() const;  // distinct keys so far (a ring of one shape: a handful)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cptune::backends
