#include "backends/exec/cuda/cuda_device.h"

#include <fmt/format.h>

#include <vector>

#include "backends/kernels/cuda/attention_cuda.h"
#include "backends/comm/cuda/cuda_check.h"
#include "backends/comm/cuda/nccl_comm.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

// Plans are made on first use of each (query runs, K,V runs, mask): a rank attends to the same
// few blocks (one per ring index) every iteration, so later calls only launch.
class CudaAttention final : public DeviceAttention {
 public:
  CudaAttention(int64_t tokens, int64_t q_heads, int64_t v_dim, cudaStream_t stream)
      : state_(tokens, q_heads, v_dim, stream) {}
  void clear() override { state_.clear(); }
  void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params) override {
    attend_cuda(plan_for(queries, block, params), queries, block, params, state_);
  }
  void store_output(DType dtype, std::byte* out, int64_t out_bytes) override {
    store_output_cuda(state_, dtype, out, out_bytes);
  }

 private:
  const CudaAttentionPlan& plan_for(const Queries& queries, const KvBlock& block, const AttentionParams& params) {
    for (const auto& plan : plans_)
      if (plan->matches(queries.runs, block.runs, params.mask)) return *plan;
    plans_.push_back(std::make_unique<CudaAttentionPlan>(queries.runs, block.runs, params.mask, state_.stream()));
    return *plans_.back();
  }

  CudaAttentionState state_;
  std::vector<std::unique_ptr<CudaAttentionPlan>> plans_;
};

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(NcclComm& comm) : comm_(comm), where_{comm.rank(), comm.size(), comm.device()} {}

  std::string name() const override { return "cuda:" + std::to_string(comm_.device()); }
  bool rounds_probabilities() const override { return true; }  // P enters mma.m16n8k16 as bf16 / fp16

  DeviceBuffer allocate(int64_t bytes) override {
    void* data = nullptr;
    check_cuda(cudaMalloc(&data, static_cast<size_t>(bytes)), fmt::format("cudaMalloc of {} bytes", bytes), where_);
    DeviceBuffer buffer(static_cast<std::byte*>(data), bytes, [](std::byte* p) { cudaFree(p); });
    check_cuda(cudaMemsetAsync(data, 0, static_cast<size_t>(bytes), comm_.stream()), "cudaMemsetAsync", where_);
    return buffer;
  }

  void copy_rows(std::byte* dst, int64_t dst_pitch, const std::byte* src, int64_t src_pitch, int64_t width,
                 int64_t rows) override {
    if (width == 0 || rows == 0) return;
    check_cuda(cudaMemcpy2DAsync(dst, static_cast<size_t>(dst_pitch), src, static_cast<size_t>(src_pitch),
                                 static_cast<size_t>(width), static_cast<size_t>(rows), cudaMemcpyDeviceToDevice,
                                 comm_.stream()),
               fmt::format("cudaMemcpy2DAsync of {} rows x {} bytes", rows, width), where_);
  }

  void upload(std::byte* dst, const void* host, int64_t bytes) override {
    if (bytes == 0) return;
    check_cuda(cudaMemcpyAsync(dst, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, comm_.stream()),
               fmt::format("copy of {} bytes to the GPU", bytes), where_);
  }

  void download(void* host, const std::byte* src, int64_t bytes) override {
    comm_.synchronize();  // bounded by the comm's timeout, unlike a plain blocking copy
    if (bytes == 0) return;
    check_cuda(cudaMemcpyAsync(host, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, comm_.stream()),
               fmt::format("copy of {} bytes to the host", bytes), where_);
    check_cuda(cudaStreamSynchronize(comm_.stream()), "waiting for a copy to the host", where_);
  }

  std::unique_ptr<DeviceAttention> attention(int64_t tokens, int64_t q_heads, int64_t v_dim) override {
    return std::make_unique<CudaAttention>(tokens, q_heads, v_dim, comm_.stream());
  }

  void synchronize() override { comm_.synchronize(); }

 private:
  NcclComm& comm_;
  GpuWhere where_;
};

}  // namespace

std::unique_ptr<Device> make_cuda_device(NcclComm& comm) { return std::make_unique<CudaDevice>(comm); }

}  // namespace cptune::backends
