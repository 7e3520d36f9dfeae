#include "backends/exec/device.h"

#include <cstring>
#include <optional>
#include <vector>

#include "backends/kernels/dtype_convert.h"
#include "core/error.h"

namespace cptune::backends {

void DeviceAttention::begin_backward(const TensorView&, std::span<const StoredRun>, int64_t) {
  throw Error("this device has no attention backward kernel yet; run the backward pass on CPU ranks (Gloo)");
}
void DeviceAttention::attend_backward(const Queries&, const KvBlock&, const AttentionParams&, KvGrads) {
  throw Error("this device has no attention backward kernel yet; run the backward pass on CPU ranks (Gloo)");
}
void DeviceAttention::store_grad_q(DType, std::byte*, int64_t) {
  throw Error("this device has no attention backward kernel yet; run the backward pass on CPU ranks (Gloo)");
}

void Device::zero(std::byte* data, int64_t bytes) {
  const std::vector<std::byte> zeros(static_cast<size_t>(bytes));
  upload(data, zeros.data(), bytes);
  synchronize();  // `zeros` is freed on return
}

void Device::add_floats(std::byte* dst, const std::byte* src, int64_t elems) {
  std::vector<float> a(static_cast<size_t>(elems)), b(a.size());
  download(a.data(), dst, elems * 4);
  download(b.data(), src, elems * 4);
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  upload(dst, a.data(), elems * 4);
  synchronize();
}

void Device::add_stored(std::byte* dst, const std::byte* src, DType dtype, int64_t elems) {
  std::vector<std::byte> stored(static_cast<size_t>(elems * dtype_bytes(dtype)));
  download(stored.data(), src, static_cast<int64_t>(stored.size()));
  std::vector<float> a(static_cast<size_t>(elems)), b(a.size());
  to_float(stored.data(), dtype, b.data(), elems);
  download(a.data(), dst, elems * 4);
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  upload(dst, a.data(), elems * 4);
  synchronize();
}

void Device::store_floats(const std::byte* src, int64_t elems, DType dtype, std::byte* out) {
  std::vector<float> values(static_cast<size_t>(elems));
  download(values.data(), src, elems * 4);
  std::vector<std::byte> stored(static_cast<size_t>(elems * dtype_bytes(dtype)));
  from_float(values.data(), dtype, stored.data(), elems);
  upload(out, stored.data(), static_cast<int64_t>(stored.size()));
  synchronize();
}

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

  void begin_backward(const TensorView& d_out, std::span<const StoredRun> runs, int64_t q_dim) override {
    d_out_ = d_out;
    if (!dq_ || dq_->dim() != q_dim) dq_.emplace(state_.tokens(), state_.q_heads(), q_dim);
    dq_->clear();
    delta_.assign(static_cast<size_t>(state_.tokens() * state_.q_heads()), 0.0f);
    compute_delta(output_view(state_), d_out, runs, delta_);
  }
  void attend_backward(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                       KvGrads dkv) override {
    backends::attend_backward(queries, block, params, {d_out_, state_.lse(), delta_}, {dq_->view()}, dkv);
  }
  void store_grad_q(DType dtype, std::byte* out, int64_t out_bytes) override {
    store_gradient(dq_->view(), dtype, out, out_bytes);
  }

 private:
  AttentionState state_;
  TensorView d_out_;
  std::optional<GradBuffer> dq_;
  std::vector<float> delta_;
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

  void zero(std::byte* data, int64_t bytes) override {
    if (bytes > 0) std::memset(data, 0, static_cast<size_t>(bytes));
  }
  void add_floats(std::byte* dst, const std::byte* src, int64_t elems) override {
    float* d = reinterpret_cast<float*>(dst);
    const float* s = reinterpret_cast<const float*>(src);
    for (int64_t i = 0; i < elems; ++i) d[i] += s[i];
  }
  void add_stored(std::byte* dst, const std::byte* src, DType dtype, int64_t elems) override {
    scratch_.resize(static_cast<size_t>(elems));
    to_float(src, dtype, scratch_.data(), elems);
    add_floats(dst, reinterpret_cast<const std::byte*>(scratch_.data()), elems);
  }
  void store_floats(const std::byte* src, int64_t elems, DType dtype, std::byte* out) override {
    from_float(reinterpret_cast<const float*>(src), dtype, out, elems);
  }

 private:
  std::vector<float> scratch_;
};

}  // namespace

std::unique_ptr<Device> make_host_device() { return std::make_unique<HostDevice>(); }

}  // namespace cptune::backends
