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
  int64_t ring_sent_bytes = 0;  // bytes this rank's isend calls have sent (counted with any plan)
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
    plan_->ring_sent_bytes += bytes;
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
// of its block (any device: runs are host metadata), negates its first key (a copy of K made
// on the host: the host device only), or, under a block mask, misses one block: the diagonal
// cell of its first query's block is taken as EMPTY (any device). Backward: the `nth`
// attend_backward() call adds nothing (one block's dQ, dK, dV contribution lost), or adds its
// attend_backward() call runs twice (a contribution counted twice).
enum class KernelFault { drop_last_key, perturb_key, drop_block, skip_backward_block, double_backward_block };

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
  void zero(std::byte* data, int64_t bytes) override { inner_->zero(data, bytes); }
  void add_floats(std::byte* dst, const std::byte* src, int64_t elems) override { inner_->add_floats(dst, src, elems); }
  void add_stored(std::byte* dst, const std::byte* src, DType dtype, int64_t elems) override {
    inner_->add_stored(dst, src, dtype, elems);
  }
  void store_floats(const std::byte* src, int64_t elems, DType dtype, std::byte* out) override {
    inner_->store_floats(src, elems, dtype, out);
  }

  std::unique_ptr<backends::DeviceAttention> attention(int64_t tokens, int64_t q_heads, int64_t v_dim) override {
    struct Faulty : backends::DeviceAttention {
      std::unique_ptr<backends::DeviceAttention> inner;
      FaultyDevice* device;
      void clear() override { inner->clear(); }
      void store_output(DType dtype, std::byte* out, int64_t out_bytes) override {
        inner->store_output(dtype, out, out_bytes);
      }
      void begin_backward(const backends::TensorView& d_out, std::span<const backends::StoredRun> runs,
                          int64_t q_dim) override {
        inner->begin_backward(d_out, runs, q_dim);
      }
      void attend_backward(const backends::Queries& queries, const backends::KvBlock& block,
                           const backends::AttentionParams& params, backends::KvGrads dkv) override {
        const bool hit = device->backward_calls_++ == device->nth_;
        if (hit && device->fault_ == KernelFault::skip_backward_block) return;
        inner->attend_backward(queries, block, params, dkv);
        if (hit && device->fault_ == KernelFault::double_backward_block) inner->attend_backward(queries, block, params, dkv);
      }
      void store_grad_q(DType dtype, std::byte* out, int64_t out_bytes) override {
        inner->store_grad_q(dtype, out, out_bytes);
      }
      void attend(const backends::Queries& queries, const backends::KvBlock& block,
                  const backends::AttentionParams& params) override {
        if (device->calls_++ != device->nth_) return inner->attend(queries, block, params);
        if (device->fault_ == KernelFault::drop_block) return attend_missing_block(queries, block, params);
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
      void attend_missing_block(const backends::Queries& queries, const backends::KvBlock& block,
                                const backends::AttentionParams& params) {
        backends::AttentionParams changed = params;
        const auto first = std::find_if(queries.runs.begin(), queries.runs.end(),
                                        [](const backends::StoredRun& r) { return r.count > 0; });
        if (params.mask.kind == MaskKind::blocks && first != queries.runs.end()) {
          const BlockTable& table = *params.mask.blocks;
          const int64_t qb = block_of(backends::seq_len_of(params, first->seq), table.n(), first->begin);
          std::vector<BlockKind> cells(table.cells().begin(), table.cells().end());
          cells[static_cast<size_t>(qb * table.n() + qb)] = BlockKind::empty;
          changed.mask = block_mask(BlockTable(table.n(), std::move(cells)));
        }
        inner->attend(queries, block, changed);
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
  int backward_calls_ = 0;
};

}  // namespace cptune::testing
