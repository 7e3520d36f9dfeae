#include "backends/exec/executor.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <random>
#include <tuple>

#include "backends/kernels/attention_cpu.h"
#include "backends/comm/comm.h"
#include "backends/exec/device.h"
#include "backends/exec/reference.h"
#include "backends/kernels/dtype_convert.h"
#include "backends/exec/tensor_gen.h"
#include "core/error.h"
#include "core/layout_json.h"

namespace cptune::backends {
namespace {

using Bytes = std::vector<std::byte>;

// A tensor [batch][tokens][heads][dim] of storage-dtype elements inside some device buffer.
struct Block {
  std::byte* data = nullptr;
  int64_t tokens = 0, heads = 0, dim = 0;
  int64_t row_bytes(int64_t eb) const { return heads * dim * eb; }
  std::byte* at(int64_t b, int64_t t, int64_t h, int64_t eb) const {
    return data + ((b * tokens + t) * heads + h) * dim * eb;
  }
  int64_t bytes(int64_t batch, int64_t eb) const { return batch * tokens * heads * dim * eb; }
};

// Copies `ntok` tokens x `nheads` heads of every sample from src to dst: one strided copy of
// ntok rows per sample.
void copy_rows(Device& device, const Block& src, int64_t src_tok, int64_t src_head, const Block& dst,
               int64_t dst_tok, int64_t dst_head, int64_t ntok, int64_t nheads, int64_t batch, int64_t eb) {
  const int64_t width = nheads * src.dim * eb;
  if (width == 0 || ntok == 0) return;
  for (int64_t b = 0; b < batch; ++b)
    device.copy_rows(dst.at(b, dst_tok, dst_head, eb), dst.row_bytes(eb), src.at(b, src_tok, src_head, eb),
                     src.row_bytes(eb), width, ntok);
}

// A rank's input piece as it lands in the attention-side shard: rows [src, src + n) of the
// owner's input go to rows [dst, dst + n) of the shard.
struct Placement {
  int64_t src = 0, dst = 0, n = 0;
};

// Where each of member u's input runs sits inside ring index r's shard.
std::vector<Placement> placements(const Layout& layout, const RankLayout& owner) {
  std::vector<Placement> out;
  int64_t src = 0;
  for (const TokenRun& piece : owner.input_runs) {
    int64_t chunk_offset = 0;
    bool found = false;
    for (const TokenRun& chunk : layout.shard_runs(owner.r)) {
      if (chunk.seq == piece.seq && chunk.begin <= piece.begin && piece.begin < chunk.begin + chunk.padded) {
        out.push_back({src, chunk_offset + piece.begin - chunk.begin, piece.padded});
        found = true;
        break;
      }
      chunk_offset += chunk.padded;
    }
    (void)found;
    assert(found && "every input piece lies inside its ring index's shard");
    src += piece.padded;
  }
  return out;
}

// Kernel runs for tokens stored in Layout order, every sample: padding rows form their own
// sequences (ids past the real ones) so real tokens never attend to them.
std::vector<StoredRun> kernel_runs(std::span<const TokenRun> runs, int64_t batch, int64_t nseq) {
  std::vector<StoredRun> out;
  int64_t tokens = 0;
  for (const TokenRun& run : runs) tokens += run.padded;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t offset = b * tokens;
    for (const TokenRun& run : runs) {
      const int32_t id = static_cast<int32_t>(2 * b * nseq + run.seq);
      if (run.count > 0) out.push_back({id, run.begin, run.count, offset});
      if (run.padded > run.count)
        out.push_back({static_cast<int32_t>(id + nseq), run.begin + run.count, run.padded - run.count, offset + run.count});
      offset += run.padded;
    }
  }
  return out;
}

// Lengths by kernel sequence id (kernel_runs): a sample's padding runs take their sequence's
// length, so block masks cut real and padding rows alike (padding is the last block).
std::vector<int64_t> kernel_lens(std::span<const int64_t> seq_lens, int64_t batch) {
  std::vector<int64_t> out;
  for (int64_t b = 0; b < batch; ++b)
    for (int copy = 0; copy < 2; ++copy) out.insert(out.end(), seq_lens.begin(), seq_lens.end());
  return out;
}

int64_t padded_tokens(std::span<const TokenRun> runs) {
  int64_t tokens = 0;
  for (const TokenRun& run : runs) tokens += run.padded;
  return tokens;
}

// One ring step as this rank runs it (Layout::ring_held_runs and its friends): the block held,
// the rows of it sent on, the rows received for the next step, whether the step computes.
struct RingStep {
  std::vector<StoredRun> held;     // kernel runs of the held block, its runs back to back
  int64_t held_tokens = 0;         // stored rows per sample, padding included
  std::vector<Placement> forward;  // held rows [src, src + n) go to send rows [dst, dst + n)
  int64_t forward_tokens = 0;      // 0: nothing is sent this step
  int64_t recv_tokens = 0;         // 0: nothing arrives this step
  bool packs = false;              // forwards less than it holds: the rows are packed first
  bool computes = true;
};

// The forwarded runs (a subset of the held ones, in their order) as rows of the held block.
std::vector<Placement> forward_rows(std::span<const TokenRun> held, std::span<const TokenRun> forward) {
  std::vector<Placement> out;
  int64_t src = 0, dst = 0;
  size_t next = 0;
  for (const TokenRun& run : held) {
    if (next < forward.size() && forward[next].seq == run.seq && forward[next].begin == run.begin) {
      out.push_back({src, dst, run.padded});
      dst += run.padded;
      ++next;
    }
    src += run.padded;
  }
  if (next != forward.size())
    throw Error("ring schedule: a forwarded K,V run is not among the runs held (layout bug)");
  return out;
}

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Bytes a rank exchanges with each member of its Ulysses group for one tensor set.
struct Exchange {
  std::vector<int64_t> send_bytes, recv_bytes;
  int64_t send_total = 0, recv_total = 0;
};

class RankExecution {
 public:
  RankExecution(const Layout& layout, Comm& world, Device& device, const ExecutorOptions& options);
  void iterate(PhaseTimer& timer);
  void start_phase(PhaseTimer& timer, Phase phase);
  RowCheck verify() const;  // this rank's real output rows against the reference
  std::vector<float> output_rows() const;  // my real output rows, [batch][my tokens][q heads][Dv]

 private:
  void join_groups();
  Exchange exchange_of(std::initializer_list<Tensor> tensors) const;
  void allocate_buffers();
  void make_inputs();
  void exchange_lengths();
  void scatter_qkv();
  void attend_local();
  void attend_ring();
  void attend_allgathered();
  void gather_out();
  void plan_ring();
  void pack_forward(const std::byte* held, const RingStep& step);
  void attend_block(const Block& kv, std::span<const StoredRun> runs);
  std::byte* q_shard() const { return L_.ulysses() > 1 ? q_attn_.data() : q_in_.data(); }
  std::byte* o_shard() const { return L_.ulysses() > 1 ? o_attn_.data() : o_out_.data(); }

  const Layout& L_;
  const AttentionShape& s_;
  Comm& world_;
  Device& device_;
  ExecutorOptions options_;
  const RankLayout& me_;
  Comm* ulysses_ = nullptr;  // the world itself when U == P; unused when U == 1
  Comm* ring_ = nullptr;     // the world itself when R == P; unused when R == 1
  std::unique_ptr<Comm> owned_ulysses_, owned_ring_;
  int64_t B_, D_, Dv_, eb_, nseq_;
  int64_t t_in_, t_shard_;
  AttentionParams params_;
  Exchange qkv_, out_;

  DeviceBuffer q_in_, kv_in_, o_out_;       // inputs [Q] and [K | V] of my tokens, all heads; output
  DeviceBuffer q_attn_, kv_attn_, o_attn_;  // after the all-to-all: my shard, my heads
  DeviceBuffer send_, recv_, kv_next_;      // exchange buffers
  DeviceBuffer kv_send_;                    // packed forwarded runs, when a ring step sends fewer than it holds
  DeviceBuffer lengths_send_, lengths_recv_;  // --metadata device: lengths in device memory
  std::vector<std::vector<Placement>> member_places_;  // per Ulysses member
  std::vector<StoredRun> q_runs_;
  std::vector<std::vector<StoredRun>> kv_runs_;  // per ring index: the K,V runs of its shard
  std::vector<int64_t> kernel_lens_;             // params_.seq_lens: length by kernel sequence id
  int64_t length_slots_ = 0;                     // run lengths per rank in the length exchange
  std::vector<RingStep> ring_steps_;             // rotating strategies with R > 1
  std::unique_ptr<DeviceAttention> attention_;
};

RankExecution::RankExecution(const Layout& layout, Comm& world, Device& device, const ExecutorOptions& options)
    : L_(layout),
      s_(layout.shape()),
      world_(world),
      device_(device),
      options_(options),
      me_(layout.rank(world.rank())),
      B_(s_.batch),
      D_(s_.head_dim),
      Dv_(s_.v_head_dim),
      eb_(layout.elem_bytes()),
      nseq_(static_cast<int64_t>(s_.seq_lens.size())),
      t_in_(me_.input_padded_tokens),
      t_shard_(layout.shard_padded_tokens(me_.r)) {
  if (world.size() != layout.world())
    throw Error("the layout is for world " + std::to_string(layout.world()) + " but " + std::to_string(world.size()) +
                " ranks joined");
  join_groups();
  params_.mask = s_.mask;
  params_.heads = HeadMap::of_rank(me_, s_);
  kernel_lens_ = kernel_lens(s_.seq_lens, B_);
  params_.seq_lens = kernel_lens_;
  // Zigzag holds two runs per sequence, a block placement up to one per block: every rank
  // reserves as many slots as the rank with the most runs needs.
  length_slots_ = 2 * nseq_;
  for (const RankLayout& rank : layout.ranks())
    length_slots_ = std::max(length_slots_, static_cast<int64_t>(rank.input_runs.size()));
  q_runs_ = kernel_runs(layout.shard_runs(me_.r), B_, nseq_);
  for (int64_t r = 0; r < layout.ring(); ++r) kv_runs_.push_back(kernel_runs(layout.shard_runs(r), B_, nseq_));
  if (rotates_kv(layout.strategy()) && layout.ring() > 1) plan_ring();
  for (int64_t u = 0; u < layout.ulysses(); ++u) member_places_.push_back(placements(layout, layout.at(u, me_.r)));
  qkv_ = exchange_of({Tensor::q, Tensor::k, Tensor::v});
  out_ = exchange_of({Tensor::o});
  allocate_buffers();
  attention_ = device.attention(B_ * t_shard_, me_.q_heads.count(), Dv_);
  make_inputs();
}

// Ulysses and ring groups. A group that spans the world is the world (its member order is the
// rank order), and a group of one is never used: only real sub-groups cost a split, which on
// NCCL is a new communicator.
void RankExecution::join_groups() {
  const int64_t U = L_.ulysses(), R = L_.ring();
  if (U == L_.world()) {
    ulysses_ = &world_;
  } else if (U > 1) {
    owned_ulysses_ = world_.split(static_cast<int>(me_.r), static_cast<int>(me_.u));
    ulysses_ = owned_ulysses_.get();
  }
  if (R == L_.world()) {
    ring_ = &world_;
  } else if (R > 1) {
    owned_ring_ = world_.split(static_cast<int>(me_.u), static_cast<int>(me_.r));
    ring_ = owned_ring_.get();
  }
}

// Per Ulysses member: bytes of `tensors` this rank sends and receives (Layout::exchange_elems
// knows each tensor's direction: Q, K, V go from token owners, O back to them).
Exchange RankExecution::exchange_of(std::initializer_list<Tensor> tensors) const {
  const int64_t U = L_.ulysses();
  Exchange x;
  for (int64_t u = 0; u < U; ++u) {
    const int64_t peer = L_.global_rank(u, me_.r);
    int64_t send = 0, recv = 0;
    for (Tensor t : tensors) {
      send += L_.exchange_elems(t, me_.rank, peer) * eb_;
      recv += L_.exchange_elems(t, peer, me_.rank) * eb_;
    }
    x.send_bytes.push_back(send);
    x.recv_bytes.push_back(recv);
    x.send_total += send;
    x.recv_total += recv;
  }
  return x;
}

void RankExecution::allocate_buffers() {
  const int64_t hq = me_.q_heads.count(), hkv = me_.kv_heads.count();
  q_in_ = device_.allocate(B_ * t_in_ * s_.q_heads * D_ * eb_);
  kv_in_ = device_.allocate(L_.kv_block_bytes(t_in_, s_.kv_heads));
  o_out_ = device_.allocate(B_ * t_in_ * s_.q_heads * Dv_ * eb_);
  int64_t max_shard = 0;
  for (int64_t r = 0; r < L_.ring(); ++r) max_shard = std::max(max_shard, L_.shard_padded_tokens(r));
  const int64_t shard_kv_bytes = L_.kv_block_bytes(t_shard_, hkv);
  int64_t kv_attn_bytes = L_.ulysses() > 1 ? shard_kv_bytes : 0;
  if (L_.ulysses() > 1) {
    q_attn_ = device_.allocate(B_ * t_shard_ * hq * D_ * eb_);
    o_attn_ = device_.allocate(B_ * t_shard_ * hq * Dv_ * eb_);
  }
  if (rotates_kv(L_.strategy()) && L_.ring() > 1) {
    // Both rotating buffers must hold the largest shard: uneven shards pass through each.
    kv_next_ = device_.allocate(L_.kv_block_bytes(max_shard, hkv));
    kv_attn_bytes = std::max(kv_attn_bytes, kv_next_.bytes());
    int64_t packed = 0;
    for (const RingStep& step : ring_steps_)
      if (step.packs) packed = std::max(packed, step.forward_tokens);
    if (packed > 0) kv_send_ = device_.allocate(L_.kv_block_bytes(packed, hkv));
  }
  if (kv_attn_bytes > 0) kv_attn_ = device_.allocate(kv_attn_bytes);
  int64_t gathered = 0;  // allgather-kv receives every ring index's shard
  if (L_.strategy() == Strategy::allgather_kv && L_.ring() > 1)
    for (int64_t r = 0; r < L_.ring(); ++r) gathered += L_.kv_block_bytes(L_.shard_padded_tokens(r), hkv);
  send_ = device_.allocate(std::max(qkv_.send_total, out_.send_total));
  recv_ = device_.allocate(std::max({qkv_.recv_total, out_.recv_total, gathered}));
  if (options_.metadata == MetadataChannel::device) {
    const int64_t bytes = length_slots_ * static_cast<int64_t>(sizeof(int64_t));
    lengths_send_ = device_.allocate(bytes);
    lengths_recv_ = device_.allocate(bytes * L_.ulysses());
  }
}

void RankExecution::make_inputs() {
  const HeadRange all_q{0, s_.q_heads}, all_kv{0, s_.kv_heads};
  Bytes stored;
  auto make = [&](Tensor t, HeadRange heads, int64_t dim, std::byte* out) {
    std::vector<float> values(static_cast<size_t>(B_ * t_in_ * heads.count() * dim));
    fill_input(values, options_.seed, t, me_.input_runs, B_, heads, dim, options_.inputs);
    stored.resize(values.size() * static_cast<size_t>(eb_));
    from_float(values.data(), s_.dtype, stored.data(), static_cast<int64_t>(values.size()));
    device_.upload(out, stored.data(), static_cast<int64_t>(stored.size()));
  };
  make(Tensor::q, all_q, D_, q_in_.data());
  make(Tensor::k, all_kv, D_, kv_in_.data());
  make(Tensor::v, all_kv, Dv_, kv_in_.data() + B_ * t_in_ * s_.kv_heads * D_ * eb_);
  device_.synchronize();  // `stored` is reused and freed: the uploads must have read it
}

// UAA's metadata step: the Ulysses group learns every member's token count and checks it
// against the layout each rank computed on its own. On the cpu channel (UAA*) the lengths
// never touch the device; on the device channel they go through device memory and the Comm,
// and the copy back to the host waits for the stream, as in peers that gather a tensor.
void RankExecution::exchange_lengths() {
  std::vector<int64_t> mine;
  for (const TokenRun& run : me_.input_runs) mine.push_back(run.padded);
  mine.resize(static_cast<size_t>(length_slots_), -1);
  const auto bytes = static_cast<int64_t>(mine.size() * sizeof(int64_t));
  std::vector<int64_t> all(mine.size() * static_cast<size_t>(L_.ulysses()));
  if (options_.metadata == MetadataChannel::device) {
    device_.upload(lengths_send_.data(), mine.data(), bytes);
    const std::vector<int64_t> sizes(static_cast<size_t>(L_.ulysses()), bytes);
    ulysses_->allgatherv(lengths_send_.data(), bytes, lengths_recv_.data(), sizes);
    device_.download(all.data(), lengths_recv_.data(), bytes * L_.ulysses());
  } else {
    ulysses_->allgather_host(mine.data(), bytes, all.data());
  }
  for (int64_t u = 0; u < L_.ulysses(); ++u) {
    int64_t total = 0;
    for (size_t i = 0; i < mine.size(); ++i) total += std::max<int64_t>(0, all[u * mine.size() + i]);
    if (total != L_.at(u, me_.r).input_padded_tokens)
      throw Error("Ulysses member " + std::to_string(u) + " holds " + std::to_string(total) +
                  " tokens but this rank's layout expects " + std::to_string(L_.at(u, me_.r).input_padded_tokens));
  }
}

void RankExecution::scatter_qkv() {
  const int64_t U = L_.ulysses();
  const Block q_in{q_in_.data(), t_in_, s_.q_heads, D_};
  const Block k_in{kv_in_.data(), t_in_, s_.kv_heads, D_};
  const Block v_in{k_in.data + k_in.bytes(B_, eb_), t_in_, s_.kv_heads, Dv_};
  // Pack: member u gets [Q: my tokens x its q heads][K: x its kv heads][V: ...].
  std::byte* out = send_.data();
  for (int64_t u = 0; u < U; ++u) {
    const RankLayout& peer = L_.at(u, me_.r);
    const Block q{out, t_in_, peer.q_heads.count(), D_};
    const Block k{q.data + q.bytes(B_, eb_), t_in_, peer.kv_heads.count(), D_};
    const Block v{k.data + k.bytes(B_, eb_), t_in_, peer.kv_heads.count(), Dv_};
    copy_rows(device_, q_in, 0, peer.q_heads.begin, q, 0, 0, t_in_, q.heads, B_, eb_);
    copy_rows(device_, k_in, 0, peer.kv_heads.begin, k, 0, 0, t_in_, k.heads, B_, eb_);
    copy_rows(device_, v_in, 0, peer.kv_heads.begin, v, 0, 0, t_in_, v.heads, B_, eb_);
    out = v.data + v.bytes(B_, eb_);
  }
  ulysses_->alltoallv(send_.data(), qkv_.send_bytes, recv_.data(), qkv_.recv_bytes);
  // Unpack: member u's tokens land at their places in my shard, my heads.
  const int64_t hq = me_.q_heads.count(), hkv = me_.kv_heads.count();
  const Block q_attn{q_attn_.data(), t_shard_, hq, D_};
  const Block k_attn{kv_attn_.data(), t_shard_, hkv, D_};
  const Block v_attn{k_attn.data + k_attn.bytes(B_, eb_), t_shard_, hkv, Dv_};
  std::byte* in = recv_.data();
  for (int64_t u = 0; u < U; ++u) {
    const int64_t tokens = L_.at(u, me_.r).input_padded_tokens;
    const Block q{in, tokens, hq, D_};
    const Block k{q.data + q.bytes(B_, eb_), tokens, hkv, D_};
    const Block v{k.data + k.bytes(B_, eb_), tokens, hkv, Dv_};
    for (const Placement& p : member_places_[u]) {
      copy_rows(device_, q, p.src, 0, q_attn, p.dst, 0, p.n, hq, B_, eb_);
      copy_rows(device_, k, p.src, 0, k_attn, p.dst, 0, p.n, hkv, B_, eb_);
      copy_rows(device_, v, p.src, 0, v_attn, p.dst, 0, p.n, hkv, B_, eb_);
    }
    in = v.data + v.bytes(B_, eb_);
  }
}

// Attention of my shard's queries against a K,V block of kv.tokens stored rows per sample, held
// as [K: batch x tokens x my kv heads x D][V: ... x Dv], its runs (kernel_runs) given.
void RankExecution::attend_block(const Block& kv, std::span<const StoredRun> runs) {
  const int64_t hq = me_.q_heads.count(), hkv = me_.kv_heads.count();
  const Queries queries{{q_shard(), s_.dtype, B_ * t_shard_, hq, D_}, q_runs_};
  const KvBlock block{{kv.data, s_.dtype, B_ * kv.tokens, hkv, D_},
                      {kv.data + B_ * kv.tokens * hkv * D_ * eb_, s_.dtype, B_ * kv.tokens, hkv, Dv_}, runs};
  attention_->attend(queries, block, params_);
}

void RankExecution::attend_local() {
  std::byte* kv = L_.ulysses() > 1 ? kv_attn_.data() : kv_in_.data();
  attend_block({kv, t_shard_, me_.kv_heads.count(), D_}, kv_runs_[static_cast<size_t>(me_.r)]);
}

// The ring schedule of this rank from the Layout (under a block mask a step may forward only the
// runs a later receiver needs, and skip its attention). What my predecessor sends at a step must
// be exactly what I hold at the next, or the messages would not match: checked here.
void RankExecution::plan_ring() {
  const int64_t R = L_.ring(), prev = (me_.r + R - 1) % R;
  for (int64_t step = 0; step < R; ++step) {
    RingStep st;
    const std::span<const TokenRun> held = L_.ring_held_runs(me_.r, step);
    st.held = kernel_runs(held, B_, nseq_);
    st.held_tokens = padded_tokens(held);
    st.computes = L_.ring_step_computes(me_.r, step);
    if (step + 1 < R) {
      const std::span<const TokenRun> forward = L_.ring_forward_runs(me_.r, step);
      st.forward = forward_rows(held, forward);
      st.forward_tokens = L_.ring_forward_tokens(me_.r, step);
      st.packs = st.forward_tokens != st.held_tokens;
      st.recv_tokens = padded_tokens(L_.ring_held_runs(me_.r, step + 1));
      if (L_.ring_forward_tokens(prev, step) != st.recv_tokens)
        throw Error("ring schedule: ring index " + std::to_string(prev) + " forwards " +
                    std::to_string(L_.ring_forward_tokens(prev, step)) + " tokens at step " +
                    std::to_string(step) + " but ring index " + std::to_string(me_.r) + " holds " +
                    std::to_string(st.recv_tokens) + " at the next (layout bug)");
    }
    ring_steps_.push_back(std::move(st));
  }
}

// The forwarded rows of the held block, back to back in kv_send_: [K: batch x forwarded x D][V].
void RankExecution::pack_forward(const std::byte* held, const RingStep& step) {
  const int64_t hkv = me_.kv_heads.count();
  const Block k_held{const_cast<std::byte*>(held), step.held_tokens, hkv, D_};
  const Block v_held{k_held.data + k_held.bytes(B_, eb_), step.held_tokens, hkv, Dv_};
  const Block k_send{kv_send_.data(), step.forward_tokens, hkv, D_};
  const Block v_send{k_send.data + k_send.bytes(B_, eb_), step.forward_tokens, hkv, Dv_};
  for (const Placement& p : step.forward) {
    copy_rows(device_, k_held, p.src, 0, k_send, p.dst, 0, p.n, hkv, B_, eb_);
    copy_rows(device_, v_held, p.src, 0, v_send, p.dst, 0, p.n, hkv, B_, eb_);
  }
}

// Ring: at step k compute against the shard of ring index r - k while that shard travels on
// to r + 1 and the next arrives from r - 1 (Gloo's transport thread or NCCL's ring stream
// moves the bytes).
void RankExecution::attend_ring() {
  const int64_t R = L_.ring(), hkv = me_.kv_heads.count();
  const int next = static_cast<int>((me_.r + 1) % R), prev = static_cast<int>((me_.r + R - 1) % R);
  // Without Ulysses the first block is my input, which must survive the iteration: it is only
  // read, and the two rotating buffers take over from the first step on.
  std::byte* current = L_.ulysses() > 1 ? kv_attn_.data() : kv_in_.data();
  std::byte* incoming = kv_next_.data();
  std::byte* spare = L_.ulysses() > 1 ? nullptr : kv_attn_.data();
  const int64_t token_bytes = L_.kv_block_bytes(1, hkv);
  for (int64_t step = 0; step < R; ++step) {
    const RingStep& st = ring_steps_[static_cast<size_t>(step)];
    const bool last = step + 1 == R;
    std::unique_ptr<Request> send, recv;
    // Sender and receiver agree on every size (plan_ring), so both skip an empty message alike.
    if (!last && st.forward_tokens > 0) {
      if (st.packs) pack_forward(current, st);
      send = ring_->isend(st.packs ? kv_send_.data() : current, st.forward_tokens * token_bytes, next,
                          static_cast<int>(step));
    }
    if (!last && st.recv_tokens > 0)
      recv = ring_->irecv(incoming, st.recv_tokens * token_bytes, prev, static_cast<int>(step));
    if (st.computes) attend_block({current, st.held_tokens, hkv, D_}, st.held);
    if (!last) {
      if (send) send->wait();
      if (recv) recv->wait();
      std::swap(current, incoming);
      if (spare && incoming == kv_in_.data()) std::swap(incoming, spare);
    }
  }
}

void RankExecution::attend_allgathered() {
  const int64_t R = L_.ring(), hkv = me_.kv_heads.count();
  const int64_t token_bytes = L_.kv_block_bytes(1, hkv);
  std::vector<int64_t> sizes(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) sizes[r] = L_.shard_padded_tokens(r) * token_bytes;
  ring_->allgatherv(kv_in_.data(), sizes[me_.r], recv_.data(), sizes);
  std::byte* block = recv_.data();
  for (int64_t r = 0; r < R; ++r) {
    attend_block({block, L_.shard_padded_tokens(r), hkv, D_}, kv_runs_[static_cast<size_t>(r)]);
    block += sizes[r];
  }
}

// With U == 1 attention stored O straight into o_out_ (same tokens, all heads): nothing moves.
void RankExecution::gather_out() {
  const int64_t U = L_.ulysses(), hq = me_.q_heads.count();
  if (U == 1) return;
  const Block o_attn{o_attn_.data(), t_shard_, hq, Dv_};
  const Block o_out{o_out_.data(), t_in_, s_.q_heads, Dv_};
  std::byte* out = send_.data();
  for (int64_t u = 0; u < U; ++u) {  // member u gets its tokens, my heads
    const Block seg{out, L_.at(u, me_.r).input_padded_tokens, hq, Dv_};
    for (const Placement& p : member_places_[u])
      copy_rows(device_, o_attn, p.dst, 0, seg, p.src, 0, p.n, hq, B_, eb_);
    out += seg.bytes(B_, eb_);
  }
  ulysses_->alltoallv(send_.data(), out_.send_bytes, recv_.data(), out_.recv_bytes);
  std::byte* in = recv_.data();
  for (int64_t u = 0; u < U; ++u) {  // my tokens, member u's heads
    const RankLayout& peer = L_.at(u, me_.r);
    const Block seg{in, t_in_, peer.q_heads.count(), Dv_};
    copy_rows(device_, seg, 0, 0, o_out, 0, peer.q_heads.begin, t_in_, seg.heads, B_, eb_);
    in += seg.bytes(B_, eb_);
  }
}

void RankExecution::start_phase(PhaseTimer& timer, Phase phase) {
  if (options_.phase_barriers) world_.barrier();
  timer.start(phase);
}

// Every phase ends with device_.synchronize(): on a GPU the host timer then measures the work,
// not the time to enqueue it.
void RankExecution::iterate(PhaseTimer& timer) {
  const Strategy st = L_.strategy();
  const bool gathers = gathers_lengths(st) && L_.ulysses() > 1;
  attention_->clear();
  device_.synchronize();
  timer.begin_iteration();
  if (gathers) {
    start_phase(timer, Phase::gather);
    exchange_lengths();
    device_.synchronize();
    timer.stop(Phase::gather);
  }
  if (L_.ulysses() > 1) {
    start_phase(timer, Phase::qkv);
    scatter_qkv();
    device_.synchronize();
    timer.stop(Phase::qkv);
  }
  if (st == Strategy::allgather_kv && L_.ring() > 1) {
    start_phase(timer, Phase::allgather);
    attend_allgathered();
    device_.synchronize();
    timer.stop(Phase::allgather);
  } else {
    start_phase(timer, Phase::attention);
    if (rotates_kv(st) && L_.ring() > 1)
      attend_ring();
    else
      attend_local();
    device_.synchronize();
    timer.stop(Phase::attention);
  }
  start_phase(timer, Phase::o);
  const int64_t o_bytes = B_ * t_shard_ * me_.q_heads.count() * Dv_ * eb_;
  attention_->store_output(s_.dtype, o_shard(), o_bytes);
  gather_out();
  device_.synchronize();
  timer.stop(Phase::o);
  timer.end_iteration(world_);
}

// Visible (query, key, head) triples of the whole shape: the reference's work for every row.
int64_t visible_triples(const AttentionShape& s) {
  int64_t pairs = 0;
  for (int64_t len : s.seq_lens) pairs += mask_pairs(s.mask, len, 0, len, 0, len);
  return pairs * s.batch * s.q_heads;
}

// My real output rows against the independent reference (reference.h), every row or a seeded
// sample (ExecutorOptions::verify_rows); O is downloaded from the device whatever it is.
RowCheck RankExecution::verify() const {
  struct Row {
    RowId id;
    int64_t at;  // element offset of the row in o_out_
  };
  const int64_t hq = s_.q_heads, group = s_.q_heads / s_.kv_heads;
  int64_t mine = 0;
  for (const TokenRun& run : me_.input_runs) mine += run.count;
  const int64_t my_rows = B_ * mine * hq, all_rows = B_ * s_.total_tokens() * hq;
  int64_t budget = options_.verify_rows;
  if (budget == 0) budget = visible_triples(s_) <= kVerifyEveryRowPairs ? all_rows : kVerifySampledRows;
  std::vector<Row> rows;
  auto add = [&](int64_t b, int64_t run_offset, const TokenRun& run, int64_t t, int64_t h) {
    rows.push_back({{b, run.seq, run.begin + t, h}, ((b * t_in_ + run_offset + t) * hq + h) * Dv_});
  };
  if (budget >= all_rows) {
    for (int64_t b = 0; b < B_; ++b) {
      int64_t offset = 0;
      for (const TokenRun& run : me_.input_runs) {
        for (int64_t t = 0; t < run.count; ++t)  // real rows only; padding rows are not output
          for (int64_t h = 0; h < hq; ++h) add(b, offset, run, t, h);
        offset += run.padded;
      }
    }
  } else if (my_rows > 0) {
    // My share of the sample: the first and last token of every run I hold (where shard
    // boundaries go wrong), then uniform picks among my rows.
    std::mt19937_64 rng(options_.seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(me_.rank));
    auto pick = [&](int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(rng); };
    for (int64_t b = 0; b < B_; ++b) {
      int64_t offset = 0;
      for (const TokenRun& run : me_.input_runs) {
        if (run.count > 0) {
          add(b, offset, run, 0, pick(hq));
          add(b, offset, run, run.count - 1, pick(hq));
        }
        offset += run.padded;
      }
    }
    const int64_t quota = (budget * my_rows + all_rows - 1) / all_rows;
    for (int64_t i = static_cast<int64_t>(rows.size()); i < quota; ++i) {
      int64_t token = pick(B_ * mine), offset = 0;
      const int64_t b = token / mine;
      token %= mine;
      for (const TokenRun& run : me_.input_runs) {
        if (token < run.count) {
          add(b, offset, run, token, pick(hq));
          break;
        }
        token -= run.count;
        offset += run.padded;
      }
    }
  }
  // Rows of one (sample, KV head) together: the reference generates their K,V once.
  std::sort(rows.begin(), rows.end(), [&](const Row& x, const Row& y) {
    return std::tuple(x.id.sample, x.id.head / group, x.at) < std::tuple(y.id.sample, y.id.head / group, y.at);
  });

  Bytes out(static_cast<size_t>(o_out_.bytes()));
  device_.download(out.data(), o_out_.data(), o_out_.bytes());
  std::vector<float> got(static_cast<size_t>(B_ * t_in_ * hq * Dv_));
  to_float(out.data(), s_.dtype, got.data(), static_cast<int64_t>(got.size()));
  Reference reference(s_, options_.seed, options_.inputs, device_.rounds_probabilities());
  std::vector<double> want(static_cast<size_t>(Dv_)), tol(want.size());
  RowCheck check;
  for (const Row& row : rows) {
    reference.row(row.id, want, tol);
    for (int64_t d = 0; d < Dv_; ++d)
      check.add(std::fabs(double(got[static_cast<size_t>(row.at + d)]) - want[d]), tol[d]);
    ++check.rows;
  }
  return check;
}

std::vector<float> RankExecution::output_rows() const {
  Bytes out(static_cast<size_t>(o_out_.bytes()));
  device_.download(out.data(), o_out_.data(), o_out_.bytes());
  std::vector<float> all(static_cast<size_t>(B_ * t_in_ * s_.q_heads * Dv_)), rows;
  to_float(out.data(), s_.dtype, all.data(), static_cast<int64_t>(all.size()));
  const int64_t row = s_.q_heads * Dv_;
  for (int64_t b = 0; b < B_; ++b) {
    int64_t offset = b * t_in_;
    for (const TokenRun& run : me_.input_runs) {
      rows.insert(rows.end(), all.begin() + offset * row, all.begin() + (offset + run.count) * row);
      offset += run.padded;
    }
  }
  return rows;
}

// Every rank's real output rows, placed in the whole O by the layout's token runs.
std::vector<float> gather_output(const Layout& layout, const RankExecution& run, Comm& world) {
  const std::vector<float> mine = run.output_rows();
  const AttentionShape& s = layout.shape();
  const int64_t row = s.q_heads * s.v_head_dim;
  std::vector<int64_t> sizes(static_cast<size_t>(world.size()));
  for (int p = 0; p < world.size(); ++p) {
    int64_t tokens = 0;
    for (const TokenRun& r : layout.rank(p).input_runs) tokens += r.count;
    sizes[static_cast<size_t>(p)] = s.batch * tokens * row * static_cast<int64_t>(sizeof(float));
  }
  std::vector<float> gathered(static_cast<size_t>(s.batch * s.total_tokens() * row));
  world.allgatherv(mine.data(), static_cast<int64_t>(mine.size() * sizeof(float)), gathered.data(), sizes);
  std::vector<int64_t> offsets(s.seq_lens.size(), 0);
  for (size_t i = 1; i < offsets.size(); ++i) offsets[i] = offsets[i - 1] + s.seq_lens[i - 1];
  std::vector<float> whole(gathered.size());
  size_t from = 0;
  for (int p = 0; p < world.size(); ++p)
    for (int64_t b = 0; b < s.batch; ++b)
      for (const TokenRun& r : layout.rank(p).input_runs) {
        const int64_t token = b * s.total_tokens() + offsets[static_cast<size_t>(r.seq)] + r.begin;
        std::copy_n(gathered.begin() + std::ptrdiff_t(from), r.count * row, whole.begin() + token * row);
        from += static_cast<size_t>(r.count * row);
      }
  return whole;
}

void check_same_arguments(const Layout& layout, const ExecutorOptions& options, Comm& world) {
  const std::string text = to_json(layout.shape()).dump() + to_string(layout.choice()) + "/" +
                           std::to_string(layout.cluster().ranks_per_node) + " " + std::to_string(options.warmups) + " " + std::to_string(options.iterations) + " " +
                           std::to_string(options.verify) + " " + std::to_string(options.seed) + " " +
                           std::to_string(static_cast<int>(options.metadata)) + " " + std::to_string(options.phase_barriers) + " " +
                           world.backend();
  const uint64_t mine = fnv1a(text);
  std::vector<uint64_t> all(static_cast<size_t>(world.size()));
  world.allgather_host(&mine, sizeof(mine), all.data());
  for (int r = 0; r < world.size(); ++r)
    if (all[r] != all[0])
      throw Error("rank " + std::to_string(r) + " was started with different arguments than rank 0 (argument hash " +
                  std::to_string(all[r]) + " vs " + std::to_string(all[0]) + "); start every rank with the same command");
}

}  // namespace

RunResult execute(const Layout& layout, Comm& world, const ExecutorOptions& options) {
  return execute_interleaved(std::span<const Layout>(&layout, 1), world, options).front();
}

std::vector<RunResult> execute_interleaved(std::span<const Layout> layouts, Comm& world, const ExecutorOptions& options) {
  if (options.iterations < 1) throw Error("iterations " + std::to_string(options.iterations) + " must be at least 1");
  if (options.warmups < 0) throw Error("warm-ups " + std::to_string(options.warmups) + " must not be negative");
  std::unique_ptr<Device> host;
  if (options.device == nullptr) {
    if (world.backend() != "gloo")
      throw Error("the executor needs the device of a '" + world.backend() +
                  "' world (ExecutorOptions::device); only a Gloo world runs on the host");
    host = make_host_device();
  }
  Device* const device = options.device ? options.device : host.get();
  std::vector<std::unique_ptr<RankExecution>> runs;
  std::vector<PhaseTimer> timers;
  for (const Layout& layout : layouts) {
    check_same_arguments(layout, options, world);
    runs.push_back(std::make_unique<RankExecution>(layout, world, *device, options));
    timers.emplace_back();
  }
  const size_t n = runs.size();
  PhaseTimer warm;
  const int rounds = options.warmups + options.iterations;
  for (int i = 0; i < options.warmups; ++i) {
    for (auto& run : runs) run->iterate(warm);
    if (options.on_round) options.on_round(i + 1, rounds);
  }
  for (int i = 0; i < options.iterations; ++i) {
    for (size_t j = 0; j < n; ++j) {
      const size_t k = (j + static_cast<size_t>(i)) % n;
      runs[k]->iterate(timers[k]);
    }
    if (options.on_round) options.on_round(options.warmups + i + 1, rounds);
  }

  std::vector<RunResult> results(n);
  for (size_t k = 0; k < n; ++k) {
    RunResult& result = results[k];
    result.phases = timers[k].phase_stats();
    result.time = timers[k].total();
    result.samples = timers[k].totals();
    result.iterations = options.iterations;
    if (options.verify) {
      const RowCheck mine = runs[k]->verify();
      const double sent[4] = {mine.max_abs_err, mine.max_tolerance, mine.worst_ratio, double(mine.rows)};
      std::vector<double> all(4 * static_cast<size_t>(world.size()));
      world.allgather_host(sent, sizeof(sent), all.data());
      RowCheck total;
      for (size_t r = 0; r < all.size(); r += 4)
        total.merge({all[r], all[r + 1], all[r + 2], static_cast<int64_t>(all[r + 3])});
      result.max_abs_err = total.max_abs_err;
      result.tolerance = total.max_tolerance;
      result.worst_ratio = total.worst_ratio;
      result.verified_rows = total.rows;
    }
    if (options.collect_output) result.output = gather_output(layouts[k], *runs[k], world);
  }
  return results;
}

}  // namespace cptune::backends
