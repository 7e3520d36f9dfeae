#pragma once
// Where a rank's executor buffers live and its attention runs: host memory and the CPU kernel
// for Gloo runs, one GPU's memory and the CUDA kernel for NCCL runs. The executor's logic
// (packing by Layout placements, ring rotation, all-gather, O back) is written once against
// this interface; only the device differs.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "backends/kernels/attention_cpu.h"

namespace cptune::backends {

class Comm;

// Bytes owned on some device; moves, never copies. Zeroed when allocated.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::byte* data, int64_t bytes, std::function<void(std::byte*)> release)
      : data_(data), bytes_(bytes), release_(std::move(release)) {}
  ~DeviceBuffer() {
    if (data_ != nullptr && release_) release_(data_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      DeviceBuffer old(data_, bytes_, std::move(release_));  // releases what this held
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      release_ = std::move(other.release_);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  std::byte* data() const { return data_; }
  int64_t bytes() const { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  int64_t bytes_ = 0;
  std::function<void(std::byte*)> release_;
};

// The O / LSE state of one rank's queries on a device (AttentionState on the host).
class DeviceAttention {
 public:
  virtual ~DeviceAttention() = default;
  virtual void clear() = 0;
  // attend() of attention_cpu.h with tensors in device memory, merged into this state.
  virtual void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params) = 0;
  // O in `dtype` into device memory `out`.
  virtual void store_output(DType dtype, std::byte* out, int64_t out_bytes) = 0;

  // The backward, after this state's forward (its final O and LSE stay here). A device without
  // a backward kernel throws Error from these.
  // Starts a backward of my queries: dO (device memory, the Q tensor's rows x my q heads x Dv)
  // is kept for the calls below, D = rowsum(dO o O) computed for the rows of `runs`, and dQ
  // (q_dim wide) zeroed.
  virtual void begin_backward(const TensorView& d_out, std::span<const StoredRun> runs, int64_t q_dim);
  // attend_backward() of attention_cpu.h: adds dQ (kept here) and this block's share of dK, dV
  // into `dkv` (fp32 device memory, the block's rows).
  virtual void attend_backward(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                               KvGrads dkv);
  // dQ in `dtype` into device memory `out`.
  virtual void store_grad_q(DType dtype, std::byte* out, int64_t out_bytes);
};

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda:3"
  // Whether its attention rounds each softmax probability to the storage dtype before P V (the
  // tensor-core kernels feed P to the bf16/fp16 mma); --verify widens its tolerance by that one
  // rounding (reference.cc). The CPU kernels keep P in fp32.
  virtual bool rounds_probabilities() const { return false; }

  virtual DeviceBuffer allocate(int64_t bytes) = 0;
  // `rows` rows of `width` bytes: row i from src + i * src_pitch to dst + i * dst_pitch.
  virtual void copy_rows(std::byte* dst, int64_t dst_pitch, const std::byte* src, int64_t src_pitch, int64_t width,
                         int64_t rows) = 0;
  virtual void upload(std::byte* dst, const void* host, int64_t bytes) = 0;
  // Waits for the device's queued work, then copies to the host.
  virtual void download(void* host, const std::byte* src, int64_t bytes) = 0;
  virtual std::unique_ptr<DeviceAttention> attention(int64_t tokens, int64_t q_heads, int64_t v_dim) = 0;
  // Returns when everything queued has run (a phase ends here, so host timers measure it).
  virtual void synchronize() = 0;

  // fp32 arithmetic the backward's motions need on device memory (dK, dV sums). The defaults go
  // through the host (download, compute, upload): correct on any device, fast on the host only.
  virtual void zero(std::byte* data, int64_t bytes);
  // dst[i] += src[i] for `elems` floats.
  virtual void add_floats(std::byte* dst, const std::byte* src, int64_t elems);
  // dst[i] += src[i] for `elems` elements of `dtype` at src (a received partial dK, dV).
  virtual void add_stored(std::byte* dst, const std::byte* src, DType dtype, int64_t elems);
  // `elems` floats at src rounded to `dtype` into out.
  virtual void store_floats(const std::byte* src, int64_t elems, DType dtype, std::byte* out);
};

// The CPU: plain memory, memcpy, the Eigen kernel; synchronize() does nothing.
std::unique_ptr<Device> make_host_device();


}  // namespace cptune::backends
