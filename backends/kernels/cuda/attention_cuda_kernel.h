#pragma once
// The boundary between the host side of CUDA attention (attention_cuda.cc: checks, plans,
// state) and its kernels (attention_cuda.cu), kept small so the .cu includes little.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "backends/kernels/attention_tiles.h"
#include "core/types.h"

namespace cptune::backends::kernels {

// One attend() call as the kernel sees it. Pointers are device memory; strides are elements.
struct AttentionArgs {
  const void* q = nullptr;  // [tokens][q_heads][head_dim], at local q head 0
  const void* k = nullptr;  // [tokens][kv_heads][head_dim]
  const void* v = nullptr;  // [tokens][kv_heads][v_dim]
  float* out = nullptr;     // state O [tokens][q_heads][v_dim]
  float* lse = nullptr;     // state LSE [tokens][q_heads]
  const QueryTileWork* tiles = nullptr;
  const KeySegment* segments = nullptr;
  int64_t q_row_elems = 0;  // q_heads * head_dim: from one token to the next
  int64_t k_row_elems = 0;  // kv_heads * head_dim
  int64_t v_row_elems = 0;  // kv_heads * v_dim
  int64_t q_heads = 0;      // of Q and of the state
  int64_t q_head_begin = 0, kv_head_begin = 0, group_size = 1;  // HeadMap
  int32_t head_dim = 0, v_dim = 0;
  int32_t mask_kind = 0;  // MaskKind as an integer
  int32_t unused = 0;
  int64_t window = 0;      // sliding window in tokens
  float scale_log2 = 0;    // softmax scale times log2(e): the kernel works in base 2
};

// Enqueue on `stream`; return the launch status (cudaGetLastError after the launch).
cudaError_t launch_attention(const AttentionArgs& args, const AttentionLaunch& launch, DType dtype,
                             cudaStream_t stream);
cudaError_t launch_store_output(const float* state_out, int64_t elems, DType dtype, void* out, cudaStream_t stream);
cudaError_t launch_fill(float* data, int64_t elems, float value, cudaStream_t stream);

}  // namespace cptune::backends::kernels
