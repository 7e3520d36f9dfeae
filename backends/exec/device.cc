#include "backends/exec/device.h"

#include <cstring>

#include "core/error.h"

namespace cptune::backends {
namespace {

class HostAttention final : public DeviceAttention {
 public:
  HostAttention(int64_t tokens, int64_t q_heads, int64_t v_dim) : state_(tokens, q_heads, v_dim) {}
  void clear() override { state_.clear(); }
  void attend(const Queries& queries, const KvBlock& block, const AttentionParams& params) override {
    backends::attend(queries, block, params, state_);
  }
  void store_output(DType dtype, std::byte* out, int64_t out_bytes) override {
    backends::store_output(state_, dtype, out, out_bytes);
  }

 private:
  AttentionState state_;
};

class HostDevice final : public Device {
 public:
  std::string name() const override { return "cpu"; }
  DeviceBuffer allocate(int64_t bytes) override {
    auto* data = new std::byte[static_cast<size_t>(bytes)]();
    return {data, bytes, [](std::byte* p) { delete[] p; }};
  }
  void copy_rows(std::byte* dst, int64_t dst_pitch, const std::byte* src, int64_t src_pitch, int64_t width,
                 int64_t rows) override {
    if (width == 0 || rows == 0) return;
    if (dst_pitch == width && src_pitch == width) {  // contiguous rows: one copy
      std::memcpy(dst, src, static_cast<size_t>(width * rows));
      return;
    }
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(dst + i * dst_pitch, src + i * src_pitch, static_cast<size_t>(width));
  }
  void upload(std::byte* dst, const void* host, int64_t bytes) override {
    if (bytes > 0) std::memcpy(dst, host, static_cast<size_t>(bytes));
  }
  void download(void* host, const std::byte* src, int64_t bytes) override {
    if (bytes > 0) std::memcpy(host, src, static_cast<size_t>(bytes));
  }
  std::unique_ptr<DeviceAttention> attention(int64_t tokens, int64_t q_heads, int64_t v_dim) override {
    return std::make_unique<HostAttention>(tokens, q_heads, v_dim);
  }
  void synchronize() override {}
};

}  // namespace

std::unique_ptr<Device> make_host_device() { return std::make_unique<HostDevice>(); }

}  // namespace cptune::backends
