#pragma once
// CUDA attention for one rank, forward (the backward's interface is declared at the end): the contract of the CPU attend() (attention_cpu.h) on
// tensors in GPU memory. bf16 / fp16 storage, fp32 accumulation on tensor cores, tiled like
// flash attention (memory linear in sequence length), full / causal / sliding-window / block masks,
// StoredRun packing (runs of different sequences never attend) and HeadMap GQA. Each call
// merges a K,V block into an fp32 O / LSE state, so ring steps arrive in any order.
//
// Everything is enqueued on the state's stream; nothing here waits for the GPU except
// CudaAttentionState::copy_to.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "backends/kernels/attention_backward.h"
#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/attention_tiles.h"

namespace cptune::backends {

// O [tokens][q_heads][v_dim] and LSE [tokens][q_heads] in GPU memory, fp32; a row that has
// attended nothing has O = 0 and LSE = -inf, as in AttentionState.
class CudaAttentionState {
 public:
  // Allocates on the current device and clears (enqueued). Throws Error when CUDA fails.
  CudaAttentionState(int64_t tokens, int64_t q_heads, int64_t v_dim, cudaStream_t stream);
  ~CudaAttentionState();
  CudaAttentionState(const CudaAttentionState&) = delete;
  CudaAttentionState& operator=(const CudaAttentionState&) = delete;

  void clear();  // every row empty again (enqueued)
  int64_t tokens() const { return tokens_; }
  int64_t q_heads() const { return q_heads_; }
  int64_t v_dim() const { return v_dim_; }
  cudaStream_t stream() const { return stream_; }
  float* out() { return out_; }
  const float* out() const { return out_; }
  float* lse() { return lse_; }
  const float* lse() const { return lse_; }

  // Waits for the stream and copies O and LSE into a host state of the same shape.
  void copy_to(AttentionState& host) const;

 private:
  int64_t tokens_, q_heads_, v_dim_;
  cudaStream_t stream_;
  float* out_ = nullptr;
  float* lse_ = nullptr;
};

// The tiles of one (query runs, K,V runs, mask, sequence lengths), on the host and in GPU memory:
// plan once, attend many times (the executor plans each ring step's block once per run, not per
// call). seq_lens as in AttentionParams (block masks need them).
class CudaAttentionPlan {
 public:
  CudaAttentionPlan(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs, const Mask& mask,
                    std::span<const int64_t> seq_lens, cudaStream_t stream);
  ~CudaAttentionPlan();
  CudaAttentionPlan(const CudaAttentionPlan&) = delete;
  CudaAttentionPlan& operator=(const CudaAttentionPlan&) = delete;

  const TilePlan& tiles() const { return plan_; }
  const QueryTileWork* device_tiles() const { return tiles_; }
  const KeySegment* device_segments() const { return segments_; }
  // Whether this plan was made for exactly these runs, mask and lengths (a plan cache compares with it).
  bool matches(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs, const Mask& mask,
               std::span<const int64_t> seq_lens) const;

 private:
  std::vector<StoredRun> q_runs_, kv_runs_;
  Mask mask_;
  std::vector<int64_t> seq_lens_;
  TilePlan plan_;
  QueryTileWork* tiles_ = nullptr;
  KeySegment* segments_ = nullptr;
};

// Attention of the query runs against one K,V block, merged into `state`. Tensor data pointers
// are device memory; runs are host spans (the plan copies them). Throws Error when tensors,
// runs, heads or state disagree (the CPU attend()'s checks) or the kernel cannot run the
// shape (attention_launch()).
void attend_cuda(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                 CudaAttentionState& state);
// The same with a plan made for queries.runs and block.runs (not re-checked against them).
void attend_cuda(const CudaAttentionPlan& plan, const Queries& queries, const KvBlock& block,
                 const AttentionParams& params, CudaAttentionState& state);

// Writes O to `out` (device memory, [tokens][q_heads][v_dim]) in `dtype`, round to nearest
// even (fp32: a copy). Throws Error when out_bytes is too small.
void store_output_cuda(const CudaAttentionState& state, DType dtype, void* out, int64_t out_bytes);

// ---- backward ---------------------------------------------------------------------------------
// The CPU backward's interface (attend_backward(), compute_delta() of attention_cpu.h; the ring
// contract of attention_backward.h) on tensors in GPU memory, enqueued on `stream`: spans and
// GradViews point at device memory. The GPU backward (cuDNN's) comes with issue 25; until then
// compute_delta_cuda and attend_backward_cuda throw Error saying so, after checking their arguments.
void compute_delta_cuda(const TensorView& o, const TensorView& d_out, std::span<const StoredRun> runs,
                        std::span<float> delta, cudaStream_t stream);
void attend_backward_cuda(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                          const BackwardInputs& in, QueryGrads dq, KvGrads dkv, cudaStream_t stream);
// Writes an fp32 gradient (device memory) to `out` (device memory) in `dtype`, round to nearest
// even (fp32: a copy). Throws Error when out_bytes is too small.
void store_gradient_cuda(const GradView& grad, DType dtype, void* out, int64_t out_bytes, cudaStream_t stream);

}  // namespace cptune::backends
