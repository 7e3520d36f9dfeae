#pragma once
// Test-only fault injection into the executor's pipeline (never into the verifier): a Comm
// decorator that damages one message as it arrives, and a Device whose attention kernel
// perturbs one block. A run with either must fail --verify.
#include <algorithm>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backends/comm/comm.h"
#include "backends/exec/device.h"

namespace cptune::testing {

enum class Fault {
  flip,     // xor one byte in the middle of the message (an exponent bit of a 2- or 4-byte element)
  drop,     // the message never arrives: the receive buffer keeps what it held (zeros at first)
  reorder,  // the message arrives rotated by 4 bytes: every element lands one place off
};
enum class FaultOp { alltoallv, allgatherv, ring };

// Damages the `nth` (0-based) message of kind `op` that this rank receives, counting over the
// world and every sub-group split from it. alltoallv and allgatherv: the part from `member`
// (of the group the collective runs in); ring: the whole receive.
struct FaultPlan {
  Fault fault = Fault::flip;
  FaultOp op = FaultOp::alltoallv;
  int nth = 0;
  int member = 0;
  int seen = 0;  // messages of `op` received so far
};

inline void damage(Fault fault, std::byte* data, int64_t bytes, std::span<const std::byte> before) {
  if (bytes <= 0) return;
  switch (fault) {
    case Fault::flip:
      data[(bytes / 2) | 1] ^= std::byte{0x20};  // odd byte: the high byte of a bf16/fp16 element
      break;
    case Fault::drop:
      std::memcpy(data, before.data(), static_cast<size_t>(bytes));
      break;
    case Fault::reorder:
      std::rotate(data, data + std::min<int64_t>(4, bytes), data + bytes);
      break;
  }
}

class FaultyComm : public backends::Comm {
 public:
  FaultyComm(backends::Comm& inner, std::shared_ptr<FaultPlan> plan) : inner_(inner), plan_(std::move(plan)) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return inner_.backend(); }

  std::unique_ptr<Comm> split(int color, int key) override {
    struct Owning : FaultyComm {
      Owning(std::unique_ptr<Comm> c, std::shared_ptr<FaultPlan> p) : FaultyComm(*c, std::move(p)), owned(std::move(c)) {}
      std::unique_ptr<Comm> owned;  // declared after the base: the base only keeps a reference
    };
    return std::make_unique<Owning>(inner_.split(color, key), plan_);
  }

  void alltoallv(const void* send, std::span<const int64_t> send_bytes, void* recv,
                 std::span<const int64_t> recv_bytes) override {
    const bool hit = next(FaultOp::alltoallv);
    const Segment seg = segment(recv, recv_bytes);
    inner_.alltoallv(send, send_bytes, recv, recv_bytes);
    if (hit) damage(plan_->fault, seg.data, seg.bytes, seg.before);
  }
  void allgatherv(const void* send, int64_t send_bytes, void* recv, std::span<const int64_t> recv_bytes) override {
    const bool hit = next(FaultOp::allgatherv);
    const Segment seg = segment(recv, recv_bytes);
    inner_.allgatherv(send, send_bytes, recv, recv_bytes);
    if (hit) damage(plan_->fault, seg.data, seg.bytes, seg.before);
  }
  std::unique_ptr<backends::Request> isend(const void* buf, int64_t bytes, int peer, int tag) override {
    return inner_.isend(buf, bytes, peer, tag);
  }
  std::unique_ptr<backends::Request> irecv(void* buf, int64_t bytes, int peer, int tag) override {
    struct Damaging : backends::Request {
      std::unique_ptr<backends::Request> inner;
      Fault fault;
      std::byte* data;
      int64_t bytes;
      std::vector<std::byte> before;
      void wait() override {
        inner->wait();
        damage(fault, data, bytes, before);
      }
    };
    if (!next(FaultOp::ring)) return inner_.irecv(buf, bytes, peer, tag);
    auto* data = static_cast<std::byte*>(buf);
    auto request = std::make_unique<Damaging>();
    request->fault = plan_->fault;
    request->data = data;
    request->bytes = bytes;
    request->before.assign(data, data + bytes);
    request->inner = inner_.irecv(buf, bytes, peer, tag);
    return request;
  }
  void barrier() override { inner_.barrier(); }
  void allgather_host(const void* send, int64_t bytes, void* recv) override { inner_.allgather_host(send, bytes, recv); }

 private:
  struct Segment {
    std::byte* data = nullptr;
    int64_t bytes = 0;
    std::vector<std::byte> before;
  };
  bool next(FaultOp op) { return plan_->op == op && plan_->seen++ == plan_->nth; }
  Segment segment(void* recv, std::span<const int64_t> recv_bytes) const {
    int64_t offset = 0;
    for (int p = 0; p < plan_->member; ++p) offset += recv_bytes[static_cast<size_t>(p)];
    Segment s{static_cast<std::byte*>(recv) + offset, recv_bytes[static_cast<size_t>(plan_->member)], {}};
    s.before.assign(s.data, s.data + s.bytes);
    return s;
  }

  backends::Comm& inner_;
  std::shared_ptr<FaultPlan> plan_;
};

// The kernel perturbed: the `nth` (0-based) attend() call of this rank either drops the last key
// of its block (any device: runs are host metadata) or negates its first key (a copy of K made
// on the host: the host device only).
enum class KernelFault { drop_last_key, perturb_key };

class FaultyDevice : public backends::Device {
 public:
  FaultyDevice(std::unique_ptr<backends::Device> inner, KernelFault fault, int nth)
      : inner_(std::move(inner)), fault_(fault), nth_(nth) {}

  std::string name() const override { return inner_->name(); }
  bool rounds_probabilities() const override { return inner_->rounds_probabilities(); }
  backends::DeviceBuffer allocate(int64_t bytes) override { return inner_->allocate(bytes); }
  void copy_rows(std::byte* dst, int64_t dst_pitch, const std::byte* src, int64_t src_pitch, int64_t width,
                 int64_t rows) override {
    inner_->copy_rows(dst, dst_pitch, src, src_pitch, width, rows);
  }
  void upload(std::byte* dst, const void* host, int64_t bytes) override { inner_->upload(dst, host, bytes); }
  void download(void* host, const std::byte* src, int64_t bytes) override { inner_->download(host, src, bytes); }
  void synchronize() override { inner_->synchronize(); }

  std::unique_ptr<backends::DeviceAttention> attention(int64_t tokens, int64_t q_heads, int64_t v_dim) override {
    struct Faulty : backends::DeviceAttention {
      std::unique_ptr<backends::DeviceAttention> inner;
      FaultyDevice* device;
      void clear() override { inner->clear(); }
      void store_output(DType dtype, std::byte* out, int64_t out_bytes) override {
        inner->store_output(dtype, out, out_bytes);
      }
      void attend(const backends::Queries& queries, const backends::KvBlock& block,
                  const backends::AttentionParams& params) override {
        if (device->calls_++ != device->nth_) return inner->attend(queries, block, params);
        backends::KvBlock changed = block;
        std::vector<backends::StoredRun> runs(block.runs.begin(), block.runs.end());
        std::vector<std::byte> k;
        if (device->fault_ == KernelFault::drop_last_key) {
          for (auto it = runs.rbegin(); it != runs.rend(); ++it)
            if (it->count > 0) {
              --it->count;
              break;
            }
          changed.runs = runs;
        } else {
          const auto* data = static_cast<const std::byte*>(block.k.data);
          k.assign(data, data + block.k.tokens * block.k.heads * block.k.dim * dtype_bytes(block.k.dtype));
          // The first key's row, every head, negated: flip the sign bit, the top bit of each
          // element's last byte (little endian).
          const int64_t eb = dtype_bytes(block.k.dtype), width = block.k.heads * block.k.dim;
          for (int64_t e = 0; e < width; ++e)
            k[static_cast<size_t>((runs.front().offset * width + e + 1) * eb - 1)] ^= std::byte{0x80};
          changed.k.data = k.data();
        }
        inner->attend(queries, changed, params);
      }
    };
    auto a = std::make_unique<Faulty>();
    a->inner = inner_->attention(tokens, q_heads, v_dim);
    a->device = this;
    return a;
  }

 private:
  std::unique_ptr<backends::Device> inner_;
  KernelFault fault_;
  int nth_;
  int calls_ = 0;
};

}  // namespace cptune::testing
