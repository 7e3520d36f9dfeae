#include "backends/exec/ring_rotation.h"

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>

#include "backends/comm/comm.h"
#include "core/error.h"

namespace cptune::backends {

RingRotation::RingRotation(const RankContext& ctx, Comm& ring, bool backward) : c_(ctx), ring_(ring) {
  const Layout& L = c_.layout;
  const int64_t R = L.ring(), r = c_.me.r, prev = (r + R - 1) % R;
  next_ = static_cast<int>((r + 1) % R);
  prev_ = static_cast<int>(prev);
  int64_t largest = 0, packed = 0, largest_shard = 0, largest_partial = 0;
  for (int64_t step = 0; step < R; ++step) {
    Step st;
    const std::span<const TokenRun> held = L.ring_held_runs(r, step);
    st.held_runs.assign(held.begin(), held.end());
    st.held = kernel_runs(held, c_.batch, c_.nseq);
    st.held_tokens = padded_tokens(held);
    st.computes = L.ring_step_computes(r, step);
    const int64_t source = L.ring_kv_source(r, step);
    st.source_tokens = L.shard_padded_tokens(source);
    st.in_source = sub_rows(L.shard_runs(source), held);
    largest_shard = std::max(largest_shard, st.source_tokens);
    if (st.held_tokens != st.source_tokens) largest_partial = std::max(largest_partial, st.held_tokens);
    if (step + 1 < R) {
      st.forward = sub_rows(held, L.ring_forward_runs(r, step));
      st.forward_tokens = L.ring_forward_tokens(r, step);
      st.packs = st.forward_tokens != st.held_tokens;
      st.recv_tokens = padded_tokens(L.ring_held_runs(r, step + 1));
      if (L.ring_forward_tokens(prev, step) != st.recv_tokens)
        throw Error("ring schedule: ring index " + std::to_string(prev) + " forwards " +
                    std::to_string(L.ring_forward_tokens(prev, step)) + " tokens at step " + std::to_string(step) +
                    " but ring index " + std::to_string(r) + " holds " + std::to_string(st.recv_tokens) +
                    " at the next (layout bug)");
      largest = std::max(largest, st.recv_tokens);
      if (st.packs) packed = std::max(packed, st.forward_tokens);
    }
    steps_.push_back(std::move(st));
  }
  for (DeviceBuffer& buffer : rotating_) buffer = c_.device.allocate(L.kv_block_bytes(largest, c_.kv_heads()));
  if (packed > 0) kv_send_ = c_.device.allocate(L.kv_block_bytes(packed, c_.kv_heads()));
  if (!backward) return;
  for (DeviceBuffer& buffer : grads_) buffer = c_.device.allocate(kv_grad_bytes(c_, largest_shard));
  if (largest_partial > 0) scratch_ = c_.device.allocate(kv_grad_bytes(c_, largest_partial));
}



// The forwarded rows of the held block, back to back in kv_send_: [K: batch x forwarded x D][V].
void RingRotation::pack_forward(const std::byte* held, const Step& step) {
  std::byte* h = const_cast<std::byte*>(held);
  const Block k_held = c_.k_of(h, step.held_tokens), v_held = c_.v_of(h, step.held_tokens);
  const Block k_send = c_.k_of(kv_send_.data(), step.forward_tokens);
  const Block v_send = c_.v_of(kv_send_.data(), step.forward_tokens);
  for (const Placement& p : step.forward) {
    c_.copy(k_held, p.src, 0, k_send, p.dst, 0, p.n, c_.kv_heads());
    c_.copy(v_held, p.src, 0, v_send, p.dst, 0, p.n, c_.kv_heads());
  }
}

void RingRotation::attend(const std::byte* first, const AttendBlock& attend) {
  const int64_t R = c_.layout.ring(), token_bytes = c_.layout.kv_block_bytes(1, c_.kv_heads());
  const std::byte* current = first;
  for (int64_t step = 0; step < R; ++step) {
    const Step& st = steps_[static_cast<size_t>(step)];
    const bool last = step + 1 == R;
    std::byte* incoming = rotating_[step % 2].data();
    std::unique_ptr<Request> send, recv;
    // Sender and receiver agree on every size (the constructor), so both skip an empty message alike.
    if (!last && st.forward_tokens > 0) {
      if (st.packs) pack_forward(current, st);
      send = ring_.isend(st.packs ? kv_send_.data() : current, st.forward_tokens * token_bytes, next_,
                         static_cast<int>(step));
    }
    if (!last && st.recv_tokens > 0)
      recv = ring_.irecv(incoming, st.recv_tokens * token_bytes, prev_, static_cast<int>(step));
    if (st.computes) attend(const_cast<std::byte*>(current), st.held_tokens, st.held);
    if (!last) {
      if (send) send->wait();
      if (recv) recv->wait();
      current = incoming;
    }
  }
}


// Adds the held block's dK, dV (scratch, its rows back to back) into the rows of its ring
// index's whole shard they came from.
void RingRotation::add_held_grads(const Step& st, std::byte* shard_grads) {
  const int64_t T = st.source_tokens, H = st.held_tokens, hkv = c_.kv_heads();
  const int64_t f = sizeof(float);
  for (const auto& [dim, k_offset_shard, k_offset_held] :
       {std::tuple{c_.head_dim, int64_t{0}, int64_t{0}},
        std::tuple{c_.v_head_dim, c_.batch * T * hkv * c_.head_dim * f, c_.batch * H * hkv * c_.head_dim * f}})
    for (int64_t b = 0; b < c_.batch; ++b)
      for (const Placement& p : st.in_source)
        c_.device.add_floats(shard_grads + k_offset_shard + (b * T + p.src) * hkv * dim * f,
                             scratch_.data() + k_offset_held + (b * H + p.dst) * hkv * dim * f, p.n * hkv * dim);
}

const std::byte* RingRotation::attend_backward(const std::byte* first, const AttendBlockBackward& attend) {
  const int64_t R = c_.layout.ring(), token_bytes = c_.layout.kv_block_bytes(1, c_.kv_heads());
  const std::byte* current = first;
  std::byte* grads = grads_[0].data();  // dK, dV of the block held, gathering every rank's share
  c_.device.zero(grads, kv_grad_bytes(c_, steps_[0].source_tokens));
  for (int64_t step = 0; step < R; ++step) {
    const Step& st = steps_[static_cast<size_t>(step)];
    const bool last = step + 1 == R;
    std::byte* incoming = rotating_[step % 2].data();
    std::byte* grads_in = grads_[(step + 1) % 2].data();
    std::unique_ptr<Request> send, recv, grads_send, grads_recv;
    if (!last && st.forward_tokens > 0) {
      if (st.packs) pack_forward(current, st);
      send = ring_.isend(st.packs ? kv_send_.data() : current, st.forward_tokens * token_bytes, next_,
                         static_cast<int>(step));
    }
    if (!last && st.recv_tokens > 0)
      recv = ring_.irecv(incoming, st.recv_tokens * token_bytes, prev_, static_cast<int>(step));
    if (st.computes) {
      std::byte* held = const_cast<std::byte*>(current);
      if (st.held_tokens == st.source_tokens) {
        attend(held, st.held_tokens, st.held, grads);
      } else {  // the block holds fewer rows than its shard: add through a scratch block
        c_.device.zero(scratch_.data(), kv_grad_bytes(c_, st.held_tokens));
        attend(held, st.held_tokens, st.held, scratch_.data());
        add_held_grads(st, grads);
      }
    }
    // dK, dV go on with their block; after the last step, home to its owner (my successor).
    const int64_t out_bytes = kv_grad_bytes(c_, st.source_tokens);
    const int64_t in_bytes = kv_grad_bytes(c_, last ? steps_[0].source_tokens : steps_[static_cast<size_t>(step + 1)].source_tokens);
    const int tag = static_cast<int>(R + step);
    if (out_bytes > 0) grads_send = ring_.isend(grads, out_bytes, next_, tag);
    if (in_bytes > 0) grads_recv = ring_.irecv(grads_in, in_bytes, prev_, tag);
    for (auto* request : {&send, &recv, &grads_send, &grads_recv})
      if (*request) (*request)->wait();
    if (!last) current = incoming;
    grads = grads_in;
  }
  return grads;
}

}  // namespace cptune::backends
