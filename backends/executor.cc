#include "backends/executor.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>

#include "backends/attention_cpu.h"
#include "backends/comm.h"
#include "backends/dtype_convert.h"
#include "backends/tensor_gen.h"
#include "core/error.h"
#include "core/layout_json.h"

namespace cptune::backends {
namespace {

using Bytes = std::vector<std::byte>;

// A tensor [batch][tokens][heads][dim] of storage-dtype elements inside some byte buffer.
struct Block {
  std::byte* data = nullptr;
  int64_t tokens = 0, heads = 0, dim = 0;
  int64_t row_bytes(int64_t eb) const { return heads * dim * eb; }
  std::byte* at(int64_t b, int64_t t, int64_t h, int64_t eb) const {
    return data + ((b * tokens + t) * heads + h) * dim * eb;
  }
  int64_t bytes(int64_t batch, int64_t eb) const { return batch * tokens * heads * dim * eb; }
};

// Copies `ntok` tokens x `nheads` heads of every sample from src to dst.
void copy_rows(const Block& src, int64_t src_tok, int64_t src_head, const Block& dst, int64_t dst_tok,
               int64_t dst_head, int64_t ntok, int64_t nheads, int64_t batch, int64_t eb) {
  const size_t n = static_cast<size_t>(nheads * src.dim * eb);
  if (n == 0) return;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < ntok; ++t)
      std::memcpy(dst.at(b, dst_tok + t, dst_head, eb), src.at(b, src_tok + t, src_head, eb), n);
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

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

enum Phase : size_t { kMeta, kQkv, kAttention, kAllgather, kOut, kPhases };

class RankExecution {
 public:
  RankExecution(const Layout& layout, Comm& world, const ExecutorOptions& options);
  void iterate(PhaseTimer& timer);
  double verify() const;  // max |O - O_ref| over this rank's real output rows

 private:
  void make_inputs();
  void exchange_lengths();
  void scatter_qkv();
  void attend_local();
  void attend_ring();
  void attend_allgathered();
  void gather_out();
  void attend_block(const Block& kv, int64_t ring_index);

  const Layout& L_;
  const AttentionShape& s_;
  Comm& world_;
  ExecutorOptions options_;
  const RankLayout& me_;
  std::unique_ptr<Comm> ulysses_, ring_;
  int64_t B_, D_, Dv_, eb_, nseq_;
  int64_t t_in_, t_shard_;
  AttentionParams params_;

  Bytes q_in_, kv_in_, o_out_;       // inputs [Q] and [K | V] of my tokens, all heads; output
  Bytes q_attn_, kv_attn_, o_attn_;  // after the all-to-all: my shard, my heads
  Bytes send_, recv_, kv_next_;      // exchange buffers
  std::vector<std::vector<Placement>> member_places_;  // per Ulysses member
  std::vector<StoredRun> q_runs_;
  AttentionState state_;
};

RankExecution::RankExecution(const Layout& layout, Comm& world, const ExecutorOptions& options)
    : L_(layout),
      s_(layout.shape()),
      world_(world),
      options_(options),
      me_(layout.rank(world.rank())),
      B_(s_.batch),
      D_(s_.head_dim),
      Dv_(s_.v_head_dim),
      eb_(layout.elem_bytes()),
      nseq_(static_cast<int64_t>(s_.seq_lens.size())),
      t_in_(me_.input_padded_tokens),
      t_shard_(layout.shard_padded_tokens(me_.r)),
      state_(B_ * t_shard_, me_.q_heads.count(), Dv_) {
  if (world.size() != layout.world())
    throw Error("the layout is for world " + std::to_string(layout.world()) + " but " + std::to_string(world.size()) +
                " ranks joined");
  ulysses_ = world.split(static_cast<int>(me_.r), static_cast<int>(me_.u));
  ring_ = world.split(static_cast<int>(me_.u), static_cast<int>(me_.r));
  params_.mask = s_.mask;
  params_.heads = HeadMap::of_rank(me_, s_);
  q_runs_ = kernel_runs(layout.shard_runs(me_.r), B_, nseq_);
  for (int64_t u = 0; u < layout.ulysses(); ++u) member_places_.push_back(placements(layout, layout.at(u, me_.r)));
  make_inputs();
}

void RankExecution::make_inputs() {
  const HeadRange all_q{0, s_.q_heads}, all_kv{0, s_.kv_heads};
  auto make = [&](Tensor t, HeadRange heads, int64_t dim, std::byte* out) {
    std::vector<float> values(static_cast<size_t>(B_ * t_in_ * heads.count() * dim));
    fill_input(values, options_.seed, t, me_.input_runs, B_, heads, dim);
    from_float(values.data(), s_.dtype, out, static_cast<int64_t>(values.size()));
  };
  const int64_t k_bytes = B_ * t_in_ * s_.kv_heads * D_ * eb_;
  q_in_.resize(static_cast<size_t>(B_ * t_in_ * s_.q_heads * D_ * eb_));
  kv_in_.resize(static_cast<size_t>(k_bytes + B_ * t_in_ * s_.kv_heads * Dv_ * eb_));
  o_out_.resize(static_cast<size_t>(B_ * t_in_ * s_.q_heads * Dv_ * eb_));
  make(Tensor::q, all_q, D_, q_in_.data());
  make(Tensor::k, all_kv, D_, kv_in_.data());
  make(Tensor::v, all_kv, Dv_, kv_in_.data() + k_bytes);

  const int64_t hq = me_.q_heads.count(), hkv = me_.kv_heads.count();
  o_attn_.resize(static_cast<size_t>(B_ * t_shard_ * hq * Dv_ * eb_));
  if (L_.ulysses() > 1) {
    q_attn_.resize(static_cast<size_t>(B_ * t_shard_ * hq * D_ * eb_));
    kv_attn_.resize(static_cast<size_t>(B_ * t_shard_ * hkv * (D_ + Dv_) * eb_));
  }
  int64_t max_shard = 0;
  for (int64_t r = 0; r < L_.ring(); ++r) max_shard = std::max(max_shard, L_.shard_padded_tokens(r));
  if (rotates_kv(L_.strategy()) && L_.ring() > 1) {
    // Both rotating buffers must hold the largest shard: uneven shards pass through each.
    kv_next_.resize(static_cast<size_t>(B_ * max_shard * hkv * (D_ + Dv_) * eb_));
    kv_attn_.resize(std::max(kv_attn_.size(), kv_next_.size()));
  }
}

// UAA's metadata step: the Ulysses group learns every member's token count on the host channel
// (no device-to-host sync) and checks it against the layout each rank computed on its own.
void RankExecution::exchange_lengths() {
  std::vector<int64_t> mine;
  for (const TokenRun& run : me_.input_runs) mine.push_back(run.padded);
  mine.resize(static_cast<size_t>(nseq_) * 2, -1);
  std::vector<int64_t> all(mine.size() * static_cast<size_t>(L_.ulysses()));
  ulysses_->allgather_host(mine.data(), static_cast<int64_t>(mine.size() * sizeof(int64_t)), all.data());
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
  std::vector<int64_t> send_bytes(static_cast<size_t>(U)), recv_bytes(static_cast<size_t>(U));
  int64_t send_total = 0, recv_total = 0;
  for (int64_t u = 0; u < U; ++u) {
    const int64_t peer = L_.global_rank(u, me_.r);
    send_bytes[u] = (L_.exchange_elems(Tensor::q, me_.rank, peer) + L_.exchange_elems(Tensor::k, me_.rank, peer) +
                     L_.exchange_elems(Tensor::v, me_.rank, peer)) * eb_;
    recv_bytes[u] = (L_.exchange_elems(Tensor::q, peer, me_.rank) + L_.exchange_elems(Tensor::k, peer, me_.rank) +
                     L_.exchange_elems(Tensor::v, peer, me_.rank)) * eb_;
    send_total += send_bytes[u];
    recv_total += recv_bytes[u];
  }
  send_.resize(static_cast<size_t>(send_total));
  recv_.resize(static_cast<size_t>(recv_total));
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
    copy_rows(q_in, 0, peer.q_heads.begin, q, 0, 0, t_in_, q.heads, B_, eb_);
    copy_rows(k_in, 0, peer.kv_heads.begin, k, 0, 0, t_in_, k.heads, B_, eb_);
    copy_rows(v_in, 0, peer.kv_heads.begin, v, 0, 0, t_in_, v.heads, B_, eb_);
    out = v.data + v.bytes(B_, eb_);
  }
  ulysses_->alltoallv(send_.data(), send_bytes, recv_.data(), recv_bytes);
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
      copy_rows(q, p.src, 0, q_attn, p.dst, 0, p.n, hq, B_, eb_);
      copy_rows(k, p.src, 0, k_attn, p.dst, 0, p.n, hkv, B_, eb_);
      copy_rows(v, p.src, 0, v_attn, p.dst, 0, p.n, hkv, B_, eb_);
    }
    in = v.data + v.bytes(B_, eb_);
  }
}

// Attention of my shard's queries against the K,V shard of ring index `ring_index`, held in kv
// as [K: batch x tokens x my kv heads x D][V: ... x Dv].
void RankExecution::attend_block(const Block& kv, int64_t ring_index) {
  const int64_t hq = me_.q_heads.count(), hkv = me_.kv_heads.count();
  const int64_t tokens = L_.shard_padded_tokens(ring_index);
  const std::byte* q_data = L_.ulysses() > 1 ? q_attn_.data() : q_in_.data();
  const std::vector<StoredRun> kv_runs = kernel_runs(L_.shard_runs(ring_index), B_, nseq_);
  const Queries queries{{q_data, s_.dtype, B_ * t_shard_, hq, D_}, q_runs_};
  const KvBlock block{{kv.data, s_.dtype, B_ * tokens, hkv, D_},
                      {kv.data + B_ * tokens * hkv * D_ * eb_, s_.dtype, B_ * tokens, hkv, Dv_},
                      kv_runs};
  attend(queries, block, params_, state_);
}

void RankExecution::attend_local() {
  std::byte* kv = L_.ulysses() > 1 ? kv_attn_.data() : kv_in_.data();
  attend_block({kv, t_shard_, me_.kv_heads.count(), D_}, me_.r);
}

// Ring: at step k compute against the shard of ring index r - k while that shard travels on
// to r + 1 and the next arrives from r - 1 (Gloo's transport thread moves the bytes).
void RankExecution::attend_ring() {
  const int64_t R = L_.ring(), hkv = me_.kv_heads.count();
  const int next = static_cast<int>((me_.r + 1) % R), prev = static_cast<int>((me_.r + R - 1) % R);
  // Without Ulysses the first block is my input, which must survive the iteration: it is only
  // read, and the two rotating buffers take over from the first step on.
  std::byte* current = L_.ulysses() > 1 ? kv_attn_.data() : kv_in_.data();
  std::byte* incoming = kv_next_.data();
  std::byte* spare = L_.ulysses() > 1 ? nullptr : kv_attn_.data();
  const int64_t token_bytes = B_ * hkv * (D_ + Dv_) * eb_;
  for (int64_t step = 0; step < R; ++step) {
    const int64_t src = L_.ring_kv_source(me_.r, step);
    std::unique_ptr<Request> send, recv;
    if (step + 1 < R) {
      const int64_t next_src = L_.ring_kv_source(me_.r, step + 1);
      send = ring_->isend(current, L_.shard_padded_tokens(src) * token_bytes, next, static_cast<int>(step));
      recv = ring_->irecv(incoming, L_.shard_padded_tokens(next_src) * token_bytes, prev, static_cast<int>(step));
    }
    attend_block({current, L_.shard_padded_tokens(src), hkv, D_}, src);
    if (send) {
      send->wait();
      recv->wait();
      std::swap(current, incoming);
      if (spare && incoming == kv_in_.data()) std::swap(incoming, spare);
    }
  }
}

void RankExecution::attend_allgathered() {
  const int64_t R = L_.ring(), hkv = me_.kv_heads.count();
  const int64_t token_bytes = B_ * hkv * (D_ + Dv_) * eb_;
  std::vector<int64_t> sizes(static_cast<size_t>(R));
  int64_t total = 0;
  for (int64_t r = 0; r < R; ++r) total += sizes[r] = L_.shard_padded_tokens(r) * token_bytes;
  recv_.resize(static_cast<size_t>(total));
  ring_->allgatherv(kv_in_.data(), sizes[me_.r], recv_.data(), sizes);
  std::byte* block = recv_.data();
  for (int64_t r = 0; r < R; ++r) {
    attend_block({block, L_.shard_padded_tokens(r), hkv, D_}, r);
    block += sizes[r];
  }
}

void RankExecution::gather_out() {
  const int64_t U = L_.ulysses(), hq = me_.q_heads.count();
  const Block o_attn{o_attn_.data(), t_shard_, hq, Dv_};
  const Block o_out{o_out_.data(), t_in_, s_.q_heads, Dv_};
  if (U == 1) {
    std::memcpy(o_out_.data(), o_attn_.data(), o_out_.size());
    return;
  }
  std::vector<int64_t> send_bytes(static_cast<size_t>(U)), recv_bytes(static_cast<size_t>(U));
  int64_t send_total = 0, recv_total = 0;
  for (int64_t u = 0; u < U; ++u) {
    const int64_t peer = L_.global_rank(u, me_.r);
    send_total += send_bytes[u] = L_.exchange_elems(Tensor::o, me_.rank, peer) * eb_;
    recv_total += recv_bytes[u] = L_.exchange_elems(Tensor::o, peer, me_.rank) * eb_;
  }
  send_.resize(static_cast<size_t>(send_total));
  recv_.resize(static_cast<size_t>(recv_total));
  std::byte* out = send_.data();
  for (int64_t u = 0; u < U; ++u) {  // member u gets its tokens, my heads
    const Block seg{out, L_.at(u, me_.r).input_padded_tokens, hq, Dv_};
    for (const Placement& p : member_places_[u]) copy_rows(o_attn, p.dst, 0, seg, p.src, 0, p.n, hq, B_, eb_);
    out += seg.bytes(B_, eb_);
  }
  ulysses_->alltoallv(send_.data(), send_bytes, recv_.data(), recv_bytes);
  std::byte* in = recv_.data();
  for (int64_t u = 0; u < U; ++u) {  // my tokens, member u's heads
    const RankLayout& peer = L_.at(u, me_.r);
    const Block seg{in, t_in_, peer.q_heads.count(), Dv_};
    copy_rows(seg, 0, 0, o_out, 0, peer.q_heads.begin, t_in_, seg.heads, B_, eb_);
    in += seg.bytes(B_, eb_);
  }
}

void RankExecution::iterate(PhaseTimer& timer) {
  const Strategy st = L_.strategy();
  const bool gathers_lengths = (st == Strategy::uaa || st == Strategy::hybrid_uaa) && L_.ulysses() > 1;
  state_.clear();
  timer.begin_iteration();
  if (gathers_lengths) {
    timer.start(kMeta);
    exchange_lengths();
    timer.stop(kMeta);
  }
  if (L_.ulysses() > 1) {
    timer.start(kQkv);
    scatter_qkv();
    timer.stop(kQkv);
  }
  if (st == Strategy::allgather_kv && L_.ring() > 1) {
    timer.start(kAllgather);
    attend_allgathered();
    timer.stop(kAllgather);
  } else {
    timer.start(kAttention);
    if (rotates_kv(st) && L_.ring() > 1)
      attend_ring();
    else
      attend_local();
    timer.stop(kAttention);
  }
  timer.start(kOut);
  store_output(state_, s_.dtype, o_attn_.data(), static_cast<int64_t>(o_attn_.size()));
  gather_out();
  timer.stop(kOut);
  timer.end_iteration(world_);
}

// Single-device reference for my real output rows: the same kernel over one block holding
// every key of the sequences (as with P = 1), from identically generated and rounded inputs.
double RankExecution::verify() const {
  std::vector<TokenRun> whole;
  for (int64_t i = 0; i < nseq_; ++i) whole.push_back({static_cast<int32_t>(i), 0, s_.seq_lens[i], s_.seq_lens[i]});
  const int64_t total = s_.total_tokens();
  auto make = [&](Tensor t, std::span<const TokenRun> runs, int64_t tokens, int64_t heads, int64_t dim) {
    std::vector<float> values(static_cast<size_t>(B_ * tokens * heads * dim));
    fill_input(values, options_.seed, t, runs, B_, {0, heads}, dim);
    Bytes stored(values.size() * static_cast<size_t>(eb_));
    from_float(values.data(), s_.dtype, stored.data(), static_cast<int64_t>(values.size()));
    return stored;
  };
  const Bytes q = make(Tensor::q, me_.input_runs, t_in_, s_.q_heads, D_);
  const Bytes k = make(Tensor::k, whole, total, s_.kv_heads, D_);
  const Bytes v = make(Tensor::v, whole, total, s_.kv_heads, Dv_);
  const std::vector<StoredRun> q_runs = kernel_runs(me_.input_runs, B_, nseq_);
  const std::vector<StoredRun> kv_runs = kernel_runs(whole, B_, nseq_);
  AttentionParams params = params_;
  params.heads = HeadMap{0, 0, s_.group_size()};
  AttentionState ref(B_ * t_in_, s_.q_heads, Dv_);
  attend({{q.data(), s_.dtype, B_ * t_in_, s_.q_heads, D_}, q_runs},
         {{k.data(), s_.dtype, B_ * total, s_.kv_heads, D_}, {v.data(), s_.dtype, B_ * total, s_.kv_heads, Dv_}, kv_runs},
         params, ref);
  Bytes ref_out(o_out_.size());
  store_output(ref, s_.dtype, ref_out.data(), static_cast<int64_t>(ref_out.size()));
  std::vector<float> got(static_cast<size_t>(B_ * t_in_ * s_.q_heads * Dv_)), want(got.size());
  to_float(o_out_.data(), s_.dtype, got.data(), static_cast<int64_t>(got.size()));
  if (options_.corrupt_rank == me_.rank) {
    int64_t offset = 0;  // the first real output row
    for (const TokenRun& run : me_.input_runs) {
      if (run.count > 0) {
        got[static_cast<size_t>(offset * s_.q_heads * Dv_)] += 0.25f;
        break;
      }
      offset += run.padded;
    }
  }
  to_float(ref_out.data(), s_.dtype, want.data(), static_cast<int64_t>(want.size()));
  const int64_t row = s_.q_heads * Dv_;
  double worst = 0;
  for (int64_t b = 0; b < B_; ++b) {
    int64_t offset = b * t_in_;
    for (const TokenRun& run : me_.input_runs) {
      for (int64_t t = 0; t < run.count; ++t)  // real rows only; padding rows are not output
        for (int64_t i = 0; i < row; ++i) {
          const size_t at = static_cast<size_t>((offset + t) * row + i);
          const double err = std::fabs(double(got[at]) - double(want[at]));
          if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
        }
      offset += run.padded;
    }
  }
  return worst;
}

void check_same_arguments(const Layout& layout, const ExecutorOptions& options, Comm& world) {
  const std::string text = to_json(layout.spec().shape).dump() + std::string(to_string(layout.strategy())) +
                           std::string(to_string(layout.spec().head_policy)) +
                           std::string(to_string(layout.mesh().order)) + std::to_string(layout.ulysses()) + "x" +
                           std::to_string(layout.ring()) + "/" + std::to_string(layout.mesh().ranks_per_node) + " " +
                           std::to_string(options.warmups) + " " + std::to_string(options.iterations) + " " +
                           std::to_string(options.verify) + " " + std::to_string(options.seed);
  const uint64_t mine = fnv1a(text);
  std::vector<uint64_t> all(static_cast<size_t>(world.size()));
  world.allgather_host(&mine, sizeof(mine), all.data());
  for (int r = 0; r < world.size(); ++r)
    if (all[r] != all[0])
      throw Error("rank " + std::to_string(r) + " was started with different arguments than rank 0 (argument hash " +
                  std::to_string(all[r]) + " vs " + std::to_string(all[0]) + "); start every rank with the same command");
}

}  // namespace

double verify_tolerance(DType dtype) {
  // The distributed output and the reference differ by fp32 merge order (~1e-6) plus one
  // rounding of O to the storage dtype each (|O| <= max |V| = 1): two ulps at 1.0.
  switch (dtype) {
    case DType::fp32: return 1e-4;
    case DType::fp16: return 2.0 * 0x1.0p-10;
    case DType::bf16: return 2.0 * 0x1.0p-7;
  }
  return 0;
}

RunResult execute(const Layout& layout, Comm& world, const ExecutorOptions& options) {
  return execute_interleaved(std::span<const Layout>(&layout, 1), world, options).front();
}

std::vector<RunResult> execute_interleaved(std::span<const Layout> layouts, Comm& world, const ExecutorOptions& options) {
  if (options.iterations < 1) throw Error("iterations " + std::to_string(options.iterations) + " must be at least 1");
  if (options.warmups < 0) throw Error("warm-ups " + std::to_string(options.warmups) + " must not be negative");
  const std::vector<std::string> phases{"meta", "qkv_a2a", "attention", "allgather_kv", "out_a2a"};
  std::vector<std::unique_ptr<RankExecution>> runs;
  std::vector<PhaseTimer> timers;
  for (const Layout& layout : layouts) {
    check_same_arguments(layout, options, world);
    runs.push_back(std::make_unique<RankExecution>(layout, world, options));
    timers.emplace_back(phases);
  }
  const size_t n = runs.size();
  PhaseTimer warm(phases);
  for (int i = 0; i < options.warmups; ++i)
    for (auto& run : runs) run->iterate(warm);
  for (int i = 0; i < options.iterations; ++i)
    for (size_t j = 0; j < n; ++j) {
      const size_t k = (j + static_cast<size_t>(i)) % n;
      runs[k]->iterate(timers[k]);
    }

  std::vector<RunResult> results(n);
  for (size_t k = 0; k < n; ++k) {
    RunResult& result = results[k];
    result.phases = timers[k].phase_stats();
    result.time = timers[k].total();
    result.samples = timers[k].totals();
    result.iterations = options.iterations;
    if (options.verify) {
      const double mine = runs[k]->verify();
      std::vector<double> all(static_cast<size_t>(world.size()));
      world.allgather_host(&mine, sizeof(mine), all.data());
      result.max_abs_err = *std::max_element(all.begin(), all.end());
      result.tolerance = verify_tolerance(layouts[k].shape().dtype);
    }
  }
  return results;
}

}  // namespace cptune::backends
