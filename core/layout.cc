#include "core/layout.h"

#include <algorithm>
#include <cassert>
#include <climits>
#include <string>

#include "core/block_mask.h"
#include "core/block_placement.h"
#include "core/error.h"

namespace cptune {
namespace {

using std::to_string;

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }
int64_t round_up(int64_t a, int64_t m) { return ceil_div(a, m) * m; }

void require_positive(int64_t v, const char* what) {
  if (v < 1) throw Error(std::string(what) + " " + to_string(v) + " must be at least 1");
}

void validate_shape(const AttentionShape& s, const Cluster& m) {
  require_positive(s.batch, "batch");
  require_positive(s.q_heads, "query heads");
  require_positive(s.kv_heads, "kv heads");
  require_positive(s.head_dim, "head dim");
  require_positive(s.v_head_dim, "value head dim");
  if (s.seq_lens.empty()) throw Error("no sequence length given: the shape's sequence list is empty");
  check_world_limit(m.world);
  if (s.mask.kind == MaskKind::sliding_window && s.mask.window < 1)
    throw Error("sliding window " + to_string(s.mask.window) + " must be at least 1 token");
  for (int64_t len : s.seq_lens) require_positive(len, "sequence length");
  check_limits(view_of(s));  // every size bounded, GQA: the 128-bit sums below cannot overflow
  for (int64_t len : s.seq_lens) {
    if (len < m.world)
      throw Error("sequence length " + to_string(len) + " is smaller than world " + to_string(m.world) +
                  "; every rank needs at least one token of every sequence: use fewer ranks");
  }
  // Bound every byte and FLOP count up front so the arithmetic below cannot overflow.
  __int128 tokens = 0, square = 0;
  // Classic padding adds under 2P tokens a sequence; under a block mask under (N + 2R) U <= (N + 2) P.
  const int64_t pad_bound = 2 * m.world + (s.mask.kind == MaskKind::blocks ? s.mask.blocks->n() * m.world : 0);
  for (int64_t len : s.seq_lens) {
    const __int128 padded = static_cast<__int128>(len) + pad_bound;  // classic padding bound
    tokens += padded;
    square += padded * padded;
  }
  const __int128 width = static_cast<__int128>(s.q_heads) * (s.head_dim + s.v_head_dim) +
                         static_cast<__int128>(s.kv_heads) * (s.head_dim + s.v_head_dim);
  __int128 bytes = 0, flops = 0;  // every buffer held, with headroom; FLOPs of the whole shape
  const bool overflow =
      __builtin_mul_overflow(tokens * s.batch, width * 4 * 8, &bytes) ||
      __builtin_mul_overflow(square * s.batch, static_cast<__int128>(s.q_heads) * 2 * (s.head_dim + s.v_head_dim),
                             &flops);
  if (overflow || bytes > INT64_MAX || flops > INT64_MAX)
    throw Error("this shape's byte or FLOP counts overflow 64 bits (batch " + to_string(s.batch) + ", " +
                to_string(static_cast<int64_t>(std::min<__int128>(tokens, INT64_MAX))) +
                " tokens, head dims " + to_string(s.head_dim) + "/" + to_string(s.v_head_dim) +
                "); use smaller sizes");
}

std::string hybrid_hint(Strategy s) { return std::string(to_string(uneven_twin(s))); }

}  // namespace

int64_t RankLayout::send_bytes() const {
  return qkv_bytes.send() + o_bytes.send() + ring_bytes.send() + allgather_bytes.send() + gather_bytes.send();
}
int64_t RankLayout::recv_bytes() const {
  return qkv_bytes.recv() + o_bytes.recv() + ring_bytes.recv() + allgather_bytes.recv() + gather_bytes.recv();
}

Layout Layout::build(const LayoutSpec& spec) {
  Layout layout;
  layout.spec_ = spec;
  layout.spec_.choice = resolve(spec.choice, spec.cluster);
  validate_shape(spec.shape, spec.cluster);
  layout.zigzag_ = zigzag_chunks(spec.choice.strategy, spec.shape.mask);
  layout.place_heads();
  layout.place_tokens();
  layout.plan_ring_skips();
  layout.count_costs();
  return layout;
}



int64_t Layout::global_rank(int64_t u, int64_t r) const {
  return spec_.choice.order == RankOrder::ulysses_inner ? r * ulysses() + u : u * ring() + r;
}

void Layout::place_heads() {
  const AttentionShape& s = spec_.shape;
  const int64_t U = ulysses(), group = s.group_size();
  const std::string U_str = to_string(U);
  if (s.q_heads < U)
    throw Error(to_string(s.q_heads) + " query heads over Ulysses degree " + U_str +
                " would leave ranks without heads; use a Ulysses degree of at most " + to_string(s.q_heads));
  if (traits().pads_classic && s.q_heads % U != 0)
    throw Error(to_string(s.q_heads) + " query heads are not divisible by Ulysses degree " + U_str + "; use " +
                hybrid_hint(spec_.choice.strategy));
  if (spec_.choice.head_policy == HeadPolicy::kv_aligned && s.kv_heads < U)
    throw Error("kv-aligned head policy needs at least one kv head per Ulysses rank: " + to_string(s.kv_heads) +
                " kv heads < Ulysses degree " + U_str + "; use --head-policy balanced");
  q_heads_by_u_.resize(static_cast<size_t>(U));
  kv_heads_by_u_.resize(static_cast<size_t>(U));
  for (int64_t u = 0; u < U; ++u) {
    HeadRange q, kv;
    if (spec_.choice.head_policy == HeadPolicy::kv_aligned) {
      kv = {split_begin(s.kv_heads, U, u), split_begin(s.kv_heads, U, u) + split_size(s.kv_heads, U, u)};
      q = {kv.begin * group, kv.end * group};
    } else {
      q = {split_begin(s.q_heads, U, u), split_begin(s.q_heads, U, u) + split_size(s.q_heads, U, u)};
      kv = {q.begin / group, (q.end - 1) / group + 1};  // exactly the KV heads its Q heads use
    }
    q_heads_by_u_[static_cast<size_t>(u)] = q;
    kv_heads_by_u_[static_cast<size_t>(u)] = kv;
  }
  if (traits().pads_classic) {
    // Classic Ulysses is an equal all-to-all: every rank must get as many heads of each kind.
    for (int64_t u = 1; u < U; ++u) {
      if (q_heads_by_u_[u].count() != q_heads_by_u_[0].count() || kv_heads_by_u_[u].count() != kv_heads_by_u_[0].count())
        throw Error(to_string(s.kv_heads) + " kv heads (" + to_string(s.q_heads) + " query heads, " +
                    std::string(to_string(spec_.choice.head_policy)) + ") give unequal KV shards over Ulysses degree " + U_str +
                    "; classic Ulysses needs Hkv % U == 0 or U % Hkv == 0; use " + hybrid_hint(spec_.choice.strategy));
    }
  }
  max_q_heads_ = 0;
  for (const HeadRange& q : q_heads_by_u_) max_q_heads_ = std::max(max_q_heads_, q.count());
}

void Layout::place_tokens() {
  const AttentionShape& s = spec_.shape;
  const int64_t R = ring();
  init_ranks();
  shard_runs_by_r_.assign(static_cast<size_t>(R), {});
  shard_tokens_.assign(static_cast<size_t>(R), 0);
  shard_padded_.assign(static_cast<size_t>(R), 0);
  padded_len_.resize(s.seq_lens.size());
  padding_tokens_ = 0;
  // Block masks on rings get both the block placement and the skipping schedule (plan_ring_skips).
  ring_skips_ = s.mask.kind == MaskKind::blocks && traits().rotates_kv && R > 1 && R <= kMaxPlacedRing;
  if (ring_skips_) {
    place_blocks();
  } else {
    placement_ = zigzag_ ? "zigzag" : "contiguous";
    for (size_t seq = 0; seq < s.seq_lens.size(); ++seq) place_sequence(seq);
  }
}

// Every rank's mesh coordinates, node and heads; no tokens yet.
void Layout::init_ranks() {
  const int64_t U = ulysses(), R = ring();
  ranks_.assign(static_cast<size_t>(world()), RankLayout{});
  for (int64_t u = 0; u < U; ++u) {
    for (int64_t r = 0; r < R; ++r) {
      RankLayout& rl = ranks_[static_cast<size_t>(global_rank(u, r))];
      rl.rank = global_rank(u, r);
      rl.u = u;
      rl.r = r;
      rl.node = node_of(rl.rank);
      rl.q_heads = q_heads_by_u_[static_cast<size_t>(u)];
      rl.kv_heads = kv_heads_by_u_[static_cast<size_t>(u)];
      rl.input_runs.reserve(spec_.shape.seq_lens.size() * (zigzag_ ? 2 : 1));
    }
  }
}

// One sequence: its chunks go to the ring indices' shards, each chunk's pieces to the ranks of
// that ring index (the file comment above says how).
void Layout::place_sequence(size_t seq) {
  const int64_t U = ulysses(), R = ring();
  const int64_t chunks = zigzag_ ? 2 * R : R;
  const bool classic = traits().pads_classic;
  const int64_t len = spec_.shape.seq_lens[seq];
  const int64_t plen = classic ? round_up(len, chunks * U) : len;
  padded_len_[seq] = plen;
  padding_tokens_ += plen - len;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t owned[2] = {r, chunks - 1 - r};
    for (int64_t i = 0; i < (zigzag_ ? 2 : 1); ++i) {
      const int64_t c = owned[i];
      place_chunk(seq, r, classic ? c * (plen / chunks) : split_begin(len, chunks, c),
                  classic ? plen / chunks : split_size(len, chunks, c));
    }
  }
}

// Block masks on rotating strategies: the ranges of core/block_placement.h (zigzag for
// ring-zigzag, the balanced pick otherwise), each a chunk. Classic strategies pad every sequence
// to a multiple of M * U (M equal slots, each cut into U equal pieces).
void Layout::place_blocks() {
  const AttentionShape& s = spec_.shape;
  const int64_t U = ulysses(), R = ring();
  const bool classic = traits().pads_classic;
  PlacementProblem problem{s.mask, s.seq_lens, s.seq_lens, R, classic ? classic_units(s.mask.blocks->n(), R) : 0};
  for (size_t seq = 0; seq < s.seq_lens.size(); ++seq) {
    if (classic) problem.padded_lens[seq] = round_up(s.seq_lens[seq], problem.units * U);
    padded_len_[seq] = problem.padded_lens[seq];
    padding_tokens_ += padded_len_[seq] - s.seq_lens[seq];
  }
  const BlockPlacement placed =
      traits().zigzag_block_placement ? zigzag_placement(problem) : balanced_placement(problem);
  placement_ = placed.name;
  zigzag_ = placed.name == "zigzag";
  for (size_t seq = 0; seq < s.seq_lens.size(); ++seq)
    for (int64_t r = 0; r < R; ++r)
      for (auto [begin, end] : placed.ranges[seq][static_cast<size_t>(r)]) place_chunk(seq, r, begin, end - begin);
}

// Chunk [cb, cb + cl) of sequence seq joins ring index r's shard; its U pieces go to the ranks.
void Layout::place_chunk(size_t seq, int64_t r, int64_t cb, int64_t cl) {
  const int64_t U = ulysses();
  const bool classic = traits().pads_classic;
  const int64_t len = spec_.shape.seq_lens[seq];
  auto make_run = [&](int64_t begin, int64_t slot) {
    const int64_t real = std::clamp<int64_t>(len - begin, 0, slot);
    return TokenRun{static_cast<int32_t>(seq), begin, real, slot};
  };
  if (cl > 0) {
    TokenRun chunk = make_run(cb, cl);
    shard_runs_by_r_[static_cast<size_t>(r)].push_back(chunk);
    shard_tokens_[static_cast<size_t>(r)] += chunk.count;
    shard_padded_[static_cast<size_t>(r)] += chunk.padded;
  }
  for (int64_t u = 0; u < U; ++u) {
    const int64_t pb = cb + (classic ? u * (cl / U) : split_begin(cl, U, u));
    const int64_t pl = classic ? cl / U : split_size(cl, U, u);
    if (pl == 0) continue;
    RankLayout& rl = ranks_[static_cast<size_t>(global_rank(u, r))];
    TokenRun piece = make_run(pb, pl);
    rl.input_runs.push_back(piece);
    rl.input_tokens += piece.count;
    rl.input_padded_tokens += piece.padded;
  }
}

// Block masks on rotating strategies: for each run of each shard, the last ring step whose holder
// has a query that sees it (padding included, as the kernels compute); it is held up to that step
// and forwarded before it. A step computes when any held run is seen.
void Layout::plan_ring_skips() {
  if (!ring_skips_) return;  // set by place_tokens
  const int64_t R = ring();
  const size_t cells = static_cast<size_t>(R * R);
  ring_held_.assign(cells, {});
  ring_forward_.assign(cells, {});
  ring_forward_tokens_.assign(cells, 0);
  ring_computes_.assign(cells, 0);
  // Whether ring index t's queries see any key of run (padding included). Uneven runs lie in one
  // block each (core/block_placement.h), so that is a look at the cells of t's query blocks; on
  // a CAUSAL diagonal cell some query must come at or after the run's first key.
  const BlockTable& table = *spec_.shape.mask.blocks;
  const bool uneven = !traits().pads_classic;
  const auto block_at = [&](const TokenRun& run) { return block_of(spec_.shape.seq_lens[run.seq], table.n(), run.begin); };
  struct QueryBlock {
    int32_t seq;
    int64_t block, end;
  };
  std::vector<std::vector<QueryBlock>> queries(static_cast<size_t>(R));
  if (uneven)
    for (int64_t t = 0; t < R; ++t)
      for (const TokenRun& run : shard_runs(t)) queries[static_cast<size_t>(t)].push_back({run.seq, block_at(run), run.end()});
  const auto sees = [&](int64_t t, const TokenRun& run) {
    if (!uneven) return run_pairs(shard_runs(t), std::span(&run, 1), true) > 0;
    const int64_t kb = block_at(run);
    for (const QueryBlock& q : queries[static_cast<size_t>(t)]) {
      if (q.seq != run.seq) continue;
      const BlockKind cell = table.at(q.block, kb);
      if (cell == BlockKind::full || (cell == BlockKind::causal && (q.block > kb || (q.block == kb && q.end > run.begin))))
        return true;
    }
    return false;
  };
  for (int64_t src = 0; src < R; ++src) {
    const std::span<const TokenRun> runs = shard_runs(src);
    std::vector<int64_t> last(runs.size(), 0);  // steps after which no holder needs run j
    for (size_t j = 0; j < runs.size(); ++j) {
      for (int64_t d = R - 1; d > 0; --d) {
        if (sees((src + d) % R, runs[j])) {
          last[j] = d;
          break;
        }
      }
    }
    for (int64_t step = 0; step < R; ++step) {
      const int64_t r = (src + step) % R;
      const size_t at = static_cast<size_t>(r * R + step);
      for (size_t j = 0; j < runs.size(); ++j) {
        if (step == 0 || last[j] >= step) ring_held_[at].push_back(runs[j]);
        if (step + 1 < R && last[j] > step) {
          ring_forward_[at].push_back(runs[j]);
          ring_forward_tokens_[at] += runs[j].padded;
        }
      }
      ring_computes_[at] = std::any_of(ring_held_[at].begin(), ring_held_[at].end(), [&](const TokenRun& run) { return sees(r, run); });
    }
  }
}

std::pair<int64_t, int64_t> Layout::ulysses_peers_on_node(int64_t rank) const {
  const int64_t U = ulysses(), R = ring(), G = spec_.cluster.ranks_per_node;
  const RankLayout& rl = ranks_[static_cast<size_t>(rank)];
  const int64_t first = node_of(rank) * G, last = first + G;  // global ranks [first, last)
  int64_t lo, hi;
  if (spec_.choice.order == RankOrder::ulysses_inner) {  // g = r*U + u
    lo = first - rl.r * U;
    hi = last - rl.r * U;
  } else {  // g = u*R + r
    lo = ceil_div(first - rl.r, R);
    hi = ceil_div(last - rl.r, R);
  }
  return {std::clamp<int64_t>(lo, 0, U), std::clamp<int64_t>(hi, 0, U)};
}

std::pair<int64_t, int64_t> Layout::ring_peers_on_node(int64_t rank) const {
  const int64_t U = ulysses(), R = ring(), G = spec_.cluster.ranks_per_node;
  const RankLayout& rl = ranks_[static_cast<size_t>(rank)];
  const int64_t first = node_of(rank) * G, last = first + G;
  int64_t lo, hi;
  if (spec_.choice.order == RankOrder::ulysses_inner) {  // g = r*U + u
    lo = ceil_div(first - rl.u, U);
    hi = ceil_div(last - rl.u, U);
  } else {  // g = u*R + r
    lo = first - rl.u * R;
    hi = last - rl.u * R;
  }
  return {std::clamp<int64_t>(lo, 0, R), std::clamp<int64_t>(hi, 0, R)};
}

// Prefix sums the byte counts of every rank are read from in O(1): over Ulysses index u, the
// per-token Q,K,V widths of u's heads and the O widths; per ring index r, the stored input
// tokens of members u; over r, the shard tokens.
struct Layout::Prefixes {
  std::vector<int64_t> in_width, o_width, tokens, shards;
  int64_t max_shard = 0;
  int64_t range(const std::vector<int64_t>& prefix, size_t base, int64_t lo, int64_t hi) const {
    return prefix[base + static_cast<size_t>(hi)] - prefix[base + static_cast<size_t>(lo)];
  }
};

Layout::Prefixes Layout::prefixes() const {
  const AttentionShape& s = spec_.shape;
  const int64_t U = ulysses(), R = ring(), D = s.head_dim, Dv = s.v_head_dim;
  Prefixes p;
  p.in_width.assign(static_cast<size_t>(U) + 1, 0);
  p.o_width.assign(static_cast<size_t>(U) + 1, 0);
  for (int64_t u = 0; u < U; ++u) {
    const HeadRange q = q_heads_by_u_[u], kv = kv_heads_by_u_[u];
    p.in_width[u + 1] = p.in_width[u] + q.count() * D + kv.count() * (D + Dv);
    p.o_width[u + 1] = p.o_width[u] + q.count() * Dv;
  }
  p.tokens.assign(static_cast<size_t>((U + 1) * R), 0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t u = 0; u < U; ++u)
      p.tokens[r * (U + 1) + u + 1] = p.tokens[r * (U + 1) + u] + at(u, r).input_padded_tokens;
  p.shards.assign(static_cast<size_t>(R) + 1, 0);
  for (int64_t r = 0; r < R; ++r) {
    p.shards[r + 1] = p.shards[r] + shard_padded_[r];
    p.max_shard = std::max(p.max_shard, shard_padded_[r]);
  }
  return p;
}

void Layout::count_costs() {
  const Prefixes p = prefixes();
  // Each ring index's rows' visible pairs against their whole sequences, once for its U ranks:
  // stored rows (padding included, as the kernels compute) and real tokens only.
  const AttentionShape& s = spec_.shape;
  std::vector<int64_t> padded_pairs(static_cast<size_t>(ring()), 0), real_pairs(padded_pairs.size(), 0);
  for (int64_t r = 0; r < ring(); ++r)
    for (const TokenRun& run : shard_runs(r)) {
      const int64_t len = s.seq_lens[run.seq];
      padded_pairs[size_t(r)] += mask_pairs(s.mask, len, run.begin, run.begin + run.padded, 0, padded_len_[run.seq]);
      real_pairs[size_t(r)] += mask_pairs(s.mask, len, run.begin, run.begin + run.count, 0, len);
    }
  if (ring() > 1) placement_imbalance_ = imbalance(padded_pairs);
  ring_max_kv_heads_intra_.assign(static_cast<size_t>(ring()), 0);
  ring_max_kv_heads_inter_.assign(static_cast<size_t>(ring()), 0);
  // Bytes of the forward's phases, as its plan runs them (the backward's mirror them).
  const PhasePlan forward = plan(Pass::forward);
  const bool exchanges = forward.has(Phase::qkv), gathers = forward.has(Phase::gather);
  const bool rotates = forward.ring_attention(), allgathers = forward.has(Phase::allgather);
  for (RankLayout& rl : ranks_) {
    if (exchanges) count_ulysses_bytes(rl, p, gathers);
    if (rotates) count_ring_bytes(rl, p);
    if (allgathers) count_allgather_bytes(rl, p);
    rl.flops = attention_flops(padded_pairs[size_t(rl.r)], rl.q_heads.count());
    rl.useful_flops = attention_flops(real_pairs[size_t(rl.r)], rl.q_heads.count());
    count_memory(rl, p, rotates, allgathers);
  }
}

// The Ulysses all-to-alls (Q,K,V out, O back) and UAA's gather of sequence lengths.
void Layout::count_ulysses_bytes(RankLayout& rl, const Prefixes& p, bool gathers) const {
  const AttentionShape& s = spec_.shape;
  const int64_t U = ulysses(), B = s.batch, D = s.head_dim, Dv = s.v_head_dim, eb = elem_bytes();
  const int64_t u = rl.u, hq = rl.q_heads.count(), hkv = rl.kv_heads.count();
  const int64_t own_tokens = rl.input_padded_tokens;
  const size_t tbase = static_cast<size_t>(rl.r * (U + 1));
  auto [lo, hi] = ulysses_peers_on_node(rl.rank);
  const int64_t self_in = p.in_width[u + 1] - p.in_width[u], self_o = p.o_width[u + 1] - p.o_width[u];
  const int64_t my_in = hq * D + hkv * (D + Dv);
  const int64_t intra_in_width = p.range(p.in_width, 0, lo, hi) - self_in;
  const int64_t intra_o_width = p.range(p.o_width, 0, lo, hi) - self_o;
  const int64_t intra_tok = p.range(p.tokens, tbase, lo, hi) - own_tokens;
  const int64_t all_tok = p.tokens[tbase + U] - own_tokens;
  // Q,K,V: my tokens x peer's heads out; peers' tokens x my heads in.
  rl.qkv_bytes.send_intra = own_tokens * intra_in_width * B * eb;
  rl.qkv_bytes.send_inter = own_tokens * (p.in_width[U] - self_in - intra_in_width) * B * eb;
  rl.qkv_bytes.recv_intra = intra_tok * my_in * B * eb;
  rl.qkv_bytes.recv_inter = (all_tok - intra_tok) * my_in * B * eb;
  // O: peers' tokens x my heads out; my tokens x peers' heads in.
  rl.o_bytes.send_intra = intra_tok * hq * Dv * B * eb;
  rl.o_bytes.send_inter = (all_tok - intra_tok) * hq * Dv * B * eb;
  rl.o_bytes.recv_intra = own_tokens * intra_o_width * B * eb;
  rl.o_bytes.recv_inter = own_tokens * (p.o_width[U] - self_o - intra_o_width) * B * eb;
  if (gathers) {
    const int64_t length_bytes = 8 * static_cast<int64_t>(s.seq_lens.size());
    const int64_t intra_peers = hi - lo - 1, inter_peers = U - (hi - lo);
    rl.gather_bytes = {intra_peers * length_bytes, inter_peers * length_bytes, intra_peers * length_bytes,
                       inter_peers * length_bytes};
  }
}

// The K,V rotation, all R-1 steps: every shard but the receiver's own passes each link once.
void Layout::count_ring_bytes(RankLayout& rl, const Prefixes& p) {
  const int64_t R = ring(), r = rl.r, hkv = rl.kv_heads.count();
  const int64_t kv_width = kv_block_bytes(1, hkv);  // bytes per token of a K,V shard
  const bool next_intra = node_of(ring_next(rl.rank)) == rl.node;
  const bool prev_intra = node_of(ring_prev(rl.rank)) == rl.node;
  const int64_t all_shards = p.shards[R];
  int64_t sent = all_shards - shard_padded_[(r + 1) % R], received = all_shards - shard_padded_[r];
  if (ring_skips_) {  // only the runs really forwarded
    sent = received = 0;
    for (int64_t step = 0; step + 1 < R; ++step) {
      sent += ring_forward_tokens(r, step);
      received += ring_forward_tokens((r + R - 1) % R, step);
    }
  }
  (next_intra ? rl.ring_bytes.send_intra : rl.ring_bytes.send_inter) = sent * kv_width;
  (prev_intra ? rl.ring_bytes.recv_intra : rl.ring_bytes.recv_inter) = received * kv_width;
  auto& best = next_intra ? ring_max_kv_heads_intra_ : ring_max_kv_heads_inter_;
  best[r] = std::max(best[r], hkv);
}

// allgather-kv: a direct exchange, the rank's own shard once to each of R-1 peers.
void Layout::count_allgather_bytes(RankLayout& rl, const Prefixes& p) const {
  const int64_t R = ring(), r = rl.r;
  const int64_t kv_width = kv_block_bytes(1, rl.kv_heads.count());
  auto [lo, hi] = ring_peers_on_node(rl.rank);
  const int64_t own = shard_padded_[r];
  const int64_t intra_tok = p.range(p.shards, 0, lo, hi) - own;
  rl.allgather_bytes.send_intra = own * (hi - lo - 1) * kv_width;
  rl.allgather_bytes.send_inter = own * (R - (hi - lo)) * kv_width;
  rl.allgather_bytes.recv_intra = intra_tok * kv_width;
  rl.allgather_bytes.recv_inter = (p.shards[R] - own - intra_tok) * kv_width;
}

// Buffers held at once: input Q,K,V,O; post-all-to-all Q,K,V,O; K,V in flight; fp32 O + LSE.
void Layout::count_memory(RankLayout& rl, const Prefixes& p, bool rotates, bool allgathers) const {
  const AttentionShape& s = spec_.shape;
  const int64_t B = s.batch, D = s.head_dim, Dv = s.v_head_dim;
  const int64_t hq = rl.q_heads.count(), hkv = rl.kv_heads.count();
  const int64_t qkv_width_total = s.q_heads * (D + Dv) + s.kv_heads * (D + Dv);  // Q,K,V,O per token
  const int64_t shard = shard_padded_[rl.r];
  int64_t elems = rl.input_padded_tokens * B * qkv_width_total;
  if (ulysses() > 1) elems += shard * B * (hq * (D + Dv) + hkv * (D + Dv));
  int64_t kv_extra_tokens = 0;
  if (rotates) kv_extra_tokens = p.max_shard;
  if (allgathers) kv_extra_tokens = p.shards[ring()] - shard;
  rl.peak_bytes = elems * elem_bytes() + kv_block_bytes(kv_extra_tokens, hkv) + shard * B * hq * (Dv + 1) * 4;
}

std::span<const TokenRun> Layout::shard_runs(int64_t r) const { return shard_runs_by_r_[static_cast<size_t>(r)]; }

int64_t Layout::exchange_elems(Tensor t, int64_t from, int64_t to) const {
  const RankLayout& a = rank(from);
  const RankLayout& b = rank(to);
  if (a.r != b.r) return 0;
  const AttentionShape& s = spec_.shape;
  switch (t) {
    case Tensor::q:
      return a.input_padded_tokens * b.q_heads.count() * s.head_dim * s.batch;
    case Tensor::k:
      return a.input_padded_tokens * b.kv_heads.count() * s.head_dim * s.batch;
    case Tensor::v:
      return a.input_padded_tokens * b.kv_heads.count() * s.v_head_dim * s.batch;
    case Tensor::o:
      return b.input_padded_tokens * a.q_heads.count() * s.v_head_dim * s.batch;
  }
  return 0;
}

std::vector<int64_t> Layout::send_counts(Tensor t, int64_t rank_id) const {
  const RankLayout& rl = rank(rank_id);
  std::vector<int64_t> counts(static_cast<size_t>(ulysses()));
  for (int64_t u = 0; u < ulysses(); ++u) counts[u] = exchange_elems(t, rank_id, global_rank(u, rl.r));
  return counts;
}

std::vector<int64_t> Layout::recv_counts(Tensor t, int64_t rank_id) const {
  const RankLayout& rl = rank(rank_id);
  std::vector<int64_t> counts(static_cast<size_t>(ulysses()));
  for (int64_t u = 0; u < ulysses(); ++u) counts[u] = exchange_elems(t, global_rank(u, rl.r), rank_id);
  return counts;
}

int64_t Layout::ring_kv_source(int64_t r, int64_t step) const { return ((r - step) % ring() + ring()) % ring(); }

std::span<const TokenRun> Layout::ring_held_runs(int64_t r, int64_t step) const {
  if (ring_skips_) return ring_held_[static_cast<size_t>(r * ring() + step)];
  return shard_runs(ring_kv_source(r, step));
}

std::span<const TokenRun> Layout::ring_forward_runs(int64_t r, int64_t step) const {
  if (ring_skips_) return ring_forward_[static_cast<size_t>(r * ring() + step)];
  if (step + 1 >= ring()) return {};
  return shard_runs(ring_kv_source(r, step));
}

bool Layout::ring_step_computes(int64_t r, int64_t step) const {
  return !ring_skips_ || ring_computes_[static_cast<size_t>(r * ring() + step)] != 0;
}

int64_t Layout::ring_forward_tokens(int64_t r, int64_t step) const {
  if (ring_skips_) return ring_forward_tokens_[static_cast<size_t>(r * ring() + step)];
  return step + 1 < ring() ? shard_padded_[static_cast<size_t>(ring_kv_source(r, step))] : 0;
}

int64_t Layout::ring_next(int64_t rank_id) const {
  const RankLayout& rl = rank(rank_id);
  return global_rank(rl.u, (rl.r + 1) % ring());
}

int64_t Layout::ring_prev(int64_t rank_id) const {
  const RankLayout& rl = rank(rank_id);
  return global_rank(rl.u, (rl.r + ring() - 1) % ring());
}

int64_t Layout::run_pairs(std::span<const TokenRun> queries, std::span<const TokenRun> keys, bool padded) const {
  const auto pairs_of = [&](const TokenRun& q, const TokenRun& k) {
    const int64_t len = spec_.shape.seq_lens[static_cast<size_t>(q.seq)];
    return padded ? mask_pairs(spec_.shape.mask, len, q.begin, q.begin + q.padded, k.begin, k.begin + k.padded)
                  : mask_pairs(spec_.shape.mask, len, q.begin, q.end(), k.begin, k.end());
  };
  const auto by_seq = [](const TokenRun& a, const TokenRun& b) { return a.seq < b.seq; };
  int64_t total = 0;
  if (!std::is_sorted(queries.begin(), queries.end(), by_seq) || !std::is_sorted(keys.begin(), keys.end(), by_seq)) {
    for (const TokenRun& q : queries)
      for (const TokenRun& k : keys)
        if (q.seq == k.seq) total += pairs_of(q, k);
    return total;
  }
  // Runs in sequence order (every shard is): walk both lists once, pairing runs of one sequence.
  size_t j = 0;
  for (size_t i = 0; i < queries.size();) {
    const int32_t seq = queries[i].seq;
    size_t end = i;
    while (end < queries.size() && queries[end].seq == seq) ++end;
    while (j < keys.size() && keys[j].seq < seq) ++j;
    for (size_t k = j; k < keys.size() && keys[k].seq == seq; ++k)
      for (size_t q = i; q < end; ++q) total += pairs_of(queries[q], keys[k]);
    i = end;
  }
  return total;
}

int64_t Layout::pairs(std::span<const TokenRun> queries, std::span<const TokenRun> keys) const {
  return run_pairs(queries, keys, false);
}

RingStepMax Layout::ring_step_max(int64_t step) const {
  const int64_t R = ring();
  RingStepMax out;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t block_pairs = run_pairs(shard_runs(r), ring_held_runs(r, step), true);
    out.flops = std::max(out.flops, attention_flops(block_pairs, max_q_heads_));
    if (step + 1 < R && traits().rotates_kv) {
      const int64_t sent = ring_forward_tokens(r, step);  // the whole shard unless the mask skips
      out.send_bytes_intra = std::max(out.send_bytes_intra, kv_block_bytes(sent, ring_max_kv_heads_intra_[r]));
      out.send_bytes_inter = std::max(out.send_bytes_inter, kv_block_bytes(sent, ring_max_kv_heads_inter_[r]));
    }
  }
  return out;
}

}  // namespace cptune
