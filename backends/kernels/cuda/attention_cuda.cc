// Host side of CUDA attention: argument checks, tile plans in GPU memory, the O / LSE state,
// and the launches of attention_cuda.cu.
#include "backends/kernels/cuda/attention_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "backends/kernels/cuda/attention_cuda_kernel.h"
#include "backends/comm/cuda/cuda_check.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

GpuWhere here() {
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) device = -1;
  return {-1, 0, device};
}

template <typename T>
T* device_copy(const std::vector<T>& host, cudaStream_t stream, const char* what) {
  if (host.empty()) return nullptr;
  void* data = nullptr;
  const size_t bytes = host.size() * sizeof(T);
  check_cuda(cudaMalloc(&data, bytes), fmt::format("cudaMalloc of {} bytes for attention {}", bytes, what), here());
  const cudaError_t copied = cudaMemcpyAsync(data, host.data(), bytes, cudaMemcpyHostToDevice, stream);
  if (copied != cudaSuccess) {
    cudaFree(data);
    throw_cuda(copied, fmt::format("copy of attention {} to the GPU", what), here());
  }
  return static_cast<T*>(data);
}

// The CPU attend()'s argument checks, plus what the device kernel needs on top.
void check_arguments(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                     const CudaAttentionState& state) {
  check_attention_arguments(queries, block, params, {state.tokens(), state.q_heads(), state.v_dim()}, "CUDA attention");
  for (const auto& [t, name] : {std::pair{&queries.q, "Q"}, {&block.k, "K"}, {&block.v, "V"}})
    if (reinterpret_cast<uintptr_t>(t->data) % 16 != 0)
      throw Error(fmt::format("CUDA attention: {} data is not 16-byte aligned; the kernel loads 16-byte chunks", name));
  if (queries.q.dtype != block.k.dtype || queries.q.dtype != block.v.dtype)
    throw Error("CUDA attention: Q, K and V must share one dtype");
}

kernels::AttentionArgs kernel_args(const CudaAttentionPlan& plan, const Queries& queries, const KvBlock& block,
                                   const AttentionParams& params, CudaAttentionState& state) {
  const TensorView &q = queries.q, &k = block.k, &v = block.v;
  const float scale = params.scale.value_or(1.0f / std::sqrt(static_cast<float>(q.dim)));
  kernels::AttentionArgs a;
  a.q = q.data;
  a.k = k.data;
  a.v = v.data;
  a.out = state.out();
  a.lse = state.lse();
  a.tiles = plan.device_tiles();
  a.segments = plan.device_segments();
  a.q_row_elems = q.heads * q.dim;
  a.k_row_elems = k.heads * k.dim;
  a.v_row_elems = v.heads * v.dim;
  a.q_heads = q.heads;
  a.q_head_begin = params.heads.q_head_begin;
  a.kv_head_begin = params.heads.kv_head_begin;
  a.group_size = params.heads.group_size;
  a.head_dim = static_cast<int32_t>(q.dim);
  a.v_dim = static_cast<int32_t>(v.dim);
  a.mask_kind = static_cast<int32_t>(params.mask.kind);
  a.window = params.mask.window;
  a.scale_log2 = scale * 1.44269504088896340736f;
  return a;
}

}  // namespace

// ---- state ------------------------------------------------------------------------------------

CudaAttentionState::CudaAttentionState(int64_t tokens, int64_t q_heads, int64_t v_dim, cudaStream_t stream)
    : tokens_(tokens), q_heads_(q_heads), v_dim_(v_dim), stream_(stream) {
  if (tokens < 0 || q_heads < 1 || v_dim < 1)
    throw Error(fmt::format("CUDA attention state: tokens={} q_heads={} v_dim={}; need tokens >= 0, heads and dims >= 1",
                            tokens, q_heads, v_dim));
  const size_t out_bytes = static_cast<size_t>(tokens * q_heads * v_dim) * sizeof(float);
  const size_t lse_bytes = static_cast<size_t>(tokens * q_heads) * sizeof(float);
  check_cuda(cudaMalloc(reinterpret_cast<void**>(&out_), out_bytes),
             fmt::format("cudaMalloc of {} bytes for the attention state O", out_bytes), here());
  const cudaError_t status = cudaMalloc(reinterpret_cast<void**>(&lse_), lse_bytes);
  if (status != cudaSuccess) {
    cudaFree(out_);
    throw_cuda(status, fmt::format("cudaMalloc of {} bytes for the attention state LSE", lse_bytes), here());
  }
  clear();
}

CudaAttentionState::~CudaAttentionState() {
  cudaFree(out_);  // a destructor cannot report: a failing free leaves nothing to undo
  cudaFree(lse_);
}

void CudaAttentionState::clear() {
  const int64_t rows = tokens_ * q_heads_;
  check_cuda(cudaMemsetAsync(out_, 0, static_cast<size_t>(rows * v_dim_) * sizeof(float), stream_),
             "clearing the attention state O", here());
  check_cuda(kernels::launch_fill(lse_, rows, kMinusInf, stream_), "clearing the attention state LSE", here());
}

void CudaAttentionState::copy_to(AttentionState& host) const {
  if (host.tokens() != tokens_ || host.q_heads() != q_heads_ || host.v_dim() != v_dim_)
    throw Error("CUDA attention: copy_to needs a host state of the same shape");
  check_cuda(cudaMemcpyAsync(host.out().data(), out_, host.out().size_bytes(), cudaMemcpyDeviceToHost, stream_),
             "copy of the attention state O to the host", here());
  check_cuda(cudaMemcpyAsync(host.lse().data(), lse_, host.lse().size_bytes(), cudaMemcpyDeviceToHost, stream_),
             "copy of the attention state LSE to the host", here());
  check_cuda(cudaStreamSynchronize(stream_), "waiting for the attention state copy", here());
}

// ---- plan -------------------------------------------------------------------------------------

CudaAttentionPlan::CudaAttentionPlan(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs,
                                     const Mask& mask, std::span<const int64_t> seq_lens, cudaStream_t stream)
    : q_runs_(q_runs.begin(), q_runs.end()),
      kv_runs_(kv_runs.begin(), kv_runs.end()),
      mask_(mask),
      seq_lens_(seq_lens.begin(), seq_lens.end()),
      plan_(plan_attention_tiles(q_runs, kv_runs, mask, seq_lens)) {
  tiles_ = device_copy(plan_.tiles, stream, "tiles");
  try {
    segments_ = device_copy(plan_.segments, stream, "key segments");
  } catch (...) {
    cudaFree(tiles_);
    throw;
  }
}

CudaAttentionPlan::~CudaAttentionPlan() {
  cudaFree(tiles_);
  cudaFree(segments_);
}

bool CudaAttentionPlan::matches(std::span<const StoredRun> q_runs, std::span<const StoredRun> kv_runs,
                                const Mask& mask, std::span<const int64_t> seq_lens) const {
  auto same = [](std::span<const StoredRun> a, const std::vector<StoredRun>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].seq != b[i].seq || a[i].begin != b[i].begin || a[i].count != b[i].count || a[i].offset != b[i].offset)
        return false;
    return true;
  };
  // Lengths change only a block mask's cuts; other masks ignore them.
  const bool same_lens = mask.kind != MaskKind::blocks || std::equal(seq_lens.begin(), seq_lens.end(),
                                                                     seq_lens_.begin(), seq_lens_.end());
  return mask == mask_ && same_lens && same(q_runs, q_runs_) && same(kv_runs, kv_runs_);
}

// ---- calls ------------------------------------------------------------------------------------

void attend_cuda(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                 CudaAttentionState& state) {
  check_arguments(queries, block, params, state);
  const CudaAttentionPlan plan(queries.runs, block.runs, params.mask, params.seq_lens, state.stream());
  attend_cuda(plan, queries, block, params, state);
  // The plan's memory is freed on return: wait until the kernel that reads it has run.
  check_cuda(cudaStreamSynchronize(state.stream()), "CUDA attention", here());
}

void attend_cuda(const CudaAttentionPlan& plan, const Queries& queries, const KvBlock& block,
                 const AttentionParams& params, CudaAttentionState& state) {
  check_arguments(queries, block, params, state);
  const AttentionLaunch launch =
      attention_launch(plan.tiles(), queries.q.heads, queries.q.dim, block.v.dim, queries.q.dtype);
  check_cuda(kernels::launch_attention(kernel_args(plan, queries, block, params, state), launch, queries.q.dtype,
                                       state.stream()),
             fmt::format("launch of the attention kernel ({} tiles x {} heads, dims {}/{})", launch.tiles, launch.heads,
                         queries.q.dim, block.v.dim),
             here());
}

void store_output_cuda(const CudaAttentionState& state, DType dtype, void* out, int64_t out_bytes) {
  const int64_t elems = state.tokens() * state.q_heads() * state.v_dim();
  if (out_bytes < elems * dtype_bytes(dtype))
    throw Error(fmt::format("CUDA attention: output buffer of {} bytes is smaller than O ({} {} values)", out_bytes,
                            elems, to_string(dtype)));
  if (dtype == DType::fp32) {
    check_cuda(cudaMemcpyAsync(out, state.out(), static_cast<size_t>(elems) * sizeof(float), cudaMemcpyDeviceToDevice,
                               state.stream()),
               "copy of O", here());
    return;
  }
  check_cuda(kernels::launch_store_output(state.out(), elems, dtype, out, state.stream()), "store of O", here());
}

// ---- backward ---------------------------------------------------------------------------------

namespace {
[[noreturn]] void no_gpu_backward(const char* what) {
  throw Error(fmt::format("CUDA attention backward: {} has no GPU kernel yet (cuDNN's backward comes with issue 25); "
                          "run the backward on CPU ranks (--backend gloo)",
                          what));
}
}  // namespace

void compute_delta_cuda(const TensorView& o, const TensorView& d_out, std::span<const StoredRun> /*runs*/,
                        std::span<float> delta, cudaStream_t /*stream*/) {
  if (o.tokens != d_out.tokens || o.heads != d_out.heads || o.dim != d_out.dim ||
      static_cast<int64_t>(delta.size()) != o.tokens * o.heads)
    throw Error(fmt::format("CUDA attention backward: O is {} x {} x {}, dO {} x {} x {} and D holds {} values; "
                            "they must agree",
                            o.tokens, o.heads, o.dim, d_out.tokens, d_out.heads, d_out.dim, delta.size()));
  no_gpu_backward("D = rowsum(dO o O)");
}

void attend_backward_cuda(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                          const BackwardInputs& in, QueryGrads dq, KvGrads dkv, cudaStream_t /*stream*/) {
  check_backward_arguments(queries, block, params, in, dq, dkv, "CUDA attention");
  no_gpu_backward("dQ, dK, dV");
}

void store_gradient_cuda(const GradView& grad, DType dtype, void* out, int64_t out_bytes, cudaStream_t stream) {
  const int64_t elems = grad.elems();
  if (out_bytes < elems * dtype_bytes(dtype))
    throw Error(fmt::format("CUDA attention backward: buffer of {} bytes is smaller than the gradient ({} {} values)",
                            out_bytes, elems, to_string(dtype)));
  if (dtype == DType::fp32) {
    check_cuda(cudaMemcpyAsync(out, grad.data, static_cast<size_t>(elems) * sizeof(float), cudaMemcpyDeviceToDevice,
                               stream),
               "copy of a gradient", here());
    return;
  }
  check_cuda(kernels::launch_store_output(grad.data, elems, dtype, out, stream), "store of a gradient", here());
}

}  // namespace cptune::backends
