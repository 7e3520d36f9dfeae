// What an engine pays to ask the lookup library. Goals (issue 6): exact-hit query median
// <= 200 ns, nearest <= 10 us, opening a database of 100k measurements <= 300 ms.
// The database: 5,000 shapes (50 families x 100 sequence lengths) x 20 candidates, one
// fingerprint, written through db::Store into a temporary folder before the benchmarks run;
// and, for the worst case of opening, 100k shapes of one measurement each.
// Times are wall clock per call; queries cycle through 1,024 different shapes so the table
// is not all in L1. Report the median of the repetitions.
// Run: build/bench/bench_lookup --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>

#include "db/cptune_lookup.h"
#include "db/lookup.h"
#include "db/sqlite.h"
#include "db/store.h"

namespace {

using namespace cptune;
using namespace cptune::db;

constexpr int kFamilies = 50, kLengthsPerFamily = 100, kCandidates = 20;

const Fingerprint kFingerprint{"gloo", "cpu", Cluster{8, 8}, "gloo 0.5.0", "0.1.0"};

AttentionShape family_shape(int family, int64_t seq_len) {
  static const int64_t heads[] = {8, 16, 24, 32, 40, 48, 56, 64, 96, 128};
  const int64_t hq = heads[family % 10];
  static const Mask masks[] = {{MaskKind::full, 0},
                               {MaskKind::causal, 0},
                               {MaskKind::sliding_window, 1024},
                               {MaskKind::sliding_window, 4096},
                               {MaskKind::sliding_window, 8192}};
  return AttentionShape{1, {seq_len}, hq, hq / 8, 128, 128, DType::bf16, masks[family / 10 % 5]};
}

int64_t measured_length(int i) { return 1024 + int64_t(i) * 997; }

std::vector<LayoutChoice> candidates() {
  std::vector<LayoutChoice> out;
  for (Strategy s : kAllStrategies)
    for (HeadPolicy p : {HeadPolicy::balanced, HeadPolicy::kv_aligned})
      for (RankOrder o : {RankOrder::ulysses_inner, RankOrder::ring_inner})
        if (out.size() < size_t(kCandidates)) out.push_back({s, 2, 4, o, p});
  return out;
}

// Built once per process; removed at exit.
struct BenchDatabase {
  BenchDatabase() {
    char pattern[] = "/tmp/cptune_bench_lookup_XXXXXX";
    dir = mkdtemp(pattern);
    path = dir + "/tune.db";
    const auto start = std::chrono::steady_clock::now();
    Store store = Store::open(path);
    std::mt19937 rng(1);
    std::uniform_real_distribution<double> median(1e-4, 1e-1);
    const auto cands = candidates();
    for (int f = 0; f < kFamilies; ++f) {
      for (int i = 0; i < kLengthsPerFamily; ++i) {
        std::vector<MeasurementRow> rows;
        for (const LayoutChoice& c : cands) {
          MeasurementRow r;
          r.candidate = c;
          r.median_s = median(rng);
          r.min_s = r.median_s * 0.9;
          r.max_s = r.median_s * 1.2;
          r.iterations = 20;
          r.phase_medians_s = {{Phase::attention, r.median_s * 0.7}, {Phase::qkv, r.median_s * 0.3}};
          rows.push_back(std::move(r));
        }
        store.record_shape(kFingerprint, family_shape(f, measured_length(i)), rows);
      }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "bench_lookup: wrote %d measurements in %.2f s (%.0f per second, one transaction per shape)\n",
                 kFamilies * kLengthsPerFamily * kCandidates, seconds,
                 kFamilies * kLengthsPerFamily * kCandidates / seconds);
  }
  ~BenchDatabase() { std::filesystem::remove_all(dir); }
  std::string dir, path;
};

const BenchDatabase& database() {
  static const BenchDatabase db;
  return db;
}

// The worst case for opening: 100k measurements that are 100k different shapes, so the
// lookup loads 100k rows. Bulk-inserted in one transaction (a tuner would take hours).
struct WideDatabase {
  WideDatabase() {
    char pattern[] = "/tmp/cptune_bench_wide_XXXXXX";
    dir = mkdtemp(pattern);
    path = dir + "/wide.db";
    { Store::open(path); }  // the schema
    Connection conn(path, OpenMode::read_write);
    conn.exec(R"sql(
BEGIN;
INSERT INTO fingerprints (backend, device_model, world, ranks_per_node, nodes, library_versions, cptune_version)
  VALUES ('gloo', 'cpu', 8, 8, 1, 'gloo 0.5.0', '0.1.0');
INSERT INTO candidates (strategy, ulysses, ring, rank_order, head_policy)
  VALUES ('uaa', 8, 1, 'ulysses-inner', 'balanced');
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)
INSERT INTO shapes (batch, seq_lens, total_tokens, q_heads, kv_heads, head_dim, v_head_dim, dtype, mask)
  SELECT 1, CAST(1000 + i AS TEXT), 1000 + i, 32, 8, 128, 128, 'bf16', 'causal' FROM n;
INSERT INTO measurements (fingerprint_id, shape_id, candidate_id, median_s, min_s, max_s, iterations,
                          phase_medians_s, profile, measured_at)
  SELECT 1, id, 1, 1e-3, 1e-3, 1e-3, 10, '{}', '', '2025-01-01T00:00:00.000Z' FROM shapes;
COMMIT;
)sql");
  }
  ~WideDatabase() { std::filesystem::remove_all(dir); }
  std::string dir, path;
};

// 1,024 query shapes spread over every family; measured lengths or lengths in between.
std::vector<AttentionShape> queries(bool measured) {
  std::mt19937 rng(2);
  std::vector<AttentionShape> out;
  for (int q = 0; q < 1024; ++q) {
    const int i = int(rng() % kLengthsPerFamily);
    out.push_back(family_shape(int(rng() % kFamilies), measured_length(i) + (measured ? 0 : 311)));
  }
  return out;
}

void BM_OpenLookup100k(benchmark::State& state) {
  const std::string& path = database().path;
  for (auto _ : state) {
    Lookup lookup = Lookup::open(path, kFingerprint);
    benchmark::DoNotOptimize(lookup.shapes());
  }
  state.counters["shapes"] = double(Lookup::open(path, kFingerprint).shapes());
}
BENCHMARK(BM_OpenLookup100k)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_OpenLookup100kShapes(benchmark::State& state) {
  static const WideDatabase wide;
  for (auto _ : state) {
    Lookup lookup = Lookup::open(wide.path, kFingerprint);
    benchmark::DoNotOptimize(lookup.shapes());
  }
  state.counters["shapes"] = double(Lookup::open(wide.path, kFingerprint).shapes());
}
BENCHMARK(BM_OpenLookup100kShapes)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_Query(benchmark::State& state, bool measured) {
  const Lookup lookup = Lookup::open(database().path, kFingerprint);
  const std::vector<AttentionShape> shapes = queries(measured);
  std::vector<ShapeView> views;
  for (const AttentionShape& s : shapes) views.push_back(view_of(s));
  const Source expected = measured ? Source::exact : Source::nearest;
  size_t i = 0;
  for (auto _ : state) {
    const std::optional<Answer> a = lookup.query(views[i++ & 1023]);
    if (!a || a->source != expected) state.SkipWithError("unexpected answer");
    benchmark::DoNotOptimize(a);
  }
}
BENCHMARK_CAPTURE(BM_Query, exact_hit, true);
BENCHMARK_CAPTURE(BM_Query, nearest, false);

// The same exact hit through the C ABI an engine links: struct checks and name copies included.
void BM_CAbiExactHit(benchmark::State& state) {
  const cptune_fingerprint fp{sizeof(cptune_fingerprint), "gloo", "cpu", 8, 8, 1, nullptr, nullptr};
  cptune_lookup* lookup = nullptr;
  if (cptune_lookup_open(database().path.c_str(), &fp, &lookup) != CPTUNE_LOOKUP_OK) {
    state.SkipWithError(cptune_lookup_last_error());
    return;
  }
  const std::vector<AttentionShape> shapes = queries(true);
  std::vector<cptune_shape> c_shapes;
  std::vector<std::string> masks;
  masks.reserve(shapes.size());
  for (const AttentionShape& s : shapes) {
    masks.push_back(to_string(s.mask));
    c_shapes.push_back({sizeof(cptune_shape), s.batch, s.seq_lens.data(), s.seq_lens.size(), s.q_heads, s.kv_heads,
                        s.head_dim, s.v_head_dim, "bf16", masks.back().c_str()});
  }
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  size_t i = 0;
  for (auto _ : state) {
    if (cptune_lookup_query(lookup, &c_shapes[i++ & 1023], &choice) != CPTUNE_LOOKUP_OK)
      state.SkipWithError("unexpected status");
    benchmark::DoNotOptimize(choice);
  }
  cptune_lookup_close(lookup);
}
BENCHMARK(BM_CAbiExactHit);

// A block-sparse mask through the C ABI: its text in cptune_shape.mask, parsed on every query,
// or a cptune_lookup_mask made once and passed to cptune_lookup_query_masked. 100 measured
// lengths of one stream:64,1,8 family, next to the main database.
void BM_CAbiBlockMask(benchmark::State& state, bool made_once) {
  static const char* kMask = "stream:64,1,8";
  static const std::string path = [] {
    const std::string p = database().dir + "/blocks.db";
    Store store = Store::open(p);
    for (int i = 0; i < 100; ++i) {
      MeasurementRow r;
      r.candidate = candidates()[size_t(i) % candidates().size()];
      r.median_s = r.min_s = r.max_s = 1e-3;
      r.iterations = 1;
      store.record_shape(kFingerprint,
                         AttentionShape{1, {measured_length(i)}, 32, 4, 128, 128, DType::bf16, parse_mask(kMask)}, {r});
    }
    return p;
  }();
  const cptune_fingerprint fp{sizeof(cptune_fingerprint), "gloo", "cpu", 8, 8, 1, nullptr, nullptr};
  cptune_lookup* lookup = nullptr;
  cptune_lookup_mask* mask = nullptr;
  if (cptune_lookup_open(path.c_str(), &fp, &lookup) != CPTUNE_LOOKUP_OK ||
      cptune_lookup_mask_create(kMask, &mask) != CPTUNE_LOOKUP_OK) {
    state.SkipWithError(cptune_lookup_last_error());
    return;
  }
  std::vector<int64_t> lengths;
  for (int i = 0; i < 100; ++i) lengths.push_back(measured_length(i));
  cptune_shape shape{sizeof(cptune_shape), 1, nullptr, 1, 32, 4, 128, 128, "bf16", kMask};
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  size_t i = 0;
  for (auto _ : state) {
    shape.seq_lens = &lengths[i++ % 100];
    const int status = made_once ? cptune_lookup_query_masked(lookup, &shape, mask, &choice)
                                 : cptune_lookup_query(lookup, &shape, &choice);
    if (status != CPTUNE_LOOKUP_OK || choice.source != CPTUNE_LOOKUP_SOURCE_EXACT) state.SkipWithError("unexpected answer");
    benchmark::DoNotOptimize(choice);
  }
  cptune_lookup_mask_free(mask);
  cptune_lookup_close(lookup);
}
BENCHMARK_CAPTURE(BM_CAbiBlockMask, text_each_query, false);
BENCHMARK_CAPTURE(BM_CAbiBlockMask, made_once, true);

}  // namespace

BENCHMARK_MAIN();
