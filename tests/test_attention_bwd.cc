// Specification of the attention backward: the CPU kernel's dQ, dK, dV (attend_backward) lie
// within the derived tolerance of the double reference (reference_bwd.h) for every mask, head
// map, packing, split of queries and keys, dtype and instruction set; the reference itself is
// the gradient of the forward reference (finite differences); and gradients over split K,V
// blocks and split query sets add up to one call (the ring contract of attention_backward.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <tuple>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/exec/reference.h"
#include "backends/exec/reference_bwd.h"
#include "backends/exec/tensor_gen.h"
#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/cpu_isa.h"
#include "backends/kernels/dtype_convert.h"
#include "core/error.h"
#include "core/layout.h"

namespace cptune::backends {
namespace {

// ---- inputs as the executor makes them: tensor_gen, rounded to the storage dtype ------------------

struct Stored {
  std::vector<std::byte> bytes;
  DType dtype = DType::fp32;
  int64_t tokens = 0, heads = 0, dim = 0;
  TensorView view() const { return {bytes.data(), dtype, tokens, heads, dim}; }
};

// One sample of `shape`, every sequence whole and packed: heads [0, heads) of `tensor`.
Stored generated(const AttentionShape& shape, uint64_t seed, Tensor tensor, int64_t heads, int64_t dim,
                 const GivenInputs* given = nullptr) {
  std::vector<TokenRun> runs;
  for (size_t s = 0; s < shape.seq_lens.size(); ++s)
    runs.push_back({static_cast<int32_t>(s), 0, shape.seq_lens[s], shape.seq_lens[s]});
  const int64_t tokens = shape.total_tokens();
  std::vector<float> values(static_cast<size_t>(tokens * heads * dim));
  fill_input(values, seed, tensor, runs, 1, {0, heads}, dim, given);
  Stored out{std::vector<std::byte>(values.size() * static_cast<size_t>(dtype_bytes(shape.dtype))), shape.dtype,
             tokens, heads, dim};
  from_float(values.data(), shape.dtype, out.bytes.data(), static_cast<int64_t>(values.size()));
  return out;
}

// Everything a backward call reads, for one sample of `shape` on one device: Q, K, V, dO
// generated, the forward's LSE and its O stored in the dtype (as the executor keeps them), D.
struct Problem {
  AttentionShape shape;
  Stored q, k, v, d_out, o;
  std::vector<int64_t> seq_lens;
  std::vector<StoredRun> runs;  // whole sequences, packed
  std::vector<float> lse, delta;

  Problem(const AttentionShape& s, uint64_t seed, const GivenInputs* given = nullptr)
      : shape(s),
        q(generated(s, seed, Tensor::q, s.q_heads, s.head_dim, given)),
        k(generated(s, seed, Tensor::k, s.kv_heads, s.head_dim, given)),
        v(generated(s, seed, Tensor::v, s.kv_heads, s.v_head_dim, given)),
        d_out(generated(s, seed, kGradOutput, s.q_heads, s.v_head_dim, given)),
        seq_lens(s.seq_lens),
        runs(packed_runs(s.seq_lens)) {
    AttentionState state(q.tokens, s.q_heads, s.v_head_dim);
    attend(queries(), block(), params(), state);
    o = {std::vector<std::byte>(state.out().size() * static_cast<size_t>(dtype_bytes(s.dtype))), s.dtype, q.tokens,
         s.q_heads, s.v_head_dim};
    store_output(state, s.dtype, o.bytes.data(), static_cast<int64_t>(o.bytes.size()));
    lse.assign(state.lse().begin(), state.lse().end());
    delta.assign(lse.size(), 0.0f);
    compute_delta(o.view(), d_out.view(), runs, delta);
  }
  Queries queries() const { return {q.view(), runs}; }
  KvBlock block() const { return {k.view(), v.view(), runs}; }
  AttentionParams params() const { return {shape.mask, {0, 0, shape.group_size()}, {}, seq_lens}; }
  BackwardInputs inputs() const { return {d_out.view(), lse, delta}; }
};

struct Grads {
  GradBuffer dq, dk, dv;
  explicit Grads(const Problem& p)
      : dq(p.q.tokens, p.shape.q_heads, p.shape.head_dim),
        dk(p.k.tokens, p.shape.kv_heads, p.shape.head_dim),
        dv(p.v.tokens, p.shape.kv_heads, p.shape.v_head_dim) {}
  QueryGrads query() { return {dq.view()}; }
  KvGrads kv() { return {dk.view(), dv.view()}; }
};

using BackwardFn = void (*)(const Queries&, const KvBlock&, const AttentionParams&, const BackwardInputs&, QueryGrads,
                            KvGrads);

// One call over everything.
Grads one_call(const Problem& p, BackwardFn backward = attend_backward) {
  Grads g(p);
  backward(p.queries(), p.block(), p.params(), p.inputs(), g.query(), g.kv());
  return g;
}

// ---- the comparison: each stored gradient element against the reference --------------------------

// A gradient as the executor would write it: rounded to the storage dtype, widened back.
std::vector<float> stored_values(GradBuffer& g, DType dtype) {
  const int64_t elems = g.view().elems();
  std::vector<std::byte> bytes(static_cast<size_t>(elems * dtype_bytes(dtype)));
  store_gradient(g.view(), dtype, bytes.data(), static_cast<int64_t>(bytes.size()));
  std::vector<float> out(static_cast<size_t>(elems));
  to_float(bytes.data(), dtype, out.data(), elems);
  return out;
}

struct GradChecks {
  RowCheck dq, dk, dv;
  double worst() const { return std::max({dq.worst_ratio, dk.worst_ratio, dv.worst_ratio}); }
  std::string describe() const {
    return "worst error / tolerance: dQ " + std::to_string(dq.worst_ratio) + ", dK " + std::to_string(dk.worst_ratio) +
           ", dV " + std::to_string(dv.worst_ratio);
  }
};

// Every row of dQ, dK, dV (packed rows of p) against the reference of p's shape and seed.
GradChecks check_against(BackwardReference& ref, const Problem& p, Grads& got) {
  const AttentionShape& s = p.shape;
  const std::vector<float> dq = stored_values(got.dq, s.dtype), dk = stored_values(got.dk, s.dtype),
                           dv = stored_values(got.dv, s.dtype);
  GradChecks checks;
  std::vector<double> want, tol;
  const auto compare = [&](RowCheck& check, const std::vector<float>& values, int64_t at, int64_t dim) {
    for (int64_t d = 0; d < dim; ++d) check.add(std::fabs(double(values[static_cast<size_t>(at * dim + d)]) - want[d]), tol[d]);
    ++check.rows;
  };
  for (int64_t kv = 0; kv < s.kv_heads; ++kv)  // rows of one KV head together: one reference load
    for (const StoredRun& run : p.runs)
      for (int64_t t = 0; t < run.count; ++t) {
        const int64_t row = run.offset + t;
        for (int64_t g = 0; g < s.group_size(); ++g) {
          const int64_t h = kv * s.group_size() + g;
          want.resize(static_cast<size_t>(s.head_dim));
          tol.resize(want.size());
          ref.dq_row({0, run.seq, run.begin + t, h}, want, tol);
          compare(checks.dq, dq, row * s.q_heads + h, s.head_dim);
        }
        ref.dk_row({0, run.seq, run.begin + t, kv}, want, tol);
        compare(checks.dk, dk, row * s.kv_heads + kv, s.head_dim);
        want.resize(static_cast<size_t>(s.v_head_dim));
        tol.resize(want.size());
        ref.dv_row({0, run.seq, run.begin + t, kv}, want, tol);
        compare(checks.dv, dv, row * s.kv_heads + kv, s.v_head_dim);
      }
  return checks;
}

GradChecks check_against_reference(const Problem& p, Grads& got, uint64_t seed) {
  BackwardReference ref(p.shape, seed);
  return check_against(ref, p, got);
}

// ---- shapes -----------------------------------------------------------------------------------------

AttentionShape small_shape(std::vector<int64_t> seq_lens, Mask mask, DType dtype = DType::fp32) {
  AttentionShape s;
  s.seq_lens = std::move(seq_lens);
  s.q_heads = 4;
  s.kv_heads = 2;
  s.head_dim = 16;
  s.v_head_dim = 12;
  s.dtype = dtype;
  s.mask = std::move(mask);
  return s;
}

BlockTable random_table(std::mt19937_64& rng, int64_t n) {
  std::vector<BlockKind> cells(static_cast<size_t>(n * n));
  for (auto& c : cells) c = static_cast<BlockKind>(rng() % 3);
  return BlockTable(n, std::move(cells));
}

Mask random_mask(std::mt19937_64& rng, int64_t max_len) {
  switch (rng() % 6) {
    case 0: return Mask(MaskKind::full);
    case 1: return Mask(MaskKind::causal);
    case 2: return {MaskKind::sliding_window, 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(max_len + 8))};
    case 3: return parse_mask(rng() % 2 ? "star:5" : "strided:7,3");
    default: return block_mask(random_table(rng, 1 + static_cast<int64_t>(rng() % 10)));
  }
}

AttentionShape random_shape(std::mt19937_64& rng) {
  AttentionShape s;
  const int64_t sequences = 1 + static_cast<int64_t>(rng() % 3);
  const int64_t lens[] = {1, 2, 7, 63, 64, 65, 100, 129, 200};
  for (int64_t i = 0; i < sequences; ++i) s.seq_lens.push_back(lens[rng() % std::size(lens)]);
  s.kv_heads = 1 + static_cast<int64_t>(rng() % 2);
  s.q_heads = s.kv_heads * (1 + static_cast<int64_t>(rng() % 3));
  const int64_t dims[] = {8, 16, 40, 64};
  s.head_dim = dims[rng() % std::size(dims)];
  s.v_head_dim = dims[rng() % std::size(dims)];
  const DType dtypes[] = {DType::fp32, DType::bf16, DType::fp16};
  s.dtype = dtypes[rng() % 3];
  s.mask = random_mask(rng, *std::max_element(s.seq_lens.begin(), s.seq_lens.end()));
  return s;
}

// Query rows cut into uneven runs (pieces of every sequence, in their packed rows) and K,V rows
// cut into uneven blocks the same way: each (query piece, key block) pair is one call.
std::vector<std::vector<StoredRun>> random_pieces(std::mt19937_64& rng, std::span<const StoredRun> sequences,
                                                  int64_t pieces) {
  std::vector<std::vector<StoredRun>> out(static_cast<size_t>(pieces));
  for (const StoredRun& seq : sequences) {
    std::vector<int64_t> cuts{0, seq.count};
    for (int64_t i = 1; i < pieces; ++i) cuts.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(seq.count + 1)));
    std::sort(cuts.begin(), cuts.end());
    for (int64_t i = 0; i < pieces; ++i) {
      const int64_t lo = cuts[static_cast<size_t>(i)], hi = cuts[static_cast<size_t>(i + 1)];
      if (lo < hi) out[static_cast<size_t>(rng() % static_cast<uint64_t>(pieces))].push_back({seq.seq, lo, hi - lo, seq.offset + lo});
    }
  }
  return out;
}

// ---- the kernel against the reference -----------------------------------------------------------

// Random shapes: every mask kind (random block tables too), GQA groups, packed sequences, query
// rows and K,V rows cut into uneven runs (every (query set, K,V block) pair one call, adding into
// the same gradients), three dtypes, every instruction set this processor runs.
TEST(AttendBackward, EveryIsaMatchesTheReferenceOnRandomShapesAndSplits) {
  std::mt19937_64 rng(24);
  double worst[3] = {0, 0, 0};  // by dtype: what the tolerance leaves unused, printed below
  for (int trial = 0; trial < 96; ++trial) {
    const AttentionShape s = random_shape(rng);
    const Problem p(s, 1000 + static_cast<uint64_t>(trial));
    const int64_t q_sets = 1 + static_cast<int64_t>(rng() % 3), kv_blocks = 1 + static_cast<int64_t>(rng() % 4);
    const auto q_pieces = random_pieces(rng, p.runs, q_sets), kv_pieces = random_pieces(rng, p.runs, kv_blocks);
    BackwardReference ref(s, 1000 + static_cast<uint64_t>(trial));
    for (CpuIsa isa : runnable_cpu_isas()) {
      Grads g(p);
      for (const auto& q_runs : q_pieces)
        for (const auto& kv_runs : kv_pieces)
          cpu_kernels(isa).attend_backward({p.q.view(), q_runs}, {p.k.view(), p.v.view(), kv_runs}, p.params(),
                                           p.inputs(), g.query(), g.kv());
      const GradChecks c = check_against(ref, p, g);
      EXPECT_LE(c.worst(), 1.0) << to_string(isa) << " " << to_string(s) << " " << q_sets << " query sets x "
                                << kv_blocks << " K,V blocks: " << c.describe();
      double& w = worst[static_cast<int>(s.dtype)];
      w = std::max(w, c.worst());
    }
  }
  for (DType dtype : {DType::fp32, DType::bf16, DType::fp16})
    std::printf("%s: worst error / tolerance over dQ, dK, dV of every shape %.3f\n", std::string(to_string(dtype)).c_str(),
                worst[static_cast<int>(dtype)]);
}

// Lengths across the 64-row tile edges, every mask kind, one call.
TEST(AttendBackward, MatchesTheReferenceForEveryMaskAcrossTileEdges) {
  for (int64_t len : {1, 5, 63, 64, 65, 130})
    for (const Mask& mask : {Mask(MaskKind::full), Mask(MaskKind::causal), Mask{MaskKind::sliding_window, 1},
                             Mask{MaskKind::sliding_window, 9}, Mask{MaskKind::sliding_window, 70},
                             parse_mask("star:3"), parse_mask("strided:5,2"), parse_mask("stream:7,1,2"),
                             parse_mask("global-local:4,1,1")}) {
      const Problem p(small_shape({len, 37}, mask), static_cast<uint64_t>(len));
      Grads g = one_call(p);
      const GradChecks c = check_against_reference(p, g, static_cast<uint64_t>(len));
      EXPECT_LE(c.worst(), 1.0) << to_string(p.shape) << ": " << c.describe();
    }
}

// Each cell of a 3-block table alone, FULL and CAUSAL, lengths 1 to 8: a wrong boundary shows.
TEST(AttendBackward, EveryCellOfASmallTableMatchesTheReference) {
  for (int64_t len = 1; len <= 8; ++len)
    for (int64_t cell = 0; cell < 9; ++cell)
      for (BlockKind kind : {BlockKind::full, BlockKind::causal}) {
        std::vector<BlockKind> cells(9, BlockKind::empty);
        cells[static_cast<size_t>(cell)] = kind;
        const Problem p(small_shape({len}, block_mask(BlockTable(3, cells))), static_cast<uint64_t>(len * 10 + cell));
        Grads g = one_call(p);
        const GradChecks c = check_against_reference(p, g, static_cast<uint64_t>(len * 10 + cell));
        EXPECT_LE(c.worst(), 1.0) << to_string(p.shape) << ": " << c.describe();
      }
}

// The comparison can fail: the tolerance is far below the gradient, so a kernel missing one visible
// cell of a block table (the table with that cell EMPTY) fails it.
TEST(AttendBackward, AKernelMissingOneCellFailsTheTolerance) {
  const AttentionShape s = small_shape({150}, parse_mask("strided:6,2"), DType::bf16);
  const Problem p(s, 5);
  const BlockTable& table = *s.mask.blocks;
  for (int64_t cell = 0; cell < table.n() * table.n(); ++cell) {
    if (table.cells()[static_cast<size_t>(cell)] == BlockKind::empty) continue;
    std::vector<BlockKind> cells(table.cells().begin(), table.cells().end());
    cells[static_cast<size_t>(cell)] = BlockKind::empty;
    AttentionParams missing = p.params();
    missing.mask = block_mask(BlockTable(table.n(), cells));
    Grads g(p);
    attend_backward(p.queries(), p.block(), missing, p.inputs(), g.query(), g.kv());
    EXPECT_GT(check_against_reference(p, g, 5).worst(), 1.0) << "cell " << cell;
  }
}

// A forward LSE off by a little (what a wrong recomputation of P would do) fails the tolerance,
// for every dtype: P changes by the factor exp(-0.05).
TEST(AttendBackward, AnLseOffByOneTwentiethFailsTheTolerance) {
  for (DType dtype : {DType::fp32, DType::bf16, DType::fp16}) {
    Problem p(small_shape({90, 20}, Mask(MaskKind::causal), dtype), 8);
    for (float& x : p.lse) x += 0.05f;
    Grads g = one_call(p);
    EXPECT_GT(check_against_reference(p, g, 8).worst(), 1.0) << to_string(dtype);
  }
}

// GQA under every balanced head split (Hq = 6, Hkv = 2 over U = 1..6 ranks): a rank's Q heads
// may start mid-group; each rank's dK, dV of a KV head hold its own Q heads' share, and the
// shares of all ranks add up to the one-device dK, dV.
TEST(AttendBackward, HeadSplitsStartingMidGroupSumToTheWholeGroup) {
  AttentionShape s = small_shape({70, 33}, Mask(MaskKind::causal));
  s.q_heads = 6;
  s.kv_heads = 2;
  const Problem p(s, 12);
  Grads whole = one_call(p);
  const int64_t group = s.group_size();
  for (int64_t ulysses = 1; ulysses <= s.q_heads; ++ulysses) {
    std::vector<float> dk_sum(whole.dk.values().size()), dv_sum(whole.dv.values().size());
    for (int64_t u = 0; u < ulysses; ++u) {
      const int64_t q_begin = split_begin(s.q_heads, ulysses, u), q_end = q_begin + split_size(s.q_heads, ulysses, u);
      if (q_begin == q_end) continue;
      const int64_t kv_begin = q_begin / group, kv_end = (q_end - 1) / group + 1;
      const auto slice = [&](const Stored& t, int64_t begin, int64_t end) {
        Stored out{{}, t.dtype, t.tokens, end - begin, t.dim};
        const int64_t head_bytes = t.dim * dtype_bytes(t.dtype);
        for (int64_t token = 0; token < t.tokens; ++token) {
          const std::byte* row = t.bytes.data() + token * t.heads * head_bytes;
          out.bytes.insert(out.bytes.end(), row + begin * head_bytes, row + end * head_bytes);
        }
        return out;
      };
      const Stored q = slice(p.q, q_begin, q_end), k = slice(p.k, kv_begin, kv_end), v = slice(p.v, kv_begin, kv_end),
                   d_out = slice(p.d_out, q_begin, q_end);
      std::vector<float> lse, delta;
      for (int64_t row = 0; row < p.q.tokens; ++row)
        for (int64_t h = q_begin; h < q_end; ++h) {
          lse.push_back(p.lse[static_cast<size_t>(row * s.q_heads + h)]);
          delta.push_back(p.delta[static_cast<size_t>(row * s.q_heads + h)]);
        }
      GradBuffer dq(q.tokens, q.heads, q.dim), dk(k.tokens, k.heads, k.dim), dv(v.tokens, v.heads, v.dim);
      attend_backward({q.view(), p.runs}, {k.view(), v.view(), p.runs}, {s.mask, {q_begin, kv_begin, group}, {}, p.seq_lens},
                      {d_out.view(), lse, delta}, {dq.view()}, {dk.view(), dv.view()});
      for (int64_t row = 0; row < p.q.tokens; ++row) {
        for (int64_t h = q_begin; h < q_end; ++h)
          for (int64_t d = 0; d < s.head_dim; ++d)
            ASSERT_NEAR(dq.row(row, h - q_begin)[d], whole.dq.row(row, h)[d], 1e-6) << "U=" << ulysses << " u=" << u;
        for (int64_t kv = kv_begin; kv < kv_end; ++kv) {
          for (int64_t d = 0; d < s.head_dim; ++d)
            dk_sum[static_cast<size_t>((row * s.kv_heads + kv) * s.head_dim + d)] += dk.row(row, kv - kv_begin)[d];
          for (int64_t d = 0; d < s.v_head_dim; ++d)
            dv_sum[static_cast<size_t>((row * s.kv_heads + kv) * s.v_head_dim + d)] += dv.row(row, kv - kv_begin)[d];
        }
      }
    }
    for (size_t i = 0; i < dk_sum.size(); ++i) ASSERT_NEAR(dk_sum[i], whole.dk.values()[i], 1e-5) << "U=" << ulysses;
    for (size_t i = 0; i < dv_sum.size(); ++i) ASSERT_NEAR(dv_sum[i], whole.dv.values()[i], 1e-5) << "U=" << ulysses;
  }
}

// ---- the ring contract --------------------------------------------------------------------------

// K,V cut at random rows into blocks copied to their own buffers (as a ring's peer sends them),
// each block's dK, dV in its own buffer travelling with it, queries cut into sets (ranks): every
// (set, block) pair one call, in random order. dQ summed over blocks and each block's dK, dV
// summed over the query sets equal one call over everything (fp32 rounding apart).
TEST(AttendBackward, SplitKvBlocksAndQuerySetsSumToOneCall) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    AttentionShape s = small_shape({1 + static_cast<int64_t>(rng() % 150), 1 + static_cast<int64_t>(rng() % 80)},
                                   random_mask(rng, 150));
    const Problem p(s, static_cast<uint64_t>(trial));
    Grads whole = one_call(p);

    const auto blocks = random_pieces(rng, p.runs, 1 + static_cast<int64_t>(rng() % 5));
    const auto q_sets = random_pieces(rng, p.runs, 1 + static_cast<int64_t>(rng() % 3));
    GradBuffer dq(p.q.tokens, s.q_heads, s.head_dim);
    std::vector<float> dk(whole.dk.values().size()), dv(whole.dv.values().size());
    for (const auto& block_runs : blocks) {
      // The block's rows copied into its own K, V and its own dK, dV.
      Stored k{{}, s.dtype, 0, s.kv_heads, s.head_dim}, v{{}, s.dtype, 0, s.kv_heads, s.v_head_dim};
      std::vector<StoredRun> local;
      for (const StoredRun& run : block_runs) {
        for (auto [from, to] : {std::pair{&p.k, &k}, {&p.v, &v}}) {
          const int64_t row_bytes = from->heads * from->dim * dtype_bytes(s.dtype);
          const std::byte* first = from->bytes.data() + run.offset * row_bytes;
          to->bytes.insert(to->bytes.end(), first, first + run.count * row_bytes);
        }
        local.push_back({run.seq, run.begin, run.count, k.tokens});
        k.tokens += run.count;
        v.tokens += run.count;
      }
      GradBuffer block_dk(k.tokens, s.kv_heads, s.head_dim), block_dv(v.tokens, s.kv_heads, s.v_head_dim);
      std::vector<size_t> order(q_sets.size());
      std::iota(order.begin(), order.end(), size_t{0});
      std::shuffle(order.begin(), order.end(), rng);
      for (size_t i : order)
        attend_backward({p.q.view(), q_sets[i]}, {k.view(), v.view(), local}, p.params(), p.inputs(), {dq.view()},
                        {block_dk.view(), block_dv.view()});
      // Home again: the block's rows back at their packed rows.
      for (size_t r = 0; r < local.size(); ++r)
        for (int64_t t = 0; t < local[r].count; ++t)
          for (int64_t h = 0; h < s.kv_heads; ++h) {
            const int64_t home = block_runs[r].offset + t, here = local[r].offset + t;
            std::copy_n(block_dk.row(here, h), s.head_dim, dk.data() + (home * s.kv_heads + h) * s.head_dim);
            std::copy_n(block_dv.row(here, h), s.v_head_dim, dv.data() + (home * s.kv_heads + h) * s.v_head_dim);
          }
    }
    const auto near = [](std::span<const float> got, std::span<const float> want) {
      for (size_t i = 0; i < got.size(); ++i)
        if (!(std::fabs(got[i] - want[i]) <= 2e-6f * (1 + std::fabs(want[i]))))
          return ::testing::AssertionFailure() << "element " << i << ": " << got[i] << " vs " << want[i];
      return ::testing::AssertionSuccess();
    };
    EXPECT_TRUE(near(dq.values(), whole.dq.values())) << "dQ " << to_string(s);
    EXPECT_TRUE(near(dk, whole.dk.values())) << "dK " << to_string(s);
    EXPECT_TRUE(near(dv, whole.dv.values())) << "dV " << to_string(s);
  }
}

// Rows that saw no key in the forward (LSE -inf: causal queries before every key of the block,
// another sequence) get no gradient and give none, and nothing becomes NaN.
TEST(AttendBackward, RowsThatSawNothingAddNothing) {
  const Problem p(small_shape({40, 40}, Mask(MaskKind::causal)), 3);
  const StoredRun early{0, 0, 16, 0}, late{0, 16, 24, 16}, other{1, 0, 40, 40};
  // LSE -inf everywhere: the queries saw nothing in the forward, even where this block has keys
  // they could see (early against early), and a P of exp(s + inf) must not appear.
  std::vector<float> lse(p.lse.size(), -std::numeric_limits<float>::infinity());
  for (const auto& [queries, keys] : {std::pair{early, late}, {early, other}, {early, early}}) {
    Grads g(p);
    attend_backward({p.q.view(), {&queries, 1}}, {p.k.view(), p.v.view(), {&keys, 1}}, p.params(),
                    {p.d_out.view(), lse, p.delta}, g.query(), g.kv());
    for (const GradBuffer* b : {&g.dq, &g.dk, &g.dv})
      EXPECT_TRUE(std::all_of(b->values().begin(), b->values().end(), [](float x) { return x == 0.0f; }));
  }
}

// ---- the reference is the gradient of the forward ------------------------------------------------

// L = sum over rows and dims of dO . O, from the forward reference in double.
double loss(const AttentionShape& s, const GivenInputs& given) {
  Reference forward(s, 0, &given);
  std::vector<double> o(static_cast<size_t>(s.v_head_dim)), tol(o.size());
  double sum = 0;
  for (int64_t h = 0; h < s.q_heads; ++h)
    for (size_t seq = 0; seq < s.seq_lens.size(); ++seq)
      for (int64_t i = 0; i < s.seq_lens[seq]; ++i) {
        forward.row({0, static_cast<int64_t>(seq), i, h}, o, tol);
        for (int64_t d = 0; d < s.v_head_dim; ++d)
          sum += o[static_cast<size_t>(d)] *
                 given.d_out[static_cast<size_t>(((given.offsets[seq] + i) * s.q_heads + h) * s.v_head_dim + d)];
      }
  return sum;
}

// Central differences of the forward reference's loss by every element of Q, K, V (fp32 inputs,
// steps of 2^-12 made exact in fp32) against dQ, dK, dV of the backward reference, on small
// shapes with GQA, two sequences and each mask kind: they agree to 1e-6, the differences' own
// error (h^2 terms). A reference with a wrong term (say dS without - D) would be off by O(1).
TEST(BackwardReference, IsTheGradientOfTheForwardReference) {
  for (const Mask& mask : {Mask(MaskKind::full), Mask(MaskKind::causal), Mask{MaskKind::sliding_window, 3},
                           parse_mask("strided:3,1")}) {
    AttentionShape s = small_shape({7, 5}, mask);
    s.q_heads = 4;
    s.kv_heads = 2;
    s.head_dim = 3;
    s.v_head_dim = 2;
    GivenInputs given;
    given.total_tokens = s.total_tokens();
    given.offsets = {0, 7};
    given.q_heads = s.q_heads;
    given.kv_heads = s.kv_heads;
    given.head_dim = s.head_dim;
    given.v_head_dim = s.v_head_dim;
    std::mt19937_64 rng(99);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (auto [t, heads, dim] : {std::tuple{&given.q, s.q_heads, s.head_dim}, {&given.k, s.kv_heads, s.head_dim},
                                 {&given.v, s.kv_heads, s.v_head_dim}, {&given.d_out, s.q_heads, s.v_head_dim}}) {
      t->resize(static_cast<size_t>(s.total_tokens() * heads * dim));
      for (float& x : *t) x = 2 * uniform(rng);  // scores of size ~2: softmax far from uniform
    }
    BackwardReference ref(s, 0, &given);
    const auto check = [&](std::vector<float>& values, Tensor tensor, int64_t heads, int64_t dim) {
      std::vector<double> want(static_cast<size_t>(dim)), tol(want.size());
      for (size_t seq = 0; seq < s.seq_lens.size(); ++seq)
        for (int64_t i = 0; i < s.seq_lens[seq]; ++i)
          for (int64_t h = 0; h < heads; ++h) {
            const RowId id{0, static_cast<int64_t>(seq), i, h};
            if (tensor == Tensor::q) ref.dq_row(id, want, tol);
            else if (tensor == Tensor::k) ref.dk_row(id, want, tol);
            else ref.dv_row(id, want, tol);
            for (int64_t d = 0; d < dim; ++d) {
              float& x = values[static_cast<size_t>(((given.offsets[seq] + i) * heads + h) * dim + d)];
              const float x0 = x, up = x0 + 0x1.0p-12f, down = x0 - 0x1.0p-12f;
              x = up;
              const double l_up = loss(s, given);
              x = down;
              const double l_down = loss(s, given);
              x = x0;
              const double numeric = (l_up - l_down) / (double(up) - double(down));
              EXPECT_NEAR(numeric, want[static_cast<size_t>(d)], 1e-6)
                  << "d" << (tensor == Tensor::q ? "Q" : tensor == Tensor::k ? "K" : "V") << " seq " << seq << " pos "
                  << i << " head " << h << " dim " << d << " " << to_string(mask);
            }
          }
    };
    check(given.q, Tensor::q, s.q_heads, s.head_dim);
    check(given.k, Tensor::k, s.kv_heads, s.head_dim);
    check(given.v, Tensor::v, s.kv_heads, s.v_head_dim);
  }
}

// The tolerance is tight enough to mean something: in fp32 every element's tolerance is below
// 1% of the largest |dQ| of its row, and in bf16 (whose stored gradients are rounded by
// up to 2^-9 relative) the kernel's worst error uses a real share of it.
TEST(BackwardReference, ToleranceIsFarBelowTheGradientsYetUsedByTheKernel) {
  for (DType dtype : {DType::fp32, DType::bf16}) {
    const AttentionShape s = small_shape({300}, Mask(MaskKind::causal), dtype);
    const Problem p(s, 4);
    BackwardReference ref(s, 4);
    std::vector<double> want(static_cast<size_t>(s.head_dim)), tol(want.size());
    double worst = 0;  // largest tolerance / row's largest |dQ|
    for (int64_t i = 0; i < 300; ++i) {
      ref.dq_row({0, 0, i, 1}, want, tol);
      double row_max = 0;
      for (double w : want) row_max = std::max(row_max, std::fabs(w));
      if (row_max > 0) worst = std::max(worst, *std::max_element(tol.begin(), tol.end()) / row_max);
    }
    Grads g = one_call(p);
    const GradChecks c = check_against(ref, p, g);
    std::printf("%s: tolerance / row max |dQ| <= %.3g; kernel %s\n", std::string(to_string(dtype)).c_str(), worst,
                c.describe().c_str());
    if (dtype == DType::fp32) {
      EXPECT_LT(worst, 1e-2);  // 0.003 measured: a worst-case bound over up to 300 keys
    } else {
      EXPECT_GT(c.worst(), 0.01) << c.describe();
    }
    EXPECT_LE(c.worst(), 1.0) << c.describe();
  }
}

// ---- user errors --------------------------------------------------------------------------------

void expect_error_naming(const std::function<void()>& call, const std::string& text) {
  try {
    call();
    ADD_FAILURE() << "no Error; expected one naming '" << text << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(AttendBackward, BadArgumentsThrowErrorNamingTheValue) {
  const Problem p(small_shape({10}, Mask(MaskKind::causal)), 1);
  Grads g(p);
  BackwardInputs short_lse = p.inputs();
  short_lse.lse = short_lse.lse.subspan(1);
  expect_error_naming([&] { attend_backward(p.queries(), p.block(), p.params(), short_lse, g.query(), g.kv()); },
                      "LSE holds 39 values");
  BackwardInputs narrow_do = p.inputs();
  narrow_do.d_out.dim = 5;
  expect_error_naming([&] { attend_backward(p.queries(), p.block(), p.params(), narrow_do, g.query(), g.kv()); },
                      "dO is 10 tokens x 4 heads x 5 dims");
  KvGrads wrong = g.kv();
  wrong.dv.dim = 16;
  expect_error_naming([&] { attend_backward(p.queries(), p.block(), p.params(), p.inputs(), g.query(), wrong); },
                      "dV is 10 tokens x 2 heads x 16 dims");
  std::vector<float> delta(3);
  expect_error_naming([&] { compute_delta(p.o.view(), p.d_out.view(), p.runs, delta); }, "D holds 3 values");
  std::vector<std::byte> small(8);
  expect_error_naming([&] { store_gradient(g.dq.view(), DType::bf16, small.data(), 8); }, "8 bytes");
}

// ctest runs this program once more per instruction set (tests/CMakeLists.txt): the public
// attend_backward() then runs that variant; one this processor cannot run is skipped.
class ForcedCpuIsa : public ::testing::Environment {
 public:
  void SetUp() override {
    const char* forced = std::getenv("CPTUNE_CPU_ISA");
    if (forced != nullptr && *forced != '\0' && !cpu_can_run(parse_cpu_isa(forced)))
      GTEST_SKIP() << "CPTUNE_CPU_ISA=" << forced << ": this processor cannot run it";
  }
};
[[maybe_unused]] const auto* const forced_cpu_isa = ::testing::AddGlobalTestEnvironment(new ForcedCpuIsa);

}  // namespace
}  // namespace cptune::backends
