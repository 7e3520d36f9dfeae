#include "sim/topology.h"

#include <algorithm>

#include "core/error.h"

namespace cptune::sim {

size_t Topology::meet(int64_t a, int64_t b) const {
  for (size_t i = 0; i + 1 < levels(); ++i)
    if (instance(a, i) == instance(b, i)) return i;
  return levels() - 1;
}

Topology topology_of(const Hardware& hw, int64_t ranks_per_node, int64_t world) {
  Topology t;
  for (const Level& level : levels_of(hw, ranks_per_node)) {
    t.level_ranks.push_back(level.ranks > 0 ? level.ranks : world);
    t.staged_through_uplink.push_back(level.host_bounce && level.uplink_bytes_per_s > 0);
  }
  t.level_ranks.back() = std::max<int64_t>(world, 1);
  return t;
}

size_t level_count(const Hardware& hw) { return hw.levels.empty() ? 2 : hw.levels.size(); }

const LinkClass& level_link(const Hardware& hw, size_t level) {
  if (hw.levels.empty()) return level == 0 ? hw.intra : hw.inter;
  return hw.levels[level].link;
}

double level_bandwidth(const Hardware& hw, size_t level) {
  double bw = level_link(hw, level).bandwidth_bytes_per_s;
  if (!hw.levels.empty() && hw.levels[level].host_bounce) bw /= 2;
  if (hw.injection_bytes_per_s > 0) bw = std::min(bw, hw.injection_bytes_per_s);
  return bw;
}

double uplink_bandwidth(const Hardware& hw, size_t level) {
  if (hw.levels.empty() || hw.levels[level].uplink_bytes_per_s <= 0) return 0;
  return hw.levels[level].uplink_bytes_per_s / hw.levels[level].oversubscription;
}

std::string level_name(const Hardware& hw, size_t level) {
  if (hw.levels.empty()) return level == 0 ? "node" : "network";
  return hw.levels[level].name;
}

namespace {

// Bytes from a to b in one exchange are x[a] * y[b] * scale (a and b in the same Ulysses group).
struct RankOne {
  std::vector<int64_t> x, y;
  int64_t scale = 1;
};

RankOne rank_one(const Layout& l, Exchange which) {
  const AttentionShape& s = l.shape();
  RankOne f;
  f.x.resize(static_cast<size_t>(l.world()));
  f.y.resize(static_cast<size_t>(l.world()));
  for (const RankLayout& rl : l.ranks()) {
    const int64_t tokens = rl.input_padded_tokens;
    const int64_t in_width = rl.q_heads.count() * s.head_dim + rl.kv_heads.count() * (s.head_dim + s.v_head_dim);
    const size_t p = static_cast<size_t>(rl.rank);
    switch (which) {
      case Exchange::qkv:  // the token owner a sends its tokens of b's heads
        f.x[p] = tokens, f.y[p] = in_width;
        break;
      case Exchange::o:  // the head owner a returns its heads of b's tokens
        f.x[p] = rl.q_heads.count() * s.v_head_dim, f.y[p] = tokens;
        break;
      case Exchange::gather:  // every member's sequence lengths, one int64 each
        f.x[p] = f.y[p] = 1;
        break;
    }
  }
  f.scale = which == Exchange::gather ? 8 * static_cast<int64_t>(s.seq_lens.size()) : s.batch * l.elem_bytes();
  return f;
}

// Per level, the most loaded instance: max over instances of max(out, in).
int64_t busiest(const std::vector<int64_t>& out, const std::vector<int64_t>& in) {
  int64_t most = 0;
  for (size_t i = 0; i < out.size(); ++i) most = std::max({most, out[i], in[i]});
  return most;
}

}  // namespace

ExchangeTraffic exchange_traffic(const Layout& l, const Topology& t, Exchange which) {
  ExchangeTraffic out;
  const Phase phase = which == Exchange::qkv ? Phase::qkv : which == Exchange::o ? Phase::o : Phase::gather;
  if (!l.plan(Pass::forward).has(phase)) return out;  // the forward's plan says which exchanges run
  const RankOne f = rank_one(l, which);
  const size_t P = static_cast<size_t>(l.world()), L = t.levels();
  out.sent.assign(P, LevelBytes{});
  out.received.assign(P, LevelBytes{});
  out.peers.assign(P, LevelBytes{});
  const int64_t U = l.ulysses();
  std::vector<int64_t> group(static_cast<size_t>(U));
  // Cumulative counts first (members within the rank's instance of each level), per group.
  for (int64_t r = 0; r < l.ring(); ++r) {
    for (int64_t u = 0; u < U; ++u) group[size_t(u)] = l.global_rank(u, r);  // increasing in u
    for (size_t level = 0; level < L; ++level) {
      for (size_t begin = 0; begin < group.size();) {
        size_t end = begin;
        int64_t xs = 0, ys = 0;
        const int64_t inst = level + 1 == L ? 0 : t.instance(group[begin], level);
        while (end < group.size() && (level + 1 == L || t.instance(group[end], level) == inst)) {
          xs += f.x[size_t(group[end])];
          ys += f.y[size_t(group[end])];
          ++end;
        }
        for (size_t m = begin; m < end; ++m) {
          const size_t a = size_t(group[m]);
          out.sent[a][level] = f.x[a] * (ys - f.y[a]) * f.scale;
          out.received[a][level] = f.y[a] * (xs - f.x[a]) * f.scale;
          out.peers[a][level] = int64_t(end - begin) - 1;
        }
        begin = end;
      }
    }
  }
  // Uplinks: what each rank sends beyond its instance, summed per instance; where messages met
  // inside the instance are staged through host memory, those too.
  for (size_t level = 0; level + 1 < L; ++level) {
    const size_t instances = size_t((l.world() + t.level_ranks[level] - 1) / t.level_ranks[level]);
    std::vector<int64_t> up(instances, 0), down(instances, 0);
    const bool staged = t.staged(level);
    for (size_t a = 0; a < P; ++a) {
      const size_t inst = size_t(t.instance(int64_t(a), level));
      const size_t inside = staged ? level : level + 1;  // cumulative counts below this stay inside
      up[inst] += out.sent[a][L - 1] - (inside > 0 ? out.sent[a][inside - 1] : 0);
      down[inst] += out.received[a][L - 1] - (inside > 0 ? out.received[a][inside - 1] : 0);
    }
    out.uplink_bytes[level] = busiest(up, down);
  }
  // Cumulative -> first met at each level.
  for (size_t a = 0; a < P; ++a)
    for (size_t level = L; level-- > 1;) {
      out.sent[a][level] -= out.sent[a][level - 1];
      out.received[a][level] -= out.received[a][level - 1];
      out.peers[a][level] -= out.peers[a][level - 1];
    }
  return out;
}

RingTraffic ring_traffic(const Layout& l, const Topology& t) {
  RingTraffic out;
  const size_t P = static_cast<size_t>(l.world()), L = t.levels();
  out.hop_level.assign(P, 0);
  if (l.ring() < 2) return out;
  for (const RankLayout& rl : l.ranks()) out.hop_level[size_t(rl.rank)] = uint8_t(t.meet(rl.rank, l.ring_next(rl.rank)));
  for (size_t level = 0; level + 1 < L; ++level) {
    const size_t instances = size_t((l.world() + t.level_ranks[level] - 1) / t.level_ranks[level]);
    std::vector<int64_t> heads_up(instances, 0), heads_down(instances, 0), hops_up(instances, 0), hops_down(instances, 0);
    for (const RankLayout& rl : l.ranks()) {
      const size_t hop = out.hop_level[size_t(rl.rank)];
      if (hop < level || (hop == level && !t.staged(level))) continue;  // stays inside its instance
      const size_t from = size_t(t.instance(rl.rank, level)), to = size_t(t.instance(l.ring_next(rl.rank), level));
      heads_up[from] += rl.kv_heads.count();
      heads_down[to] += rl.kv_heads.count();
      ++hops_up[from];
      ++hops_down[to];
    }
    out.uplink_heads[level] = busiest(heads_up, heads_down);
    out.uplink_hops[level] = busiest(hops_up, hops_down);
  }
  return out;
}

}  // namespace cptune::sim
