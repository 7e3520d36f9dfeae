#include "backends/exec/ulysses_exchange.h"

#include <algorithm>
#include <string>

#include "backends/comm/comm.h"
#include "core/error.h"

namespace cptune::backends {

UlyssesExchange::UlyssesExchange(const RankContext& ctx, Comm& group, MetadataChannel metadata, bool backward)
    : c_(ctx), group_(group), metadata_(metadata) {
  const Layout& L = c_.layout;
  const int64_t U = L.ulysses();
  for (int64_t u = 0; u < U; ++u) member_places_.push_back(placements(L, L.at(u, c_.me.r)));
  // The largest exchange either way: Q, K, V (or their gradients) against O (or dO).
  int64_t send = 0, recv = 0;
  for (const auto& tensors : {std::vector<Tensor>{Tensor::q, Tensor::k, Tensor::v}, std::vector<Tensor>{Tensor::o}}) {
    int64_t out = 0, in = 0;
    for (int64_t u = 0; u < U; ++u) {
      const RankLayout& peer = L.at(u, c_.me.r);
      for (Tensor t : tensors) {
        out += c_.batch * c_.in_tokens * heads_of(t, peer) * dim(t) * c_.elem_bytes;
        in += c_.batch * peer.input_padded_tokens * heads_of(t, c_.me) * dim(t) * c_.elem_bytes;
      }
    }
    send = std::max({send, out, in});
    recv = std::max({recv, out, in});
  }
  send_ = c_.device.allocate(send);
  recv_ = c_.device.allocate(recv);
  // Zigzag holds two runs per sequence, a block placement up to one per block: every rank
  // reserves as many slots as the rank with the most runs needs.
  length_slots_ = 2 * c_.nseq;
  for (const RankLayout& rank : L.ranks())
    length_slots_ = std::max(length_slots_, static_cast<int64_t>(rank.input_runs.size()));
  int64_t kv_held = 0;
  for (int64_t u = 0; u < U; ++u) kv_held += L.at(u, c_.me.r).kv_heads.count();
  shares_kv_heads_ = kv_held > c_.shape.kv_heads;
  if (backward && shares_kv_heads_) {
    const int64_t f = sizeof(float), rows = c_.batch * c_.in_tokens * c_.shape.kv_heads;
    sums_[0] = c_.device.allocate(rows * c_.head_dim * f);
    sums_[1] = c_.device.allocate(rows * c_.v_head_dim * f);
  }
  if (metadata_ == MetadataChannel::device) {
    const int64_t bytes = length_slots_ * static_cast<int64_t>(sizeof(int64_t));
    lengths_send_ = c_.device.allocate(bytes);
    lengths_recv_ = c_.device.allocate(bytes * U);
  }
}

HeadRange UlyssesExchange::head_range(Tensor t, const RankLayout& rank) const {
  return t == Tensor::q || t == Tensor::o ? rank.q_heads : rank.kv_heads;
}
int64_t UlyssesExchange::heads_of(Tensor t, const RankLayout& rank) const { return head_range(t, rank).count(); }
int64_t UlyssesExchange::all_heads(Tensor t) const {
  return t == Tensor::q || t == Tensor::o ? c_.shape.q_heads : c_.shape.kv_heads;
}
int64_t UlyssesExchange::dim(Tensor t) const { return t == Tensor::q || t == Tensor::k ? c_.head_dim : c_.v_head_dim; }

void UlyssesExchange::to_heads(std::span<const Part> parts) {
  const Layout& L = c_.layout;
  const int64_t U = L.ulysses(), eb = c_.elem_bytes;
  std::vector<int64_t> send_bytes(static_cast<size_t>(U)), recv_bytes(send_bytes.size());
  // Pack: member u gets my tokens x its heads of every part, parts back to back.
  std::byte* out = send_.data();
  for (int64_t u = 0; u < U; ++u) {
    const RankLayout& peer = L.at(u, c_.me.r);
    const std::byte* start = out;
    for (const Part& part : parts) {
      const HeadRange heads = head_range(part.tensor, peer);
      const Block mine{part.tokens, c_.in_tokens, all_heads(part.tensor), dim(part.tensor)};
      const Block seg{out, c_.in_tokens, heads.count(), dim(part.tensor)};
      c_.copy(mine, 0, heads.begin, seg, 0, 0, c_.in_tokens, heads.count());
      out += seg.bytes(c_.batch, eb);
      recv_bytes[u] += c_.batch * peer.input_padded_tokens * heads_of(part.tensor, c_.me) * dim(part.tensor) * eb;
    }
    send_bytes[u] = out - start;
  }
  group_.alltoallv(send_.data(), send_bytes, recv_.data(), recv_bytes);
  // Unpack: member u's tokens land at their places in my shard, my heads.
  std::byte* in = recv_.data();
  for (int64_t u = 0; u < U; ++u) {
    const int64_t tokens = L.at(u, c_.me.r).input_padded_tokens;
    for (const Part& part : parts) {
      const int64_t h = heads_of(part.tensor, c_.me);
      const Block seg{in, tokens, h, dim(part.tensor)};
      const Block shard{part.heads, c_.shard_tokens, h, dim(part.tensor)};
      for (const Placement& p : member_places_[u]) c_.copy(seg, p.src, 0, shard, p.dst, 0, p.n, h);
      in += seg.bytes(c_.batch, eb);
    }
  }
}

void UlyssesExchange::to_tokens(std::span<const Part> parts) {
  const Layout& L = c_.layout;
  const int64_t U = L.ulysses(), eb = c_.elem_bytes;
  std::vector<int64_t> send_bytes(static_cast<size_t>(U)), recv_bytes(send_bytes.size());
  // Pack: member u gets its tokens, my heads of every part.
  std::byte* out = send_.data();
  for (int64_t u = 0; u < U; ++u) {
    const RankLayout& peer = L.at(u, c_.me.r);
    const std::byte* start = out;
    for (const Part& part : parts) {
      const int64_t h = heads_of(part.tensor, c_.me);
      const Block shard{part.heads, c_.shard_tokens, h, dim(part.tensor)};
      const Block seg{out, peer.input_padded_tokens, h, dim(part.tensor)};
      for (const Placement& p : member_places_[u]) c_.copy(shard, p.dst, 0, seg, p.src, 0, p.n, h);
      out += seg.bytes(c_.batch, eb);
      recv_bytes[u] += c_.batch * c_.in_tokens * heads_of(part.tensor, peer) * dim(part.tensor) * eb;
    }
    send_bytes[u] = out - start;
  }
  group_.alltoallv(send_.data(), send_bytes, recv_.data(), recv_bytes);
  // Unpack: my tokens, member u's heads; summing parts add into their fp32 sums, then round once.
  const int64_t f = sizeof(float);
  std::vector<std::byte*> sum_of(parts.size(), nullptr);
  for (size_t i = 0; i < parts.size(); ++i)
    if (parts[i].sums && shares_kv_heads_) {
      sum_of[i] = sums_[parts[i].tensor == Tensor::k ? 0 : 1].data();
      c_.device.zero(sum_of[i], c_.batch * c_.in_tokens * all_heads(parts[i].tensor) * dim(parts[i].tensor) * f);
    }
  std::byte* in = recv_.data();
  for (int64_t u = 0; u < U; ++u) {
    const RankLayout& peer = L.at(u, c_.me.r);
    for (size_t i = 0; i < parts.size(); ++i) {
      const Part& part = parts[i];
      const HeadRange heads = head_range(part.tensor, peer);
      const int64_t d = dim(part.tensor), all = all_heads(part.tensor);
      const Block seg{in, c_.in_tokens, heads.count(), d};
      if (sum_of[i] == nullptr) {
        c_.copy(seg, 0, 0, {part.tokens, c_.in_tokens, all, d}, 0, heads.begin, c_.in_tokens, heads.count());
      } else {
        for (int64_t row = 0; row < c_.batch * c_.in_tokens; ++row)
          c_.device.add_stored(sum_of[i] + (row * all + heads.begin) * d * f, seg.data + row * heads.count() * d * eb,
                               c_.shape.dtype, heads.count() * d);
      }
      in += seg.bytes(c_.batch, eb);
    }
  }
  for (size_t i = 0; i < parts.size(); ++i)
    if (sum_of[i] != nullptr)
      c_.device.store_floats(sum_of[i], c_.batch * c_.in_tokens * all_heads(parts[i].tensor) * dim(parts[i].tensor),
                             c_.shape.dtype, parts[i].tokens);
}

void UlyssesExchange::exchange_lengths() {
  const Layout& L = c_.layout;
  std::vector<int64_t> mine;
  for (const TokenRun& run : c_.me.input_runs) mine.push_back(run.padded);
  mine.resize(static_cast<size_t>(length_slots_), -1);
  const auto bytes = static_cast<int64_t>(mine.size() * sizeof(int64_t));
  std::vector<int64_t> all(mine.size() * static_cast<size_t>(L.ulysses()));
  if (metadata_ == MetadataChannel::device) {
    c_.device.upload(lengths_send_.data(), mine.data(), bytes);
    const std::vector<int64_t> sizes(static_cast<size_t>(L.ulysses()), bytes);
    group_.allgatherv(lengths_send_.data(), bytes, lengths_recv_.data(), sizes);
    c_.device.download(all.data(), lengths_recv_.data(), bytes * L.ulysses());
  } else {
    group_.allgather_host(mine.data(), bytes, all.data());
  }
  for (int64_t u = 0; u < L.ulysses(); ++u) {
    int64_t total = 0;
    for (size_t i = 0; i < mine.size(); ++i) total += std::max<int64_t>(0, all[u * mine.size() + i]);
    const int64_t expected = L.at(u, c_.me.r).input_padded_tokens;
    if (total != expected)
      throw Error("Ulysses member " + std::to_string(u) + " holds " + std::to_string(total) +
                  " tokens but this rank's layout expects " + std::to_string(expected));
  }
}

}  // namespace cptune::backends
