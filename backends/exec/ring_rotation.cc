#include "backends/exec/ring_rotation.h"

#include <algorithm>
#include <memory>
#include <string>

#include "backends/comm/comm.h"
#include "core/error.h"

namespace cptune::backends {

RingRotation::RingRotation(const RankContext& ctx, Comm& ring) : c_(ctx), ring_(ring) {
  const Layout& L = c_.layout;
  const int64_t R = L.ring(), r = c_.me.r, prev = (r + R - 1) % R;
  next_ = static_cast<int>((r + 1) % R);
  prev_ = static_cast<int>(prev);
  int64_t largest = 0, packed = 0;
  for (int64_t step = 0; step < R; ++step) {
    Step st;
    const std::span<const TokenRun> held = L.ring_held_runs(r, step);
    st.held_runs.assign(held.begin(), held.end());
    st.held = kernel_runs(held, c_.batch, c_.nseq);
    st.held_tokens = padded_tokens(held);
    st.computes = L.ring_step_computes(r, step);
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

}  // namespace cptune::backends
