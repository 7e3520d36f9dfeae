#include "backends/exec/verify_output.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>

#include "backends/comm/comm.h"
#include "backends/exec/reference_bwd.h"
#include "backends/kernels/dtype_convert.h"

namespace cptune::backends {
namespace {

// Visible (query, key, head) triples of the whole shape: the reference's work for every row.
int64_t visible_triples(const AttentionShape& s) {
  int64_t pairs = 0;
  for (int64_t len : s.seq_lens) pairs += mask_pairs(s.mask, len, 0, len, 0, len);
  return pairs * s.batch * s.q_heads;
}

struct Row {
  RowId id;
  int64_t at;  // element offset of the row in the token-side tensor
};

// The rows to check: all of mine, or my share of a seeded sample: the first and last token of
// every run I hold (where shard boundaries go wrong), then uniform picks among my rows.
// Rows are (token, head) of a token-side tensor of `heads` x `dim` (O: q heads x Dv).
std::vector<Row> rows_to_check(const RankContext& c, const VerifyOptions& options, int64_t heads, int64_t dim) {
  const AttentionShape& s = c.shape;
  const int64_t B = c.batch, hq = heads, t_in = c.in_tokens;
  int64_t mine = 0;
  for (const TokenRun& run : c.me.input_runs) mine += run.count;
  const int64_t my_rows = B * mine * hq, all_rows = B * s.total_tokens() * hq;
  int64_t budget = options.rows;
  if (budget == 0) budget = visible_triples(s) <= kVerifyEveryRowPairs ? all_rows : kVerifySampledRows;
  std::vector<Row> rows;
  auto add = [&](int64_t b, int64_t run_offset, const TokenRun& run, int64_t t, int64_t h) {
    rows.push_back({{b, run.seq, run.begin + t, h}, ((b * t_in + run_offset + t) * hq + h) * dim});
  };
  if (budget >= all_rows) {
    for (int64_t b = 0; b < B; ++b) {
      int64_t offset = 0;
      for (const TokenRun& run : c.me.input_runs) {
        for (int64_t t = 0; t < run.count; ++t)  // real rows only; padding rows are not output
          for (int64_t h = 0; h < hq; ++h) add(b, offset, run, t, h);
        offset += run.padded;
      }
    }
    return rows;
  }
  if (my_rows == 0) return rows;
  std::mt19937_64 rng(options.seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(c.me.rank));
  auto pick = [&](int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(rng); };
  for (int64_t b = 0; b < B; ++b) {
    int64_t offset = 0;
    for (const TokenRun& run : c.me.input_runs) {
      if (run.count > 0) {
        add(b, offset, run, 0, pick(hq));
        add(b, offset, run, run.count - 1, pick(hq));
      }
      offset += run.padded;
    }
  }
  const int64_t quota = (budget * my_rows + all_rows - 1) / all_rows;
  for (int64_t i = static_cast<int64_t>(rows.size()); i < quota; ++i) {
    int64_t token = pick(B * mine), offset = 0;
    const int64_t b = token / mine;
    token %= mine;
    for (const TokenRun& run : c.me.input_runs) {
      if (token < run.count) {
        add(b, offset, run, token, pick(hq));
        break;
      }
      token -= run.count;
      offset += run.padded;
    }
  }
  return rows;
}

// A device tensor of storage dtype as fp32 on the host.
std::vector<float> download_float(const RankContext& c, const std::byte* tensor, int64_t elems) {
  std::vector<std::byte> stored(static_cast<size_t>(elems * c.elem_bytes));
  c.device.download(stored.data(), tensor, static_cast<int64_t>(stored.size()));
  std::vector<float> out(static_cast<size_t>(elems));
  to_float(stored.data(), c.shape.dtype, out.data(), elems);
  return out;
}

}  // namespace

RowCheck verify_output(const RankContext& c, const std::byte* o_out, const VerifyOptions& options) {
  const AttentionShape& s = c.shape;
  const int64_t group = s.q_heads / s.kv_heads, Dv = c.v_head_dim;
  std::vector<Row> rows = rows_to_check(c, options, s.q_heads, Dv);
  // Rows of one (sample, KV head) together: the reference generates their K,V once.
  std::sort(rows.begin(), rows.end(), [&](const Row& x, const Row& y) {
    return std::tuple(x.id.sample, x.id.head / group, x.at) < std::tuple(y.id.sample, y.id.head / group, y.at);
  });
  const std::vector<float> got = download_float(c, o_out, c.batch * c.in_tokens * s.q_heads * Dv);
  Reference reference(s, options.seed, options.inputs, c.device.rounds_probabilities());
  std::vector<double> want(static_cast<size_t>(Dv)), tol(want.size());
  RowCheck check;
  for (const Row& row : rows) {
    reference.row(row.id, want, tol);
    for (int64_t d = 0; d < Dv; ++d) check.add(std::fabs(double(got[static_cast<size_t>(row.at + d)]) - want[d]), tol[d]);
    ++check.rows;
  }
  return check;
}

GradientChecks verify_gradients(const RankContext& c, const TokenGradients& grads, const VerifyOptions& options,
                                int64_t storage_sums) {
  const AttentionShape& s = c.shape;
  const int64_t group = s.q_heads / s.kv_heads;
  struct Checked {
    const std::byte* data;
    int64_t heads, dim;
    RowCheck* check;
    void (BackwardReference::*row)(const RowId&, std::span<double>, std::span<double>);
  };
  GradientChecks out;
  const Checked tensors[] = {{grads.dq, s.q_heads, c.head_dim, &out.dq, &BackwardReference::dq_row},
                             {grads.dk, s.kv_heads, c.head_dim, &out.dk, &BackwardReference::dk_row},
                             {grads.dv, s.kv_heads, c.v_head_dim, &out.dv, &BackwardReference::dv_row}};
  struct Item {
    int which;  // index in tensors
    Row row;
    int64_t kv_head;
  };
  std::vector<Item> items;
  std::vector<std::vector<float>> got;
  for (int which = 0; which < 3; ++which) {
    const Checked& t = tensors[which];
    for (const Row& row : rows_to_check(c, options, t.heads, t.dim))
      items.push_back({which, row, which == 0 ? row.id.head / group : row.id.head});
    got.push_back(download_float(c, t.data, c.batch * c.in_tokens * t.heads * t.dim));
  }
  // Rows of one (sample, KV head) together: the reference computes them once.
  std::sort(items.begin(), items.end(), [](const Item& x, const Item& y) {
    return std::tuple(x.row.id.sample, x.kv_head, x.which, x.row.at) <
           std::tuple(y.row.id.sample, y.kv_head, y.which, y.row.at);
  });
  BackwardReference reference(s, options.seed, options.inputs, {c.device.rounds_probabilities(), storage_sums});
  std::vector<double> want, tol;
  for (const Item& item : items) {
    const Checked& t = tensors[item.which];
    want.resize(static_cast<size_t>(t.dim));
    tol.resize(want.size());
    (reference.*t.row)(item.row.id, want, tol);
    const std::vector<float>& values = got[static_cast<size_t>(item.which)];
    for (int64_t d = 0; d < t.dim; ++d)
      t.check->add(std::fabs(double(values[static_cast<size_t>(item.row.at + d)]) - want[static_cast<size_t>(d)]),
                   tol[static_cast<size_t>(d)]);
    ++t.check->rows;
  }
  return out;
}

std::vector<float> real_rows(const RankContext& c, const std::byte* tensor, int64_t heads, int64_t dim) {
  const std::vector<float> all = download_float(c, tensor, c.batch * c.in_tokens * heads * dim);
  std::vector<float> rows;
  const int64_t row = heads * dim;
  for (int64_t b = 0; b < c.batch; ++b) {
    int64_t offset = b * c.in_tokens;
    for (const TokenRun& run : c.me.input_runs) {
      rows.insert(rows.end(), all.begin() + offset * row, all.begin() + (offset + run.count) * row);
      offset += run.padded;
    }
  }
  return rows;
}

std::vector<float> gather_rows(const Layout& layout, std::span<const float> mine, int64_t row, Comm& world) {
  const AttentionShape& s = layout.shape();
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

RowCheck merge_checks(const RowCheck& mine, Comm& world) {
  const double sent[4] = {mine.max_abs_err, mine.max_tolerance, mine.worst_ratio, double(mine.rows)};
  std::vector<double> all(4 * static_cast<size_t>(world.size()));
  world.allgather_host(sent, sizeof(sent), all.data());
  RowCheck total;
  for (size_t r = 0; r < all.size(); r += 4)
    total.merge({all[r], all[r + 1], all[r + 2], static_cast<int64_t>(all[r + 3])});
  return total;
}

}  // namespace cptune::backends
