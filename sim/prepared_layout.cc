#include "sim/prepared_layout.h"

#include <algorithm>

#include "core/error.h"

namespace cptune::sim {
namespace {

int64_t self_exchange_bytes(const Layout& l, int64_t rank, std::initializer_list<Tensor> tensors) {
  int64_t elems = 0;
  for (Tensor t : tensors) elems += l.exchange_elems(t, rank, rank);
  return elems * l.elem_bytes();
}

int64_t sum(const LevelBytes& b) {
  int64_t total = 0;
  for (int64_t x : b) total += x;
  return total;
}

// The seq->heads permutation around an all-to-all: the send buffer (peers' parts and the rank's
// own) is packed, read and written once, and the receive buffer unpacked the same way.
ExchangeLoad exchange_load(const ExchangeTraffic& t, size_t rank, int64_t self_bytes) {
  ExchangeLoad e;
  e.peers = t.peers[rank];
  for (size_t i = 0; i < kMaxLevels; ++i) e.bytes[i] = std::max(t.sent[rank][i], t.received[rank][i]);
  const int64_t sent = sum(t.sent[rank]), received = sum(t.received[rank]);
  e.injection_bytes = std::max(sent, received);
  e.copy_bytes = 2 * (sent + self_bytes) + 2 * (received + self_bytes);
  return e;
}

bool covers(const ExchangeLoad& a, const ExchangeLoad& b) {
  for (size_t i = 0; i < kMaxLevels; ++i)
    if (a.peers[i] < b.peers[i] || a.bytes[i] < b.bytes[i]) return false;
  return a.injection_bytes >= b.injection_bytes && a.copy_bytes >= b.copy_bytes;
}

// Keeps only loads no other load covers: the candidates for the slowest rank on any hardware.
void keep_maximal(std::vector<ExchangeLoad>& kept, const ExchangeLoad& load) {
  for (const ExchangeLoad& k : kept)
    if (covers(k, load)) return;
  std::erase_if(kept, [&](const ExchangeLoad& k) { return covers(load, k); });
  kept.push_back(load);
}

ClassBytes sent(const LinkBytes& b) { return {b.send_intra, b.send_inter}; }

void add_sent(LevelBytes& total, const ExchangeTraffic& t) {
  for (const LevelBytes& rank : t.sent)
    for (size_t i = 0; i < kMaxLevels; ++i) total[i] += rank[i];
}

void prepare_exchanges(const Layout& l, const Topology& topo, PreparedLayout& p) {
  if (l.ulysses() < 2) return;
  const ExchangeTraffic qkv = exchange_traffic(l, topo, Exchange::qkv);
  const ExchangeTraffic o = exchange_traffic(l, topo, Exchange::o);
  const ExchangeTraffic gather = exchange_traffic(l, topo, Exchange::gather);
  for (const RankLayout& rl : l.ranks()) {
    const size_t a = size_t(rl.rank);
    keep_maximal(p.qkv, exchange_load(qkv, a, self_exchange_bytes(l, rl.rank, {Tensor::q, Tensor::k, Tensor::v})));
    keep_maximal(p.o, exchange_load(o, a, self_exchange_bytes(l, rl.rank, {Tensor::o})));
    if (!gather.empty() && rl.gather_bytes.send() + rl.gather_bytes.recv() > 0) {
      ExchangeLoad lengths = exchange_load(gather, a, 0);
      lengths.copy_bytes = 0;  // lengths land in place: nothing to permute
      keep_maximal(p.gather, lengths);
    }
    p.qkv_total += sent(rl.qkv_bytes);
    p.o_total += sent(rl.o_bytes);
    p.gather_total += sent(rl.gather_bytes);
  }
  p.qkv_uplink = qkv.uplink_bytes;
  p.o_uplink = o.uplink_bytes;
  add_sent(p.qkv_levels, qkv);
  add_sent(p.o_levels, o);
  if (!gather.empty()) {
    p.gather_uplink = gather.uplink_bytes;
    add_sent(p.gather_levels, gather);
  }
}

// Per-rank FLOPs -> the busiest node's ranks as sorted runs of equal values.
NodeWork busiest_node(const Layout& l, const std::vector<int64_t>& flops_by_rank) {
  std::vector<int64_t> node_total(static_cast<size_t>(l.nodes()), 0);
  for (int64_t p = 0; p < l.world(); ++p) node_total[static_cast<size_t>(l.node_of(p))] += flops_by_rank[size_t(p)];
  const int64_t busiest = std::max_element(node_total.begin(), node_total.end()) - node_total.begin();
  std::vector<int64_t> mine;
  for (int64_t p = 0; p < l.world(); ++p)
    if (l.node_of(p) == busiest) mine.push_back(flops_by_rank[size_t(p)]);
  std::sort(mine.begin(), mine.end());
  NodeWork w;
  for (int64_t f : mine) {
    if (!w.flops_ranks.empty() && w.flops_ranks.back().first == f)
      ++w.flops_ranks.back().second;
    else
      w.flops_ranks.emplace_back(f, 1);
  }
  return w;
}

// Query x key pairs of ring index r's shard against src's, padding counted, as
// Layout::ring_step_max counts them (one merge pass over the runs of each sequence).
int64_t block_pairs(const Layout& l, int64_t r, int64_t src) {
  return l.run_pairs(l.shard_runs(r), l.shard_runs(src), true);
}

// Ring indices whose step-k blocks are equal, as the starts of runs [starts[i], starts[i+1]).
// A sequence's chunks come in two sizes (tensor_split: the first len mod C hold one more token;
// classic padding makes them equal), so under a full or causal mask a block's pairs and bytes
// depend only on which size each of the rank's and the source's chunks has and on which side
// of the diagonal the source lies. Those change only where r crosses a sequence's size boundary
// (or its mirror for zigzag chunks), shifted by k for the source, and at r = k (wrap-around).
// A sliding window also depends on the distance between chunks, a block mask on where its
// placement put each block and which runs a step forwards: every r is its own run.
std::vector<int64_t> ring_segments(const Layout& l, int64_t k) {
  const int64_t R = l.ring();
  std::vector<int64_t> starts;
  const bool per_rank = l.shape().mask.kind == MaskKind::sliding_window || l.shape().mask.kind == MaskKind::blocks;
  if (!per_rank) {
    const int64_t chunks = l.zigzag() ? 2 * R : R;
    starts = {0, k};
    for (int64_t len : l.shape().seq_lens) {
      const int64_t rem = l.traits().pads_classic ? 0 : len % chunks;
      for (int64_t x : {rem, 2 * R - rem, rem + k, rem + k - R, 2 * R - rem + k, R - rem + k})
        if (x > 0 && x < R) starts.push_back(x);
      if (int64_t(starts.size()) >= R) break;
    }
  }
  if (per_rank || int64_t(starts.size()) >= R) {
    starts.resize(size_t(R));
    for (int64_t r = 0; r < R; ++r) starts[size_t(r)] = r;
  } else {
    std::sort(starts.begin(), starts.end());
    starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
  }
  starts.push_back(R);
  return starts;
}

// Range maximum over ring indices in O(1) per query after O(R log R) set-up.
class RangeMax {
 public:
  explicit RangeMax(std::vector<int64_t> values) {
    table_.push_back(std::move(values));
    for (size_t w = 1; 2 * w <= table_[0].size(); w *= 2) {
      const std::vector<int64_t>& prev = table_.back();
      std::vector<int64_t> next(prev.size() - w);
      for (size_t i = 0; i < next.size(); ++i) next[i] = std::max(prev[i], prev[i + w]);
      table_.push_back(std::move(next));
    }
  }
  int64_t max(int64_t lo, int64_t hi) const {  // over [lo, hi), hi > lo
    size_t level = 0;
    while ((size_t(2) << level) <= size_t(hi - lo)) ++level;
    return std::max(table_[level][size_t(lo)], table_[level][size_t(hi) - (size_t(1) << level)]);
  }

 private:
  std::vector<std::vector<int64_t>> table_;
};

// Every rank's FLOPs at ring step k: its Q heads against the block of ring index r - k.
NodeWork ring_step_node(const Layout& l, int64_t step) {
  std::vector<int64_t> pairs(static_cast<size_t>(l.ring()));
  for (int64_t r = 0; r < l.ring(); ++r) pairs[size_t(r)] = block_pairs(l, r, l.ring_kv_source(r, step));
  std::vector<int64_t> flops(static_cast<size_t>(l.world()));
  for (const RankLayout& rl : l.ranks())
    flops[size_t(rl.rank)] = l.attention_flops(pairs[size_t(rl.r)], rl.q_heads.count());
  return busiest_node(l, flops);
}

// Online-softmax merge of one block into the fp32 output and log-sum-exp: read the running
// state, read the block's result, write the state (3 passes over [shard][heads][Dv + 1] fp32).
int64_t largest_merge_bytes(const Layout& l) {
  int64_t most = 0;
  const AttentionShape& s = l.shape();
  for (const RankLayout& rl : l.ranks())
    most = std::max(most, l.shard_padded_tokens(rl.r) * s.batch * rl.q_heads.count() * (s.v_head_dim + 1) * 4 * 3);
  return most;
}

// The step maxima of Layout::ring_step_max, per level of the topology, O(segments) per step.
void prepare_ring(const Layout& l, const Topology& topo, const RingTraffic& traffic, bool node_work,
                  PreparedLayout& p) {
  if (!l.plan(Pass::forward).ring_attention()) return;
  const int64_t R = l.ring(), L = int64_t(topo.levels());
  int64_t max_q_heads = 0, max_shard = 0;
  for (int64_t u = 0; u < l.ulysses(); ++u) max_q_heads = std::max(max_q_heads, l.at(u, 0).q_heads.count());
  for (int64_t r = 0; r < R; ++r) max_shard = std::max(max_shard, l.shard_padded_tokens(r));
  if (l.ring_skips()) {  // the largest block really sent
    max_shard = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k + 1 < R; ++k) max_shard = std::max(max_shard, l.ring_forward_tokens(r, k));
  }
  // Per level and ring index: the most KV heads a rank of that index sends to a neighbour met there.
  std::vector<std::vector<int64_t>> heads(size_t(L), std::vector<int64_t>(size_t(R), 0));
  for (const RankLayout& rl : l.ranks()) {
    int64_t& h = heads[traffic.hop_level[size_t(rl.rank)]][size_t(rl.r)];
    h = std::max(h, rl.kv_heads.count());
  }
  std::vector<std::pair<size_t, RangeMax>> sends;  // levels some hop uses
  for (size_t level = 0; level < size_t(L); ++level)
    if (std::any_of(heads[level].begin(), heads[level].end(), [](int64_t h) { return h > 0; }))
      sends.emplace_back(level, RangeMax(std::move(heads[level])));
  const int64_t merge = largest_merge_bytes(l);
  for (int64_t k = 0; k < R; ++k) {
    RingStepLoad step;
    const std::vector<int64_t> starts = ring_segments(l, k);
    int64_t most_pairs = 0;
    for (size_t i = 0; i + 1 < starts.size(); ++i) {
      const int64_t r = starts[i], src = l.ring_kv_source(r, k);
      most_pairs = std::max(most_pairs, block_pairs(l, r, src));
      if (k + 1 == R) continue;  // the last step computes without sending
      const int64_t block = l.kv_block_bytes(l.ring_forward_tokens(r, k), 1);  // the runs really forwarded
      for (const auto& [level, range] : sends) step.bytes[level] = std::max(step.bytes[level], block * range.max(r, starts[i + 1]));
    }
    step.flops = l.attention_flops(most_pairs, max_q_heads);
    step.merge_bytes = k > 0 && step.flops > 0 ? merge : 0;
    if (node_work) step.node = ring_step_node(l, k);
    RingStepLoad* last = p.ring_steps.empty() ? nullptr : &p.ring_steps.back();
    if (last && last->bytes == step.bytes && last->flops == step.flops && last->merge_bytes == step.merge_bytes &&
        last->node == step.node)
      ++last->repeat;
    else
      p.ring_steps.push_back(step);
  }
  for (size_t level = 0; level + 1 < size_t(L); ++level) p.ring_uplink[level] = l.kv_block_bytes(max_shard, traffic.uplink_heads[level]);
  // Backward: after the last step each rank sends the dK,dV of its next neighbour's shard home.
  for (const RankLayout& rl : l.ranks()) {
    const int64_t owner = (rl.r + 1) % R;
    const int64_t block = p.kv_grad(l.kv_block_bytes(l.shard_padded_tokens(owner), rl.kv_heads.count()));
    const bool intra = l.node_of(l.ring_next(rl.rank)) == rl.node;
    const size_t level = traffic.hop_level[size_t(rl.rank)];
    p.ring_return_bytes[level] = std::max(p.ring_return_bytes[level], block);
    (intra ? p.ring_return_total.intra : p.ring_return_total.inter) += block;
    p.ring_return_levels[level] += block;
    p.ring_total += sent(rl.ring_bytes);
    p.ring_levels[level] += rl.ring_bytes.send();
  }
}

// Per rank, the members of its ring group (same u) it first meets at each level.
std::vector<LevelBytes> ring_group_peers(const Layout& l, const Topology& topo) {
  std::vector<LevelBytes> out(size_t(l.world()), LevelBytes{});
  const size_t L = topo.levels();
  for (int64_t u = 0; u < l.ulysses(); ++u) {
    for (size_t level = 0; level < L; ++level) {
      for (int64_t begin = 0; begin < l.ring();) {  // members increase with r: instances come in runs
        const int64_t inst = level + 1 == L ? 0 : topo.instance(l.global_rank(u, begin), level);
        int64_t end = begin;
        while (end < l.ring() && (level + 1 == L || topo.instance(l.global_rank(u, end), level) == inst)) ++end;
        for (int64_t r = begin; r < end; ++r) out[size_t(l.global_rank(u, r))][level] = end - begin - 1;
        begin = end;
      }
    }
    for (int64_t r = 0; r < l.ring(); ++r)
      for (size_t level = L; level-- > 1;) out[size_t(l.global_rank(u, r))][level] -= out[size_t(l.global_rank(u, r))][level - 1];
  }
  return out;
}

void prepare_allgather(const Layout& l, const Topology& topo, const RingTraffic& traffic, PreparedLayout& p) {
  if (!l.plan(Pass::forward).has(Phase::allgather)) return;
  p.allgather_steps = l.ring() - 1;
  const std::vector<LevelBytes> peers = ring_group_peers(l, topo);
  for (const RankLayout& rl : l.ranks()) {
    // The layout counts a direct exchange: the rank's own shard once to each of R-1 peers.
    const int64_t shard = rl.allgather_bytes.send() / p.allgather_steps;
    p.allgather_block_bytes = std::max(p.allgather_block_bytes, shard);
    p.allgather_hops[traffic.hop_level[size_t(rl.rank)]] = 1;
    p.allgather_total += sent(rl.allgather_bytes);
    for (size_t level = 0; level < topo.levels(); ++level) p.allgather_levels[level] += shard * peers[size_t(rl.rank)][level];
  }
  for (size_t level = 0; level + 1 < topo.levels(); ++level)
    p.allgather_uplink[level] = traffic.uplink_hops[level] * p.allgather_block_bytes;
}

}  // namespace

PreparedLayout prepare(const Layout& l) {
  return prepare(l, Topology{{l.cluster().ranks_per_node, l.world()}, {}});
}

PreparedLayout prepare(const Layout& l, const Topology& topology, const PrepareOptions& options) {
  if (topology.levels() < 2 || topology.levels() > kMaxLevels || topology.level_ranks.back() < l.world())
    throw Error("a topology needs 2 to 8 levels, the last holding the whole cluster");
  PreparedLayout p;
  p.dtype = l.shape().dtype;
  p.elem_bytes = l.elem_bytes();
  p.topology = topology;
  prepare_exchanges(l, topology, p);
  if (l.ring() > 1) {
    const RingTraffic ring = ring_traffic(l, topology);
    prepare_ring(l, topology, ring, options.node_work, p);
    prepare_allgather(l, topology, ring, p);
  }
  std::vector<int64_t> flops_by_rank(static_cast<size_t>(l.world()), 0);
  const AttentionShape& shape = l.shape();
  p.call_head_dim = (shape.head_dim + shape.v_head_dim) / 2;
  for (const RankLayout& rl : l.ranks()) {
    p.ring_query_rows = std::max(p.ring_query_rows, l.shard_padded_tokens(rl.r));
    p.attention_batch_heads = std::max(p.attention_batch_heads, shape.batch * rl.q_heads.count());
    if (rl.flops > p.max_flops) {
      p.max_flops = rl.flops;
      p.useful_flops_of_max = rl.useful_flops;
      p.attention_query_rows = l.shard_padded_tokens(rl.r);
    }
    p.peak_bytes = std::max(p.peak_bytes, rl.peak_bytes);
    flops_by_rank[size_t(rl.rank)] = rl.flops;
  }
  p.attention_node = busiest_node(l, flops_by_rank);
  const int64_t stored = l.shape().total_tokens() + l.padding_tokens();
  p.padding_fraction = stored > 0 ? double(l.padding_tokens()) / double(stored) : 0.0;
  return p;
}

}  // namespace cptune::sim
