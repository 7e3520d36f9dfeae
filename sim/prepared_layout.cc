#include "sim/prepared_layout.h"

#include <algorithm>

namespace cptune::sim {
namespace {

// For every rank, how many members of its Ulysses group (same ring index r, itself included)
// sit on its node. One pass per group with a per-node tally: O(P) for the whole mesh.
std::vector<int64_t> ulysses_members_on_node(const Layout& l) {
  std::vector<int64_t> out(static_cast<size_t>(l.world()), 0);
  std::vector<int64_t> tally(static_cast<size_t>(l.nodes()), 0);
  for (int64_t r = 0; r < l.ring(); ++r) {
    for (int64_t u = 0; u < l.ulysses(); ++u) ++tally[static_cast<size_t>(l.node_of(l.global_rank(u, r)))];
    for (int64_t u = 0; u < l.ulysses(); ++u) {
      const int64_t g = l.global_rank(u, r);
      out[static_cast<size_t>(g)] = tally[static_cast<size_t>(l.node_of(g))];
    }
    for (int64_t u = 0; u < l.ulysses(); ++u) tally[static_cast<size_t>(l.node_of(l.global_rank(u, r)))] = 0;
  }
  return out;
}

int64_t self_exchange_bytes(const Layout& l, int64_t rank, std::initializer_list<Tensor> tensors) {
  int64_t elems = 0;
  for (Tensor t : tensors) elems += l.exchange_elems(t, rank, rank);
  return elems * l.elem_bytes();
}

// The seq->heads permutation around an all-to-all: the send buffer (peers' parts and the rank's
// own) is packed, read and written once, and the receive buffer unpacked the same way.
ExchangeLoad exchange_load(const LinkBytes& b, int64_t members_on_node, int64_t group, int64_t self_bytes) {
  ExchangeLoad e;
  e.intra_peers = members_on_node - 1;
  e.inter_peers = group - members_on_node;
  e.intra_bytes = std::max(b.send_intra, b.recv_intra);
  e.inter_bytes = std::max(b.send_inter, b.recv_inter);
  e.copy_bytes = 2 * (b.send() + self_bytes) + 2 * (b.recv() + self_bytes);
  return e;
}

bool covers(const ExchangeLoad& a, const ExchangeLoad& b) {
  return a.intra_peers >= b.intra_peers && a.inter_peers >= b.inter_peers && a.intra_bytes >= b.intra_bytes &&
         a.inter_bytes >= b.inter_bytes && a.copy_bytes >= b.copy_bytes;
}

// Keeps only loads no other load covers: the candidates for the slowest rank on any hardware.
void keep_maximal(std::vector<ExchangeLoad>& kept, const ExchangeLoad& load) {
  for (const ExchangeLoad& k : kept)
    if (covers(k, load)) return;
  std::erase_if(kept, [&](const ExchangeLoad& k) { return covers(load, k); });
  kept.push_back(load);
}

ClassBytes sent(const LinkBytes& b) { return {b.send_intra, b.send_inter}; }

void prepare_exchanges(const Layout& l, PreparedLayout& p) {
  if (l.ulysses() < 2) return;
  const std::vector<int64_t> on_node = ulysses_members_on_node(l);
  for (const RankLayout& rl : l.ranks()) {
    const int64_t members = on_node[static_cast<size_t>(rl.rank)];
    keep_maximal(p.qkv, exchange_load(rl.qkv_bytes, members, l.ulysses(),
                                      self_exchange_bytes(l, rl.rank, {Tensor::q, Tensor::k, Tensor::v})));
    keep_maximal(p.o, exchange_load(rl.o_bytes, members, l.ulysses(), self_exchange_bytes(l, rl.rank, {Tensor::o})));
    if (rl.gather_bytes.send() + rl.gather_bytes.recv() > 0) {
      ExchangeLoad lengths = exchange_load(rl.gather_bytes, members, l.ulysses(), 0);
      lengths.copy_bytes = 0;  // lengths land in place: nothing to permute
      keep_maximal(p.gather, lengths);
    }
    p.qkv_total += sent(rl.qkv_bytes);
    p.o_total += sent(rl.o_bytes);
    p.gather_total += sent(rl.gather_bytes);
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

// Query x key pairs of two shards with padding counted, as Layout::ring_step_max counts them
// for its FLOPs (the Layout keeps that count private; mask_pairs is its public building block).
int64_t padded_pairs(const Layout& l, std::span<const TokenRun> queries, std::span<const TokenRun> keys) {
  int64_t total = 0;
  for (const TokenRun& q : queries)
    for (const TokenRun& k : keys)
      if (q.seq == k.seq)
        total += mask_pairs(l.shape().mask, q.begin, q.begin + q.padded, k.begin, k.begin + k.padded);
  return total;
}

// Every rank's FLOPs at ring step k: its Q heads against the block of ring index r - k.
NodeWork ring_step_node(const Layout& l, int64_t step) {
  const AttentionShape& s = l.shape();
  std::vector<int64_t> block_pairs(static_cast<size_t>(l.ring()));
  for (int64_t r = 0; r < l.ring(); ++r)
    block_pairs[size_t(r)] = padded_pairs(l, l.shard_runs(r), l.shard_runs(l.ring_kv_source(r, step)));
  std::vector<int64_t> flops(static_cast<size_t>(l.world()));
  for (const RankLayout& rl : l.ranks())
    flops[size_t(rl.rank)] = block_pairs[size_t(rl.r)] * 2 * (s.head_dim + s.v_head_dim) * rl.q_heads.count() * s.batch;
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

void prepare_ring(const Layout& l, PreparedLayout& p) {
  if (!rotates_kv(l.strategy()) || l.ring() < 2) return;
  const int64_t merge = largest_merge_bytes(l);
  for (int64_t k = 0; k < l.ring(); ++k) {
    const RingStepMax m = l.ring_step_max(k);
    const RingStepLoad step{m.send_bytes_intra, m.send_bytes_inter, m.flops, k > 0 && m.flops > 0 ? merge : 0,
                            ring_step_node(l, k), 1};
    RingStepLoad* last = p.ring_steps.empty() ? nullptr : &p.ring_steps.back();
    if (last && last->intra_bytes == step.intra_bytes && last->inter_bytes == step.inter_bytes &&
        last->flops == step.flops && last->merge_bytes == step.merge_bytes && last->node == step.node)
      ++last->repeat;
    else
      p.ring_steps.push_back(step);
  }
  // Backward: after the last step each rank sends the dK,dV of its next neighbour's shard home.
  const AttentionShape& s = l.shape();
  for (const RankLayout& rl : l.ranks()) {
    const int64_t owner = (rl.r + 1) % l.ring();
    const int64_t block =
        l.shard_padded_tokens(owner) * s.batch * rl.kv_heads.count() * (s.head_dim + s.v_head_dim) * l.elem_bytes();
    const bool intra = l.node_of(l.ring_next(rl.rank)) == rl.node;
    int64_t& largest = intra ? p.ring_return_intra_bytes : p.ring_return_inter_bytes;
    largest = std::max(largest, block);
    (intra ? p.ring_return_total.intra : p.ring_return_total.inter) += block;
    p.ring_total += sent(rl.ring_bytes);
  }
}

void prepare_allgather(const Layout& l, PreparedLayout& p) {
  if (l.strategy() != Strategy::allgather_kv || l.ring() < 2) return;
  p.allgather_steps = l.ring() - 1;
  for (const RankLayout& rl : l.ranks()) {
    // The layout counts a direct exchange: the rank's own shard once to each of R-1 peers.
    p.allgather_block_bytes = std::max(p.allgather_block_bytes, rl.allgather_bytes.send() / p.allgather_steps);
    p.allgather_intra |= rl.allgather_bytes.recv_intra > 0;
    p.allgather_inter |= rl.allgather_bytes.recv_inter > 0;
    p.allgather_total += sent(rl.allgather_bytes);
  }
}

}  // namespace

PreparedLayout prepare(const Layout& l) {
  PreparedLayout p;
  p.dtype = l.shape().dtype;
  prepare_exchanges(l, p);
  prepare_ring(l, p);
  prepare_allgather(l, p);
  std::vector<int64_t> flops_by_rank(static_cast<size_t>(l.world()), 0);
  for (const RankLayout& rl : l.ranks()) {
    if (rl.flops > p.max_flops) {
      p.max_flops = rl.flops;
      p.useful_flops_of_max = rl.useful_flops;
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
