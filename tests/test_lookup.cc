// db::Lookup and its C ABI: exact, nearest, simulated and not-found answers, fingerprint
// scoping, an allocation-free exact hit, status codes for every misuse, and the installed
// library used from C through pkg-config and find_package.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <random>
#include <sstream>

#include "core/error.h"
#include "tests/command.h"
#include "tests/temp_dir.h"
#include "db/cptune_lookup.h"
#include "db/local_fingerprint.h"
#include "db/lookup.h"
#include "db/sim_fallback.h"
#include "sim/candidates.h"
#include "cptune/version.h"
#include "db/store.h"

// Counts every allocation of this program, to show that an exact hit makes none. delete is
// replaced with new, so a sanitizer sees malloc paired with free.
namespace {
std::atomic<int64_t> allocations{0};
}
void* operator new(size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
// std::stable_sort (the simulator's ranking) takes its buffer from the nothrow form and returns
// it through the sized delete below: replaced too, or AddressSanitizer sees its new freed by free.
void* operator new(size_t size, const std::nothrow_t&) noexcept {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(size ? size : 1);
}
// GCC pairs new with delete by name and does not see that both are replaced here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace cptune::db {
namespace {

using testing::TempDir;

Fingerprint cpu_fingerprint(int64_t world = 4) { return {"gloo", "cpu", Cluster{world, world}, "gloo 0.5.0", "0.1.0"}; }

AttentionShape shape_of(std::vector<int64_t> seq_lens, int64_t hq = 32, int64_t hkv = 8, Mask mask = {MaskKind::causal, 0}) {
  return AttentionShape{1, std::move(seq_lens), hq, hkv, 128, 128, DType::bf16, mask};
}

const LayoutChoice kUaa{Strategy::uaa, 4, 1, RankOrder::ulysses_inner, HeadPolicy::balanced};
const LayoutChoice kZigzag{Strategy::ring_zigzag, 1, 4, RankOrder::ulysses_inner, HeadPolicy::balanced};
const LayoutChoice kHybrid{Strategy::hybrid_uaa, 2, 2, RankOrder::ring_inner, HeadPolicy::kv_aligned};

MeasurementRow measurement(const LayoutChoice& c, double median_s) {
  MeasurementRow r;
  r.candidate = c;
  r.median_s = r.min_s = r.max_s = median_s;
  r.iterations = 5;
  return r;
}

BestRow best_row(const AttentionShape& shape, const LayoutChoice& c, double median_s) {
  return BestRow{1, shape, Pass::forward, c, median_s, 1};
}

TEST(LookupExact, AMeasuredShapeAnswersItsWinnerWithSourceExact) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  {
    Store store = Store::open(path);
    store.record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(kUaa, 3e-3), measurement(kZigzag, 2e-3)});
    store.record_shape(cpu_fingerprint(), shape_of({77, 4097}), {measurement(kHybrid, 1e-3), measurement(kUaa, 4e-3)});
  }
  const Lookup lookup = Lookup::open(path, cpu_fingerprint());
  EXPECT_EQ(lookup.shapes(), 2u);
  const auto a = lookup.query(shape_of({4096}));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->source, Source::exact);
  EXPECT_EQ(a->choice.strategy, Strategy::ring_zigzag);
  EXPECT_EQ(a->choice.ring, 4);
  EXPECT_EQ(a->time_s, 2e-3);
  EXPECT_EQ(a->measured_tokens, 4096);
  const auto packed = lookup.query(shape_of({77, 4097}));
  ASSERT_TRUE(packed);
  EXPECT_EQ(packed->source, Source::exact);
  EXPECT_EQ(packed->choice.strategy, Strategy::hybrid_uaa);
  EXPECT_EQ(packed->choice.order, RankOrder::ring_inner);
  EXPECT_EQ(packed->choice.head_policy, HeadPolicy::kv_aligned);
  EXPECT_EQ(packed->choice.ulysses, 2);
  // The same tokens packed in another order are another shape: nearest, not exact.
  EXPECT_EQ(lookup.query(shape_of({4097, 77}))->source, Source::nearest);
}

TEST(LookupExact, EveryMeasuredShapeOfALargeSweepIsFoundExactly) {
  std::vector<BestRow> rows;
  std::mt19937 rng(1);
  std::uniform_int_distribution<int64_t> len(1, 1 << 20);
  for (int i = 0; i < 5000; ++i) {
    std::vector<int64_t> seqs(size_t(1 + i % 3));
    for (int64_t& s : seqs) s = len(rng);
    rows.push_back(best_row(shape_of(seqs, 8 << (i % 3), 8, {MaskKind::sliding_window, 1 + i % 5}), kUaa, double(i)));
  }
  const Lookup lookup(rows);
  for (const BestRow& row : rows) {
    const auto a = lookup.query(row.shape);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->source, Source::exact);
    if (row.median_s == a->time_s) continue;
    // Only a duplicate shape drawn twice may answer with its first row's time.
    EXPECT_TRUE(std::any_of(rows.begin(), rows.end(),
                            [&](const BestRow& r) { return r.shape == row.shape && r.median_s == a->time_s; }));
  }
}

TEST(LookupExact, AnExactHitAllocatesNothing) {
  std::vector<BestRow> rows;
  for (int64_t s = 1024; s <= (1 << 20); s *= 2) rows.push_back(best_row(shape_of({s, 77}), kUaa, 1e-3));
  const Lookup lookup(rows);
  const std::vector<int64_t> seqs = {65536, 77};
  const ShapeView view{1, seqs, 32, 8, 128, 128, DType::bf16, {MaskKind::causal, 0}};
  const int64_t before = allocations.load();
  std::optional<Answer> a;
  for (int i = 0; i < 1000; ++i) a = lookup.query(view);
  EXPECT_EQ(allocations.load(), before);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->source, Source::exact);
}

TEST(LookupNearest, PicksTheMeasuredLengthClosestInLogDistanceForEveryQuery) {
  const std::vector<int64_t> measured = {1000, 4000, 16000, 64000, 250000};
  std::vector<BestRow> rows;
  for (size_t i = 0; i < measured.size(); ++i) rows.push_back(best_row(shape_of({measured[i]}), kUaa, double(i)));
  const Lookup lookup(rows);
  for (int64_t q = 1; q < 2'000'000; q = q * 11 / 10 + 1) {
    if (std::find(measured.begin(), measured.end(), q) != measured.end()) continue;
    const auto distance = [&](size_t i) { return std::abs(std::log(double(q) / double(measured[i]))); };
    size_t expected = 0;
    for (size_t i = 1; i < measured.size(); ++i)
      if (distance(i) <= distance(expected)) expected = i;  // a tie goes to the longer
    const auto a = lookup.query(shape_of({q}));
    ASSERT_TRUE(a) << q;
    EXPECT_EQ(a->source, Source::nearest) << q;
    EXPECT_EQ(a->measured_tokens, measured[expected]) << q;
    EXPECT_EQ(a->time_s, double(expected)) << q;
  }
}

// An exact tie in log distance (as the lookup computes it, in double): found by search, since
// log(q) - log(a) == log(b) - log(q) holds in floating point only for some a, q, b = q^2 / a.
TEST(LookupNearest, AnExactTieGoesToTheLonger) {
  int ties = 0;
  for (int64_t a = 2; a < 400 && ties < 20; ++a)
    for (int64_t k = 2; k < 6 && ties < 20; ++k) {
      const int64_t q = a * k, b = a * k * k;
      const double lq = std::log(double(q));
      if (lq - std::log(double(a)) != std::log(double(b)) - lq) continue;
      ++ties;
      const Lookup lookup({best_row(shape_of({a}), kUaa, 1.0), best_row(shape_of({b}), kZigzag, 2.0)});
      const auto answer = lookup.query(shape_of({q}));
      ASSERT_TRUE(answer) << q;
      EXPECT_EQ(answer->source, Source::nearest) << q;
      EXPECT_EQ(answer->measured_tokens, b) << "a tie between " << a << " and " << b << " at " << q;
    }
  EXPECT_EQ(ties, 20) << "too few exact ties: the test would not see a flipped tie-break";
}

TEST(LookupNearest, UsesTheSumOfAPackedBatchsLengths) {
  const Lookup lookup({best_row(shape_of({8192}), kUaa, 1.0), best_row(shape_of({1024}), kZigzag, 2.0)});
  const auto a = lookup.query(shape_of({4000, 4000, 100}));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->source, Source::nearest);
  EXPECT_EQ(a->measured_tokens, 8192);
}

TEST(LookupNearest, NeverCrossesAFamily) {
  const Lookup lookup({best_row(shape_of({4096}), kUaa, 1.0)});
  ASSERT_EQ(lookup.query(shape_of({5000}))->source, Source::nearest);
  std::vector<AttentionShape> other_families;
  for (int field = 0; field < 8; ++field) {
    AttentionShape s = shape_of({5000});
    switch (field) {
      case 0: s.batch = 2; break;
      case 1: s.q_heads = 24; break;
      case 2: s.kv_heads = 4; break;
      case 3: s.head_dim = 64; break;
      case 4: s.v_head_dim = 64; break;
      case 5: s.dtype = DType::fp16; break;
      case 6: s.mask = {MaskKind::full, 0}; break;
      case 7: s.mask = {MaskKind::sliding_window, 4096}; break;
    }
    EXPECT_FALSE(lookup.query(s)) << to_string(s);
  }
}

TEST(LookupSimulated, TheFallbackAnswersOnlyWhenTheFamilyHasNoMeasurement) {
  int calls = 0;
  AttentionShape asked;
  Fallback simulator = [&](const AttentionShape& shape) -> std::optional<Answer> {
    ++calls;
    asked = shape;
    return Answer{Strategy::ring, 1, 4, RankOrder::ulysses_inner, HeadPolicy::balanced, 5e-3, Source::exact, 99};
  };
  const Lookup lookup({best_row(shape_of({4096}), kUaa, 1e-3)}, simulator);
  EXPECT_EQ(lookup.query(shape_of({4096}))->source, Source::exact);
  EXPECT_EQ(lookup.query(shape_of({9000}))->source, Source::nearest);
  EXPECT_EQ(calls, 0);
  const auto a = lookup.query(shape_of({9000}, 48, 8));
  ASSERT_TRUE(a);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(asked, shape_of({9000}, 48, 8));
  EXPECT_EQ(a->source, Source::simulated);
  EXPECT_EQ(a->choice.strategy, Strategy::ring);
  EXPECT_EQ(a->time_s, 5e-3);
  EXPECT_EQ(a->measured_tokens, 0);
}

TEST(LookupSimulated, WithoutFallbackOrWhenTheFallbackHasNoPickTheAnswerIsNotFound) {
  EXPECT_FALSE(Lookup({best_row(shape_of({4096}), kUaa, 1e-3)}).query(shape_of({4096}, 48, 8)));
  const Lookup none({}, [](const AttentionShape&) { return std::optional<Answer>(); });
  EXPECT_FALSE(none.query(shape_of({4096})));
}

// Block masks are part of the shape: equal tables (whatever names them) are one family, and a
// table with one cell changed is another.
TEST(LookupMasks, ABlockMaskFindsItsOwnRowsAndNoOtherTablesByStoreAndSimulator) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  const Mask star = parse_mask("star:16"), strided = parse_mask("strided:16,4");
  {
    Store store = Store::open(path);
    store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, star), {measurement(kZigzag, 1e-3)});
    store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, strided), {measurement(kHybrid, 2e-3)});
  }
  const Lookup lookup = Lookup::open(path, cpu_fingerprint(), simulator_fallback(sim::load_hardware("cpu-gloo"), {4, 4}));
  // The star's cells written out: the same mask.
  std::string rows = "C" + std::string(15, '.');
  for (int q = 1; q < 16; ++q) rows += "/F" + std::string(size_t(q - 1), '.') + "C" + std::string(size_t(15 - q), '.');
  const Mask star_cells = parse_mask("blocks:16:" + rows);
  for (const Mask& m : {star, star_cells}) {
    const auto exact = lookup.query(shape_of({4096}, 32, 8, m));
    ASSERT_TRUE(exact);
    EXPECT_EQ(exact->source, Source::exact);
    EXPECT_EQ(exact->choice, kZigzag);
    const auto near = lookup.query(shape_of({6000}, 32, 8, m));
    ASSERT_TRUE(near);
    EXPECT_EQ(near->source, Source::nearest);
    EXPECT_EQ(near->choice, kZigzag);
  }
  EXPECT_EQ(lookup.query(shape_of({4096}, 32, 8, strided))->choice, kHybrid);
  // One cell changed, another N, the causal mask: other families, answered by the simulator.
  std::string changed = rows;
  changed[changed.find('.')] = 'F';
  for (const Mask& other : {parse_mask("blocks:16:" + changed), parse_mask("star:8"), Mask{MaskKind::causal, 0}}) {
    const auto a = lookup.query(shape_of({4096}, 32, 8, other));
    ASSERT_TRUE(a) << to_string(other);
    EXPECT_EQ(a->source, Source::simulated) << to_string(other);
    EXPECT_EQ(a->choice.ulysses * a->choice.ring, 4);
  }
}

TEST(LookupFingerprint, ALookupNeverReturnsARowOfAnotherFingerprint) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  Fingerprint nccl = cpu_fingerprint();
  nccl.backend = "nccl";
  {
    Store store = Store::open(path);
    store.record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(kUaa, 1e-3), measurement(kZigzag, 2e-3)});
    store.record_shape(nccl, shape_of({4096}), {measurement(kUaa, 2e-3), measurement(kZigzag, 1e-3)});
    store.record_shape(nccl, shape_of({4096}, 64, 8), {measurement(kHybrid, 1e-3)});
  }
  EXPECT_EQ(Lookup::open(path, cpu_fingerprint()).query(shape_of({4096}))->choice.strategy, Strategy::uaa);
  EXPECT_EQ(Lookup::open(path, nccl).query(shape_of({4096}))->choice.strategy, Strategy::ring_zigzag);
  // The gloo fingerprint measured no 64-head shape: no answer borrowed from nccl.
  EXPECT_FALSE(Lookup::open(path, cpu_fingerprint()).query(shape_of({4096}, 64, 8)));
  const Lookup elsewhere = Lookup::open(path, cpu_fingerprint(8));
  EXPECT_EQ(elsewhere.shapes(), 0u);
  EXPECT_FALSE(elsewhere.fingerprint_id());
  EXPECT_FALSE(elsewhere.query(shape_of({4096})));
}

TEST(LookupFiles, OpensReadOnlyAndLeavesTheFileAsItWas) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  { Store::open(path).record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(kUaa, 1e-3)}); }
  std::ifstream in(path, std::ios::binary);
  const std::string before((std::istreambuf_iterator<char>(in)), {});
  const auto mtime = std::filesystem::last_write_time(path);
  { Lookup::open(path, cpu_fingerprint()); }
  std::ifstream again(path, std::ios::binary);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(again)), {}), before);
  EXPECT_EQ(std::filesystem::last_write_time(path), mtime);
}

TEST(LookupFiles, OpensWhileATunerHoldsTheDatabaseAndSeesEveryCommittedShape) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  Store tuner = Store::open(path);
  tuner.record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(kUaa, 1e-3)});
  EXPECT_EQ(Lookup::open(path, cpu_fingerprint()).shapes(), 1u);
  tuner.record_shape(cpu_fingerprint(), shape_of({8192}), {measurement(kZigzag, 1e-3)});
  const Lookup lookup = Lookup::open(path, cpu_fingerprint());
  EXPECT_EQ(lookup.shapes(), 2u);
  EXPECT_EQ(lookup.query(shape_of({8192}))->choice.strategy, Strategy::ring_zigzag);
}

TEST(LookupFiles, AMissingOrNonDatabaseFileIsAnError) {
  TempDir dir;
  EXPECT_THROW(Lookup::open(dir.file("missing.db"), cpu_fingerprint()), Error);
  std::ofstream(dir.file("notes.txt")) << std::string(5000, 'n');
  EXPECT_THROW(Lookup::open(dir.file("notes.txt"), cpu_fingerprint()), Error);
}

// --- the C ABI --------------------------------------------------------------------------------

class CAbi : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("tune.db");
    Store store = Store::open(path_);
    store.record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(kUaa, 3e-3), measurement(kHybrid, 2e-3)});
  }
  cptune_fingerprint fingerprint() const {
    return {sizeof(cptune_fingerprint), "gloo", "cpu", 4, 4, 1, nullptr, nullptr};
  }
  cptune_shape shape(const int64_t* seq_lens, size_t n, const char* mask = "causal") const {
    return {sizeof(cptune_shape), 1, seq_lens, n, 32, 8, 128, 0, "bf16", mask};
  }
  cptune_lookup* open() {
    const cptune_fingerprint fp = fingerprint();
    cptune_lookup* lookup = nullptr;
    EXPECT_EQ(cptune_lookup_open(path_.c_str(), &fp, &lookup), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
    return lookup;
  }

  TempDir dir_;
  std::string path_;
};

TEST_F(CAbi, AnswersExactAndNearestWithNamesAndSource) {
  cptune_lookup* lookup = open();
  ASSERT_NE(lookup, nullptr);
  EXPECT_EQ(cptune_lookup_shapes(lookup), 1u);
  const int64_t exact_len = 4096, near_len = 5000;
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  cptune_shape s = shape(&exact_len, 1);
  ASSERT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_OK);
  EXPECT_STREQ(choice.strategy, "hybrid-uaa");
  EXPECT_STREQ(choice.rank_order, "ring-inner");
  EXPECT_STREQ(choice.head_policy, "kv-aligned");
  EXPECT_EQ(choice.ulysses, 2);
  EXPECT_EQ(choice.ring, 2);
  EXPECT_EQ(choice.time_s, 2e-3);
  EXPECT_EQ(choice.source, CPTUNE_LOOKUP_SOURCE_EXACT);
  EXPECT_STREQ(cptune_lookup_source_name(choice.source), "exact");
  s = shape(&near_len, 1);
  ASSERT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(choice.source, CPTUNE_LOOKUP_SOURCE_NEAREST);
  EXPECT_EQ(choice.measured_tokens, 4096);
  s = shape(&exact_len, 1, "full");
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_NOT_FOUND);
  cptune_lookup_close(lookup);
}

TEST_F(CAbi, WithASimulatorAFamilyWithoutMeasurementsGetsTheSimulatorsPick) {
  const cptune_fingerprint fp = fingerprint();
  cptune_lookup* lookup = nullptr;
  ASSERT_EQ(cptune_lookup_open_with_simulator(path_.c_str(), &fp, "cpu-gloo", &lookup), CPTUNE_LOOKUP_OK)
      << cptune_lookup_last_error();
  const int64_t len = 4096;
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  cptune_shape measured = shape(&len, 1);
  ASSERT_EQ(cptune_lookup_query(lookup, &measured, &choice), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(choice.source, CPTUNE_LOOKUP_SOURCE_EXACT);  // measurements still win
  cptune_shape unmeasured = shape(&len, 1, "full");
  ASSERT_EQ(cptune_lookup_query(lookup, &unmeasured, &choice), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(choice.source, CPTUNE_LOOKUP_SOURCE_SIMULATED);
  EXPECT_EQ(choice.measured_tokens, 0);
  EXPECT_GT(choice.time_s, 0);
  EXPECT_EQ(choice.ulysses * choice.ring, 4);  // a layout of the caller's world
  // The same answer as the simulator's own ranking on that cluster.
  const auto hw = cptune::sim::load_hardware("cpu-gloo");
  const auto ranking = cptune::sim::rank_candidates(shape_of({4096}, 32, 8, Mask{}), {4, 4}, hw);
  EXPECT_STREQ(choice.strategy, std::string(to_string(ranking.best()->candidate.strategy)).c_str());
  cptune_lookup_close(lookup);

  EXPECT_EQ(cptune_lookup_open_with_simulator(path_.c_str(), &fp, "no-such-hardware", &lookup),
            CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("no-such-hardware"), std::string::npos)
      << cptune_lookup_last_error();
}

// Each pass answers from its own measurements (ABI minor 2): the backward's winner is not the
// forward's; a pass nothing was measured for and no simulator is asked is not found; an unknown
// pass is an invalid argument naming it.
TEST_F(CAbi, EachPassAnswersFromItsOwnMeasurements) {
  {
    Store store = Store::open(path_);
    store.record_shape(cptune::db::local_hardware_fingerprint("gloo", 4, 4), shape_of({4096}),
                       {measurement(kUaa, 4e-3), measurement(kHybrid, 6e-3)}, Pass::backward);
    store.record_shape(cptune::db::local_hardware_fingerprint("gloo", 4, 4), shape_of({4096}),
                       {measurement(kUaa, 2e-3), measurement(kHybrid, 1e-3)}, Pass::forward);
  }
  const int64_t len = 4096;
  const cptune_shape s = shape(&len, 1);
  const auto answer = [&](const char* pass, cptune_choice& choice) {
    cptune_lookup* lookup = nullptr;
    const int status = cptune_lookup_open_local_pass(path_.c_str(), "gloo", 4, 4, nullptr, nullptr, pass, &lookup);
    if (status != CPTUNE_LOOKUP_OK) return status;
    choice = cptune_choice{};
    choice.struct_size = sizeof choice;
    const int query = cptune_lookup_query(lookup, &s, &choice);
    cptune_lookup_close(lookup);
    return query;
  };
  cptune_choice choice{};
  ASSERT_EQ(answer("bwd", choice), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  EXPECT_STREQ(choice.strategy, "uaa");
  EXPECT_EQ(choice.time_s, 4e-3);
  for (const char* forward : {"fwd", "", static_cast<const char*>(nullptr)}) {
    ASSERT_EQ(answer(forward, choice), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
    EXPECT_STREQ(choice.strategy, "hybrid-uaa");
    EXPECT_EQ(choice.time_s, 1e-3);
  }
  EXPECT_EQ(answer("fwd+bwd", choice), CPTUNE_LOOKUP_NOT_FOUND);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("--pass fwd+bwd"), std::string::npos)
      << cptune_lookup_last_error();
  EXPECT_EQ(answer("sideways", choice), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("sideways"), std::string::npos) << cptune_lookup_last_error();
}

// An engine's forward-only layouts are never the answer for a backward: diffusers runs 25 heads on
// 3 ranks only by UAA or ring_anything, both forward only (sim/engines/diffusers.cc).
TEST_F(CAbi, AForwardOnlyEngineLayoutIsNeverAnsweredForABackward) {
  const int64_t len = 4096;
  const cptune_shape s{sizeof(cptune_shape), 1, &len, 1, 25, 25, 128, 0, "bf16", "full"};
  for (const char* pass : {"fwd", "bwd", "fwd+bwd"}) {
    cptune_lookup* lookup = nullptr;
    ASSERT_EQ(cptune_lookup_open_local_pass(CPTUNE_LOOKUP_NO_DATABASE, "gloo", 3, 3, "h100-sxm", "diffusers", pass,
                                            &lookup),
              CPTUNE_LOOKUP_OK)
        << cptune_lookup_last_error();
    cptune_choice choice{};
    choice.struct_size = sizeof choice;
    const int status = cptune_lookup_query(lookup, &s, &choice);
    cptune_lookup_close(lookup);
    if (std::string(pass) == "fwd") {
      EXPECT_EQ(status, CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
      EXPECT_EQ(choice.source, CPTUNE_LOOKUP_SOURCE_SIMULATED);
    } else {
      EXPECT_EQ(status, CPTUNE_LOOKUP_NOT_FOUND) << pass << ": " << choice.strategy;
    }
  }
}

TEST_F(CAbi, AnExactHitThroughTheAbiAllocatesNothing) {
  cptune_lookup* lookup = open();
  const int64_t len = 4096;
  const cptune_shape s = shape(&len, 1);
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  const int64_t before = allocations.load();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(allocations.load(), before);
  cptune_lookup_close(lookup);
}

TEST_F(CAbi, NullPointersAreStatusCodesNeverCrashes) {
  const cptune_fingerprint fp = fingerprint();
  cptune_lookup* lookup = nullptr;
  EXPECT_EQ(cptune_lookup_open(path_.c_str(), &fp, nullptr), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  // A NULL db_path is no database (CPTUNE_LOOKUP_NO_DATABASE): the simulator answers.
  ASSERT_EQ(cptune_lookup_open(nullptr, &fp, &lookup), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  cptune_lookup_close(lookup);
  lookup = nullptr;
  EXPECT_EQ(cptune_lookup_open(path_.c_str(), nullptr, &lookup), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(lookup, nullptr);
  cptune_fingerprint no_backend = fp;
  no_backend.backend = nullptr;
  EXPECT_EQ(cptune_lookup_open(path_.c_str(), &no_backend, &lookup), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  lookup = open();
  const int64_t len = 4096;
  const cptune_shape s = shape(&len, 1);
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  EXPECT_EQ(cptune_lookup_query(nullptr, &s, &choice), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_query(lookup, nullptr, &choice), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_query(lookup, &s, nullptr), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  const cptune_shape no_lens = shape(nullptr, 1);
  EXPECT_EQ(cptune_lookup_query(lookup, &no_lens, &choice), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(cptune_lookup_shapes(nullptr), 0u);
  cptune_lookup_close(nullptr);
  cptune_lookup_close(lookup);
}

TEST_F(CAbi, AStructSizeSmallerThanThisAbisIsRefused) {
  cptune_fingerprint fp = fingerprint();
  cptune_lookup* lookup = nullptr;
  for (size_t size : {size_t(0), size_t(8), sizeof(cptune_fingerprint) - 1}) {
    fp.struct_size = size;
    EXPECT_EQ(cptune_lookup_open(path_.c_str(), &fp, &lookup), CPTUNE_LOOKUP_ERROR_STRUCT_SIZE);
    EXPECT_NE(std::string(cptune_lookup_last_error()).find("struct_size"), std::string::npos);
  }
  lookup = open();
  const int64_t len = 4096;
  cptune_shape s = shape(&len, 1);
  cptune_choice choice{};
  choice.struct_size = sizeof choice - 1;
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_ERROR_STRUCT_SIZE);
  choice.struct_size = sizeof choice;
  s.struct_size = 0;
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_ERROR_STRUCT_SIZE);
  // A newer caller's larger struct is accepted: the fields this ABI knows come first.
  s.struct_size = sizeof s + 64;
  choice.struct_size = sizeof choice + 64;
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_OK);
  cptune_lookup_close(lookup);
}

TEST_F(CAbi, BadValuesAreInvalidArgumentsWithAMessage) {
  cptune_lookup* lookup = open();
  const int64_t len = 4096, zero = 0;
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  cptune_shape s = shape(&len, 1);
  s.dtype = "bf17";
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("bf17"), std::string::npos);
  s = shape(&len, 1, "sliding");
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  s = shape(&len, 0);
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  s = shape(&zero, 1);
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  s = shape(&len, 1);
  s.q_heads = 0;
  EXPECT_EQ(cptune_lookup_query(lookup, &s, &choice), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  cptune_lookup_close(lookup);
}

TEST_F(CAbi, AMissingOrBadDatabaseIsADatabaseErrorNamingThePath) {
  const cptune_fingerprint fp = fingerprint();
  cptune_lookup* lookup = reinterpret_cast<cptune_lookup*>(&lookup);
  const std::string missing = dir_.file("missing.db");
  EXPECT_EQ(cptune_lookup_open(missing.c_str(), &fp, &lookup), CPTUNE_LOOKUP_ERROR_DATABASE);
  EXPECT_EQ(lookup, nullptr);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find(missing), std::string::npos);
  const std::string text = dir_.file("notes.txt");
  std::ofstream(text) << std::string(5000, 'n');
  EXPECT_EQ(cptune_lookup_open(text.c_str(), &fp, &lookup), CPTUNE_LOOKUP_ERROR_DATABASE);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("not a database"), std::string::npos);
}

TEST_F(CAbi, ABlockMaskMadeOnceAnswersLikeItsTextAndItsExactHitAllocatesNothing) {
  {
    Store store = Store::open(path_);
    store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, parse_mask("stream:16,1,3")),
                       {measurement(kZigzag, 1e-3)});
  }
  cptune_lookup* lookup = open();
  const int64_t len = 4096, other_len = 5000;
  cptune_choice by_text{}, by_mask{}, by_cells{};
  by_text.struct_size = by_mask.struct_size = by_cells.struct_size = sizeof(cptune_choice);
  cptune_shape s = shape(&len, 1, "stream:16,1,3");
  ASSERT_EQ(cptune_lookup_query(lookup, &s, &by_text), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  EXPECT_EQ(by_text.source, CPTUNE_LOOKUP_SOURCE_EXACT);
  EXPECT_STREQ(by_text.strategy, "ring-zigzag");

  cptune_lookup_mask* mask = nullptr;
  ASSERT_EQ(cptune_lookup_mask_create("stream:16,1,3", &mask), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  s.mask = "causal";  // not read by the masked query
  ASSERT_EQ(cptune_lookup_query_masked(lookup, &s, mask, &by_mask), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  EXPECT_EQ(std::memcmp(&by_mask, &by_text, sizeof by_text), 0);
  char text[64];
  size_t needed = 0;
  ASSERT_EQ(cptune_lookup_mask_text(mask, text, sizeof text, &needed), CPTUNE_LOOKUP_OK);
  EXPECT_STREQ(text, "stream:16,1,3");
  EXPECT_EQ(needed, strlen("stream:16,1,3") + 1);

  // The same table from its cells: the same answer; its text is the inline form.
  const Mask stream = parse_mask("stream:16,1,3");
  const BlockTable& table = *stream.blocks;
  std::vector<uint8_t> cells;
  for (BlockKind k : table.cells()) cells.push_back(uint8_t(k));
  cptune_lookup_mask* from_cells = nullptr;
  ASSERT_EQ(cptune_lookup_mask_from_cells(16, cells.data(), &from_cells), CPTUNE_LOOKUP_OK);
  ASSERT_EQ(cptune_lookup_query_masked(lookup, &s, from_cells, &by_cells), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(std::memcmp(&by_cells, &by_text, sizeof by_text), 0);
  std::vector<char> inline_text(70000);
  ASSERT_EQ(cptune_lookup_mask_text(from_cells, inline_text.data(), inline_text.size(), &needed), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(std::string(inline_text.data()), cptune::inline_text(table));
  s.seq_lens = &other_len;
  ASSERT_EQ(cptune_lookup_query_masked(lookup, &s, from_cells, &by_cells), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(by_cells.source, CPTUNE_LOOKUP_SOURCE_NEAREST);
  s.seq_lens = &len;

  const int64_t before = allocations.load();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(cptune_lookup_query_masked(lookup, &s, mask, &by_mask), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(allocations.load(), before);
  cptune_lookup_mask_free(from_cells);
  cptune_lookup_mask_free(mask);
  cptune_lookup_close(lookup);
}

TEST_F(CAbi, BadMasksAreInvalidArgumentsNamingTheValueAndNullsAreStatusCodes) {
  cptune_lookup_mask* mask = reinterpret_cast<cptune_lookup_mask*>(&mask);
  for (auto [text, needle] : {std::pair{"star:0", "block count 0"}, std::pair{"strided:16", "'strided:16'"},
                               std::pair{"blocks:2:CX/FC", "'X'"}, std::pair{"nonsense:3", "'nonsense:3'"},
                               std::pair{"blocks:/nonexistent/t.txt", "'/nonexistent/t.txt'"}}) {
    EXPECT_EQ(cptune_lookup_mask_create(text, &mask), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT) << text;
    EXPECT_EQ(mask, nullptr);
    EXPECT_NE(std::string(cptune_lookup_last_error()).find(needle), std::string::npos)
        << text << ": " << cptune_lookup_last_error();
  }
  const uint8_t bad_cell[4] = {0, 1, 2, 3};
  EXPECT_EQ(cptune_lookup_mask_from_cells(2, bad_cell, &mask), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("cells[3] is 3"), std::string::npos);
  EXPECT_EQ(cptune_lookup_mask_from_cells(0, bad_cell, &mask), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(cptune_lookup_mask_from_cells(257, bad_cell, &mask), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(cptune_lookup_mask_from_cells(2, nullptr, &mask), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_mask_from_cells(2, bad_cell, nullptr), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_mask_create(nullptr, &mask), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_mask_create("star:4", nullptr), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  size_t needed = 0;
  EXPECT_EQ(cptune_lookup_mask_text(nullptr, nullptr, 0, &needed), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  cptune_lookup* lookup = open();
  const int64_t len = 4096;
  const cptune_shape s = shape(&len, 1);
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  EXPECT_EQ(cptune_lookup_query_masked(lookup, &s, nullptr, &choice), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  ASSERT_EQ(cptune_lookup_mask_create("causal", &mask), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(cptune_lookup_query_masked(nullptr, &s, mask, &choice), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_query_masked(lookup, nullptr, mask, &choice), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_query_masked(lookup, &s, mask, nullptr), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(cptune_lookup_query_masked(lookup, &s, mask, &choice), CPTUNE_LOOKUP_OK);  // causal was measured
  cptune_lookup_mask_free(mask);
  cptune_lookup_mask_free(nullptr);
  cptune_lookup_close(lookup);
}

TEST_F(CAbi, VersionAndNamesDescribeThemselves) {
  EXPECT_EQ(cptune_lookup_version(), CPTUNE_LOOKUP_ABI_VERSION);
  EXPECT_STRNE(cptune_lookup_library_version(), "");
  EXPECT_STREQ(cptune_lookup_status_name(CPTUNE_LOOKUP_NOT_FOUND), "not-found");
  EXPECT_STREQ(cptune_lookup_status_name(-99), "unknown");
  EXPECT_STREQ(cptune_lookup_source_name(CPTUNE_LOOKUP_SOURCE_SIMULATED), "simulated");
  EXPECT_STREQ(cptune_lookup_source_name(7), "unknown");
}

// --- the installed library ------------------------------------------------------------------

using testing::CommandResult;
CommandResult run(const std::string& command) { return testing::run_command(command); }

std::string find_under(const std::string& root, const std::string& name) {
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root))
    if (entry.path().filename() == name) return entry.path().string();
  return "";
}

TEST(InstalledLookup, ExportsOnlyTheCAbi) {
  const CommandResult nm = run("nm -D --defined-only " CPTUNE_BUILD_DIR "/db/libcptune_lookup.so");
  ASSERT_EQ(nm.exit_code, 0) << nm.output;
  std::istringstream lines(nm.output);
  int symbols = 0;
  for (std::string line; std::getline(lines, line);) {
    const std::string name = line.substr(line.rfind(' ') + 1);
    EXPECT_TRUE(name.rfind("cptune_lookup_", 0) == 0 || name == "CPTUNE_LOOKUP_1") << name;
    ++symbols;
  }
  EXPECT_EQ(symbols, 21);  // 20 functions (minor 1 added cptune_lookup_engines, 2 cptune_lookup_open_local_pass)
                           // and the version node
}

TEST(InstalledLookup, ACProgramBuildsAgainstTheInstallWithPkgConfigAndWithFindPackage) {
  TempDir dir;
  const std::string prefix = dir.file("prefix"), db = dir.file("tune.db");
  {
    Store store = Store::open(db);
    store.record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(kZigzag, 1e-3), measurement(kUaa, 2e-3)});
    store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, parse_mask("star:16")),
                       {measurement(kZigzag, 3e-3), measurement(kUaa, 2e-3)});
  }
  const CommandResult install =
      run("cmake --install " CPTUNE_BUILD_DIR " --component lookup --prefix " + prefix);
  ASSERT_EQ(install.exit_code, 0) << install.output;
  const std::string pc = find_under(prefix, "cptune-lookup.pc"), header = find_under(prefix, "cptune_lookup.h");
  const std::string config = find_under(prefix, "cptuneConfig.cmake"), example = find_under(prefix, "lookup_example.c");
  ASSERT_FALSE(pc.empty() || header.empty() || config.empty() || example.empty()) << install.output;
  const std::string libdir = std::filesystem::path(pc).parent_path().parent_path().string();
  ASSERT_TRUE(std::filesystem::exists(libdir + "/libcptune_lookup.so")) << install.output;
  const std::string args = db + " gloo cpu 4 4 4096 32 8 128 bf16 causal";

  const std::string pkg = "PKG_CONFIG_PATH=" + libdir + "/pkgconfig pkg-config";
  const std::string flags = "$(" + pkg + " --cflags --libs cptune-lookup) -Wl,-rpath," + libdir;
  const CommandResult cc = run("cc -std=c99 -Wall -Werror " + example + " " + flags + " -o " + dir.file("example_pc"));
  ASSERT_EQ(cc.exit_code, 0) << cc.output;
  const CommandResult by_pc = run(dir.file("example_pc") + " " + args);
  EXPECT_EQ(by_pc.exit_code, 0) << by_pc.output;
  EXPECT_EQ(by_pc.output, "exact ring-zigzag U=1 R=4 ulysses-inner balanced 0.001\n");
  // The example makes its mask once (cptune_lookup_mask_create) and asks with it.
  const CommandResult star = run(dir.file("example_pc") + " " + db + " gloo cpu 4 4 4096 32 8 128 bf16 star:16");
  EXPECT_EQ(star.exit_code, 0) << star.output;
  EXPECT_EQ(star.output, "exact uaa U=4 R=1 ulysses-inner balanced 0.002\n");
  const CommandResult bad = run(dir.file("example_pc") + " " + db + " gloo cpu 4 4 4096 32 8 128 bf16 star:0");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("block count 0 in mask 'star:0'"), std::string::npos) << bad.output;

  const std::string source = std::filesystem::path(example).parent_path().string(), build = dir.file("example_build");
  const CommandResult configure = run("cmake -S " + source + " -B " + build + " -DCMAKE_PREFIX_PATH=" + prefix);
  ASSERT_EQ(configure.exit_code, 0) << configure.output;
  const CommandResult make = run("cmake --build " + build);
  ASSERT_EQ(make.exit_code, 0) << make.output;
  const CommandResult by_cmake = run(build + "/lookup_example " + args);
  EXPECT_EQ(by_cmake.output, by_pc.output);
  const CommandResult missing =
      run(build + "/lookup_example " + dir.file("missing.db") + " gloo cpu 4 4 4096 32 8 128 bf16 causal");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.output.find("does not exist"), std::string::npos) << missing.output;
}

// cmake --install puts the one Python client, the package, beside the library: it finds the
// library of its own prefix with nothing in the environment, and answers with rank_order.
TEST(InstalledLookup, ThePythonPackageFindsTheLibraryOfItsPrefix) {
  TempDir dir;
  const std::string prefix = dir.file("prefix"), db = dir.file("tune.db");
  { Store::open(db).record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(kZigzag, 1e-3)}); }
  const CommandResult install = run("cmake --install " CPTUNE_BUILD_DIR " --component lookup --prefix " + prefix);
  ASSERT_EQ(install.exit_code, 0) << install.output;
  EXPECT_TRUE(find_under(prefix, "cptune_lookup.py").empty()) << "the old dict client is not installed";
  const std::string init = find_under(prefix, "__init__.py");
  ASSERT_FALSE(init.empty()) << install.output;
  const std::string site = std::filesystem::path(init).parent_path().parent_path().string();
  const CommandResult r = run("cd " + dir.path() + " && env -i PYTHONPATH=" + site + " /usr/bin/python3 -B -c \"" +
                              "import cptune; p = cptune.library_path(); assert p.startswith('" + prefix + "'), p; " +
                              "a = cptune.Lookup('" + db + "', world=4, hardware=None).best(" +
                              "cptune.Shape([4096], 32, 8, mask='causal')); " +
                              "print(a.source, a.strategy, a.rank_order, cptune.library_version())\"");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "exact ring-zigzag ulysses-inner " CPTUNE_VERSION_STRING "\n");
}

}  // namespace
}  // namespace cptune::db
