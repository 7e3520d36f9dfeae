// db::Store: records round-trip, the best view, resume, schema versions, bad files, what two
// writers at once and a writer killed mid-run leave behind, and `cptune db` reading it all.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <thread>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "db/lease.h"
#include "db/lookup.h"
#include "db/schema.h"
#include "db/sqlite.h"
#include "db/store.h"
#include "tests/temp_dir.h"
#include "tuner/cli/commands.h"

namespace cptune::db {
namespace {

using testing::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

Fingerprint cpu_fingerprint(int64_t world = 4) { return {"gloo", "cpu", Cluster{world, world}, "gloo 0.5.0", "0.1.0"}; }

AttentionShape shape_of(std::vector<int64_t> seq_lens, int64_t hq = 32, int64_t hkv = 8, Mask mask = {MaskKind::causal, 0},
                  DType dtype = DType::bf16) {
  return AttentionShape{1, std::move(seq_lens), hq, hkv, 128, 128, dtype, mask};
}

std::vector<LayoutChoice> candidates_for_world_4() {
  std::vector<LayoutChoice> out = {{Strategy::ulysses, 4, 1, RankOrder::ulysses_inner, HeadPolicy::balanced},
                                   {Strategy::uaa, 4, 1, RankOrder::ulysses_inner, HeadPolicy::balanced},
                                   {Strategy::uaa, 4, 1, RankOrder::ulysses_inner, HeadPolicy::kv_aligned},
                                   {Strategy::ring, 1, 4, RankOrder::ulysses_inner, HeadPolicy::balanced},
                                   {Strategy::ring_zigzag, 1, 4, RankOrder::ulysses_inner, HeadPolicy::balanced},
                                   {Strategy::allgather_kv, 1, 4, RankOrder::ulysses_inner, HeadPolicy::balanced}};
  for (Strategy s : {Strategy::hybrid, Strategy::hybrid_uaa})
    for (RankOrder o : {RankOrder::ulysses_inner, RankOrder::ring_inner})
      for (HeadPolicy p : {HeadPolicy::balanced, HeadPolicy::kv_aligned}) out.push_back({s, 2, 2, o, p});
  return out;
}

MeasurementRow measurement(const LayoutChoice& c, double median_s) {
  MeasurementRow r;
  r.candidate = c;
  r.median_s = median_s;
  r.min_s = median_s * 0.9;
  r.max_s = median_s * 1.25;
  r.iterations = 20;
  r.phase_medians_s = {{Phase::attention, median_s * 0.6}, {Phase::qkv, median_s * 0.3}};
  r.verify_max_abs_error = 3.0517578125e-05;
  r.predicted_s = median_s * 1.1;
  r.profile = "cpu-gloo-loopback";
  r.measured_at = "2025-01-02T03:04:05.678Z";
  return r;
}

// The candidate of world 4 moved to an even world: the store keeps U x R = world.
LayoutChoice on_world(LayoutChoice c, int64_t world) {
  if (c.ulysses == 2 && c.ring == 2) c.ring = world / 2;
  else if (c.ulysses == 4) c.ulysses = world;
  else c.ring = world;
  return c;
}

// One measurement per candidate, medians drawn at random: the property tests' input.
std::vector<MeasurementRow> random_rows(std::mt19937& rng, size_t count = candidates_for_world_4().size(),
                                        int64_t world = 4) {
  std::uniform_real_distribution<double> median(1e-4, 1e-1);
  std::vector<MeasurementRow> rows;
  const auto candidates = candidates_for_world_4();
  for (size_t i = 0; i < count; ++i)
    rows.push_back(measurement(on_world(candidates[i % candidates.size()], world), median(rng)));
  return rows;
}

std::vector<AttentionShape> shape_sweep() {
  std::vector<AttentionShape> shapes;
  for (std::vector<int64_t> seqs : std::vector<std::vector<int64_t>>{{1}, {7}, {4097}, {77, 4097}, {4097, 77}})
    for (auto [hq, hkv] : {std::pair{24, 8}, std::pair{32, 32}})
      for (Mask mask : {Mask{MaskKind::full, 0}, Mask{MaskKind::causal, 0}, Mask{MaskKind::sliding_window, 128}})
        for (DType dtype : {DType::bf16, DType::fp32}) shapes.push_back(shape_of(seqs, hq, hkv, mask, dtype));
  return shapes;
}

int64_t count_rows(const std::string& path, const char* sql) {
  Connection conn(path, OpenMode::read_only);
  Statement st(conn, sql);
  return st.step() ? st.column_int(0) : -1;
}

std::string integrity(const std::string& path) {
  Connection conn(path, OpenMode::read_only);
  Statement st(conn, "PRAGMA integrity_check");
  return st.step() ? st.column_text(0) : "";
}

void expect_error_naming(const std::function<void()>& action, const std::string& path, const std::string& words) {
  try {
    action();
    ADD_FAILURE() << "expected an Error about '" << path << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(StoreRecords, EveryFieldRoundTripsForEveryShapeOfTheSweep) {
  TempDir dir;
  std::mt19937 rng(1);
  std::map<std::string, std::pair<AttentionShape, std::vector<MeasurementRow>>> written;
  {
    Store store = Store::open(dir.file("tune.db"));
    for (const AttentionShape& shape : shape_sweep()) {
      std::vector<MeasurementRow> rows = random_rows(rng);
      rows[0].verify_max_abs_error.reset();  // unverified and unranked rows keep their NULLs
      rows[1].predicted_s.reset();
      rows[2].phase_medians_s.clear();
      store.record_shape(cpu_fingerprint(), shape, rows);
      written[to_string(shape)] = {shape, rows};
    }
  }
  const Store store = Store::open_read_only(dir.file("tune.db"));
  std::map<std::string, std::vector<MeasurementRow>> read;
  for (const StoredMeasurement& m : store.measurements()) read[to_string(m.shape)].push_back(m.row);
  ASSERT_EQ(read.size(), written.size());
  for (const auto& [name, shape_rows] : written) EXPECT_EQ(read[name], shape_rows.second) << name;
}

TEST(StoreRecords, EmptyTimestampIsFilledWithUtcNow) {
  TempDir dir;
  Store store = Store::open(dir.file("tune.db"));
  MeasurementRow row = measurement(candidates_for_world_4()[0], 1e-3);
  row.measured_at.clear();
  store.record_shape(cpu_fingerprint(), shape_of({4096}), {row});
  const std::string at = store.measurements().at(0).row.measured_at;
  ASSERT_EQ(at.size(), 24u) << at;  // 2025-01-02T03:04:05.678Z
  EXPECT_EQ(at[10], 'T');
  EXPECT_EQ(at.back(), 'Z');
}

TEST(StoreBest, PicksTheMinimumMedianOfEveryShapeAndFingerprint) {
  TempDir dir;
  Store store = Store::open(dir.file("tune.db"));
  std::mt19937 rng(2);
  std::map<std::pair<int64_t, std::string>, std::pair<LayoutChoice, double>> fastest;
  for (int64_t world : {2, 4}) {
    for (const AttentionShape& shape : shape_sweep()) {
      const std::vector<MeasurementRow> rows = random_rows(rng, candidates_for_world_4().size(), world);
      store.record_shape(cpu_fingerprint(world), shape, rows);
      const auto best = std::min_element(rows.begin(), rows.end(),
                                         [](const auto& a, const auto& b) { return a.median_s < b.median_s; });
      fastest[{world, to_string(shape)}] = {best->candidate, best->median_s};
    }
  }
  const auto fingerprints = store.fingerprints();
  ASSERT_EQ(fingerprints.size(), 2u);
  std::map<int64_t, int64_t> world_of;
  for (const auto& f : fingerprints) world_of[f.id] = f.fingerprint.cluster.world;
  const std::vector<BestRow> best = store.best();
  ASSERT_EQ(best.size(), fastest.size());
  for (const BestRow& row : best) {
    const auto& [candidate, median_s] = fastest.at({world_of.at(row.fingerprint_id), to_string(row.shape)});
    EXPECT_EQ(row.candidate, candidate) << to_string(row.shape);
    EXPECT_EQ(row.median_s, median_s);
    EXPECT_EQ(row.measurements, int64_t(candidates_for_world_4().size()));
  }
  EXPECT_EQ(store.best(fingerprints[0].id).size(), shape_sweep().size());
}

TEST(StoreBest, ASecondMeasurementOfTheSameShapeCompetesWithTheFirst) {
  TempDir dir;
  Store store = Store::open(dir.file("tune.db"));
  const auto candidates = candidates_for_world_4();
  store.record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(candidates[0], 2e-3)});
  store.record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(candidates[3], 1e-3)});
  const auto best = store.best();
  ASSERT_EQ(best.size(), 1u);
  EXPECT_EQ(best[0].candidate, candidates[3]);
  EXPECT_EQ(best[0].measurements, 2);
}

TEST(StoreResume, HasShapeIsTrueOnlyForAShapeRecordedUnderThatFingerprint) {
  TempDir dir;
  Store store = Store::open(dir.file("tune.db"));
  std::mt19937 rng(3);
  const AttentionShape shape = shape_of({77, 4097});
  EXPECT_FALSE(store.has_shape(cpu_fingerprint(), shape));
  store.record_shape(cpu_fingerprint(), shape, {});  // nothing measured: nothing to skip on a rerun
  EXPECT_FALSE(store.has_shape(cpu_fingerprint(), shape));
  store.record_shape(cpu_fingerprint(), shape, random_rows(rng));
  EXPECT_TRUE(store.has_shape(cpu_fingerprint(), shape));
  EXPECT_FALSE(store.has_shape(cpu_fingerprint(8), shape));
  Fingerprint newer = cpu_fingerprint();
  newer.cptune_version = "0.2.0";
  EXPECT_FALSE(store.has_shape(newer, shape));
  EXPECT_FALSE(store.has_shape(cpu_fingerprint(), shape_of({4097, 77})));
  EXPECT_FALSE(store.has_shape(cpu_fingerprint(), shape_of({77, 4097}, 32, 8, {MaskKind::full, 0})));
}

TEST(StoreFingerprints, ListsShapeAndMeasurementCountsPerFingerprint) {
  TempDir dir;
  Store store = Store::open(dir.file("tune.db"));
  std::mt19937 rng(4);
  for (int i = 0; i < 3; ++i) store.record_shape(cpu_fingerprint(4), shape_of({1024 << i}), random_rows(rng, 5));
  store.record_shape(cpu_fingerprint(2), shape_of({1024}), random_rows(rng, 2, 2));
  const auto fps = store.fingerprints();
  ASSERT_EQ(fps.size(), 2u);
  EXPECT_EQ(fps[0].fingerprint, cpu_fingerprint(4));
  EXPECT_EQ(fps[0].shapes, 3);
  EXPECT_EQ(fps[0].measurements, 15);
  EXPECT_EQ(fps[1].shapes, 1);
  EXPECT_EQ(fps[1].measurements, 2);
}

TEST(StoreFingerprints, MatchWantsEqualHardwareAndTakesTheLastRecordedWhenVersionsAreOpen) {
  TempDir dir;
  Store store = Store::open(dir.file("tune.db"));
  std::mt19937 rng(5);
  Fingerprint old_version = cpu_fingerprint(), new_version = cpu_fingerprint();
  new_version.cptune_version = "0.2.0";
  store.record_shape(new_version, shape_of({1024}), random_rows(rng, 1));
  store.record_shape(old_version, shape_of({2048}), random_rows(rng, 1));  // recorded last
  const auto id_of = [&](const Fingerprint& fp) {
    for (const auto& f : store.fingerprints())
      if (f.fingerprint == fp) return f.id;
    return int64_t(-1);
  };
  EXPECT_EQ(store.match_fingerprint(old_version), id_of(old_version));
  EXPECT_EQ(store.match_fingerprint(new_version), id_of(new_version));
  Fingerprint any_version = cpu_fingerprint();
  any_version.cptune_version.clear();
  any_version.library_versions.clear();
  EXPECT_EQ(store.match_fingerprint(any_version), id_of(old_version));
  for (Fingerprint other : {cpu_fingerprint(8), Fingerprint{"nccl", "cpu", Cluster{4, 4}, "", ""},
                            Fingerprint{"gloo", "H100", Cluster{4, 4}, "", ""}, Fingerprint{"gloo", "cpu", Cluster{4, 2}, "", ""}})
    EXPECT_FALSE(store.match_fingerprint(other)) << describe(other);
}

TEST(StoreSchema, AnEmptyOrMissingFileIsMigratedToTheCurrentVersion) {
  TempDir dir;
  write_bytes(dir.file("empty.db"), "");
  for (const std::string& path : {dir.file("empty.db"), dir.file("new.db")}) {
    { Store::open(path); }
    EXPECT_EQ(count_rows(path, "PRAGMA user_version"), kSchemaVersion);
    EXPECT_EQ(count_rows(path, "PRAGMA application_id"), kApplicationId);
    EXPECT_EQ(count_rows(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'best' AND type = 'view'"), 1);
    EXPECT_EQ(integrity(path), "ok");
  }
}

TEST(StoreSchema, ReopeningKeepsEveryRowAndDoesNotMigrateAgain) {
  TempDir dir;
  std::mt19937 rng(6);
  const std::string path = dir.file("tune.db");
  { Store::open(path).record_shape(cpu_fingerprint(), shape_of({4096}), random_rows(rng)); }
  { Store::open(path).record_shape(cpu_fingerprint(), shape_of({8192}), random_rows(rng)); }
  EXPECT_EQ(Store::open_read_only(path).best().size(), 2u);
  EXPECT_EQ(count_rows(path, "PRAGMA user_version"), kSchemaVersion);
}

TEST(StoreSchema, ADatabaseFromANewerCptuneIsRefusedAndLeftAlone) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  { Store::open(path); }
  { Connection(path, OpenMode::read_write).exec("PRAGMA user_version = 99"); }
  const std::string before = read_bytes(path);
  expect_error_naming([&] { Store::open(path); }, path, "newer cptune");
  expect_error_naming([&] { Store::open_read_only(path); }, path, "newer cptune");
  EXPECT_EQ(read_bytes(path), before);
}

TEST(StoreSchema, AnotherProgramsSqliteDatabaseIsRefusedAndLeftAlone) {
  TempDir dir;
  const std::string path = dir.file("other.db");
  { Connection(path, OpenMode::read_write).exec("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)"); }
  const std::string before = read_bytes(path);
  expect_error_naming([&] { Store::open(path); }, path, "another program");
  EXPECT_EQ(read_bytes(path), before);
  { Connection(path, OpenMode::read_write).exec("PRAGMA application_id = 1234"); }
  const std::string marked = read_bytes(path);
  expect_error_naming([&] { Store::open(path); }, path, "another program");
  EXPECT_EQ(read_bytes(path), marked);
}

TEST(StoreFiles, ATextFileIsNotADatabaseAndIsLeftAlone) {
  TempDir dir;
  const std::string path = dir.file("shapes.csv");
  std::string text = "seq,heads\n";
  for (int i = 0; i < 400; ++i) text += std::to_string(1024 + i) + ",32\n";
  write_bytes(path, text);
  expect_error_naming([&] { Store::open(path); }, path, "not a database");
  expect_error_naming([&] { Store::open_read_only(path); }, path, "not a database");
  EXPECT_EQ(read_bytes(path), text);
}

// A database of many pages, closed cleanly (WAL checkpointed into the file).
std::string filled_database(const TempDir& dir) {
  const std::string path = dir.file("tune.db");
  Store store = Store::open(path);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) store.record_shape(cpu_fingerprint(), shape_of({1000 + i}), random_rows(rng));
  return path;
}

TEST(StoreFiles, ATruncatedDatabaseIsCorruptForWritersAndReadersAndIsLeftAlone) {
  TempDir dir;
  const std::string path = filled_database(dir);
  std::string bytes = read_bytes(path);
  ASSERT_GT(bytes.size(), 64u * 1024);
  bytes.resize(bytes.size() / 2);
  write_bytes(path, bytes);
  expect_error_naming([&] { Store::open(path); }, path, "corrupt");
  expect_error_naming([&] { Store::open_read_only(path).measurements(); }, path, "malformed");
  EXPECT_EQ(read_bytes(path), bytes);
}

TEST(StoreFiles, APageOfGarbageIsCorruptForWritersAndIsLeftAlone) {
  TempDir dir;
  const std::string path = filled_database(dir);
  std::string bytes = read_bytes(path);
  const size_t page = 4096, middle = bytes.size() / page / 2;
  std::fill(bytes.begin() + long(middle * page), bytes.begin() + long((middle + 1) * page), '\xab');
  write_bytes(path, bytes);
  expect_error_naming([&] { Store::open(path); }, path, "corrupt");
  EXPECT_EQ(read_bytes(path), bytes);
}

TEST(StoreFiles, AGarbledHeaderIsNotADatabase) {
  TempDir dir;
  const std::string path = filled_database(dir);
  std::string bytes = read_bytes(path);
  std::fill(bytes.begin(), bytes.begin() + 100, 'x');
  write_bytes(path, bytes);
  expect_error_naming([&] { Store::open(path); }, path, "not a database");
  EXPECT_EQ(read_bytes(path), bytes);
}

TEST(StoreFiles, AMissingFileOrAnUnopenablePathIsAnErrorNamingThePath) {
  TempDir dir;
  expect_error_naming([&] { Store::open_read_only(dir.file("missing.db")); }, dir.file("missing.db"), "does not exist");
  EXPECT_FALSE(std::filesystem::exists(dir.file("missing.db")));
  expect_error_naming([&] { Store::open(dir.file("no/such/folder/tune.db")); }, dir.file("no/such/folder/tune.db"),
                      "cannot open");
  std::filesystem::create_directory(dir.file("folder.db"));
  expect_error_naming([&] { Store::open(dir.file("folder.db")); }, dir.file("folder.db"), "directory");
  expect_error_naming([&] { Store::open_read_only(dir.file("folder.db")); }, dir.file("folder.db"), "directory");
}

TEST(StoreFiles, AReadOnlyStoreRefusesToWrite) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  { Store::open(path); }
  Store reader = Store::open_read_only(path);
  std::mt19937 rng(8);
  expect_error_naming([&] { reader.record_shape(cpu_fingerprint(), shape_of({4096}), random_rows(rng)); }, path,
                      "read-only");
}

TEST(StoreRecords, SequenceLengthsParseOnlyFromPositiveCommaSeparatedCounts) {
  EXPECT_EQ(parse_seq_lens("77,4097"), (std::vector<int64_t>{77, 4097}));
  EXPECT_EQ(seq_lens_text(std::vector<int64_t>{77, 4097}), "77,4097");
  for (const char* bad : {"", ",", "77,", ",77", "77,,4097", "0", "-5", "4k", "77;4097"})
    EXPECT_THROW(parse_seq_lens(bad), Error) << bad;
}

// --- processes ------------------------------------------------------------------------------

// The shapes a child process tunes: distinct per writer, plus some both writers measure.
std::vector<AttentionShape> writer_shapes(int writer, int count) {
  std::vector<AttentionShape> shapes;
  for (int i = 0; i < count; ++i) shapes.push_back(shape_of({1 + i + (i % 4 == 0 ? 0 : writer * 100000)}));
  return shapes;
}

// Runs body in a child process; its exit code is 0 only if body returned without throwing.
pid_t fork_child(const std::function<void()>& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 0;
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", getpid(), e.what());
      code = 1;
    }
    _exit(code);
  }
  return pid;
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(StoreProcesses, TwoWritersAtOnceOnANewFileLoseNothing) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  constexpr int kShapes = 150, kRows = 8;
  int start[2];
  ASSERT_EQ(pipe(start), 0);
  std::vector<pid_t> children;
  for (int writer = 0; writer < 2; ++writer) {
    children.push_back(fork_child([&, writer] {
      char go = 0;
      close(start[1]);
      if (read(start[0], &go, 1) != 1) throw std::runtime_error("no start signal");
      Store store = Store::open(path);  // both create and migrate the same new file at once
      std::mt19937 rng(writer);
      for (const AttentionShape& shape : writer_shapes(writer, kShapes))
        store.record_shape(cpu_fingerprint(), shape, random_rows(rng, kRows));
    }));
  }
  close(start[0]);
  ASSERT_EQ(write(start[1], "gg", 2), 2);
  close(start[1]);
  for (pid_t pid : children) EXPECT_EQ(wait_exit_code(pid), 0);
  EXPECT_EQ(integrity(path), "ok");
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM measurements"), 2 * kShapes * kRows);
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM fingerprints"), 1);
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM candidates"), kRows);
  std::set<std::string> all_shapes;
  for (int writer = 0; writer < 2; ++writer)
    for (const AttentionShape& s : writer_shapes(writer, kShapes)) all_shapes.insert(to_string(s));
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM shapes"), int64_t(all_shapes.size()));
}

// Tunes every shape not yet stored, reporting each finished one (its index) through fd.
void tune_remaining(const std::string& path, const std::vector<AttentionShape>& shapes, int report_fd, int rows_per_shape) {
  Store store = Store::open(path);
  std::mt19937 rng(9);
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (store.has_shape(cpu_fingerprint(), shapes[i])) continue;
    store.record_shape(cpu_fingerprint(), shapes[i], random_rows(rng, size_t(rows_per_shape)));
    const auto index = uint32_t(i);
    if (report_fd >= 0 && write(report_fd, &index, sizeof index) != sizeof index) throw std::runtime_error("pipe");
  }
}

TEST(StoreProcesses, AWriterKilledMidRunKeepsEveryFinishedShapeAndTheRerunCompletesTheRest) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  constexpr int kShapes = 400, kRows = 300;  // large shapes: the kill lands inside a transaction
  std::vector<AttentionShape> shapes;
  for (int i = 0; i < kShapes; ++i) shapes.push_back(shape_of({100 + i}));
  int reports[2];
  ASSERT_EQ(pipe(reports), 0);
  const pid_t child = fork_child([&] {
    close(reports[0]);
    tune_remaining(path, shapes, reports[1], kRows);
  });
  close(reports[1]);
  std::set<uint32_t> finished;
  uint32_t index = 0;
  while (finished.size() < 20 && read(reports[0], &index, sizeof index) == sizeof index) finished.insert(index);
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the tuner finished before it was killed; give it more work";
  while (read(reports[0], &index, sizeof index) == sizeof index) finished.insert(index);
  close(reports[0]);

  EXPECT_EQ(integrity(path), "ok");
  {
    const Store store = Store::open_read_only(path);
    for (uint32_t i : finished) EXPECT_TRUE(store.has_shape(cpu_fingerprint(), shapes[i])) << "shape " << i;
    // A shape is stored whole or not at all: the one in flight left no rows behind.
    for (const BestRow& row : store.best()) EXPECT_EQ(row.measurements, kRows) << to_string(row.shape);
    EXPECT_LT(store.best().size(), size_t(kShapes));
  }
  tune_remaining(path, shapes, -1, kRows);
  EXPECT_EQ(integrity(path), "ok");
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM measurements"), int64_t(kShapes) * kRows);
  const Store store = Store::open_read_only(path);
  EXPECT_EQ(store.best().size(), size_t(kShapes));
}

// --- block-sparse masks in the store -----------------------------------------------------------

// A random table of n blocks whose inline text is as long as the largest allowed.
Mask random_table(std::mt19937& rng, int64_t n) {
  std::uniform_int_distribution<int> kind(0, 2);
  std::vector<BlockKind> cells(static_cast<size_t>(n * n));
  for (BlockKind& c : cells) c = static_cast<BlockKind>(kind(rng));
  return block_mask(BlockTable(n, std::move(cells)));
}

std::string stored_mask_of(const std::string& path, int64_t shape_id) {
  Connection conn(path, OpenMode::read_only);
  Statement st(conn, "SELECT mask FROM shapes WHERE id = ?1");
  st.bind(1, shape_id);
  return st.step() ? st.column_text(0) : "";
}

TEST(StoreMasks, EveryBlockMaskRoundTripsAsItsCanonicalText) {
  TempDir dir;
  std::mt19937 rng(16);
  const std::string path = dir.file("tune.db");
  std::vector<AttentionShape> shapes;
  for (const char* text : {"strided:16,4", "global-local:16,1,2", "star:16", "stream:16,1,3", "blocks:2:C./FC"})
    shapes.push_back(shape_of({4096}, 32, 8, parse_mask(text)));
  shapes.push_back(shape_of({4096}, 32, 8, random_table(rng, kMaxMaskBlocks)));  // 65,802 characters inline
  shapes.push_back(shape_of({77, 4097}, 32, 8, random_table(rng, 7)));
  {
    Store store = Store::open(path);
    for (const AttentionShape& s : shapes) store.record_shape(cpu_fingerprint(), s, random_rows(rng, 2));
  }
  const Store store = Store::open_read_only(path);
  const std::vector<BestRow> best = store.best();
  ASSERT_EQ(best.size(), shapes.size());
  for (const BestRow& row : best) {
    const auto it = std::find(shapes.begin(), shapes.end(), row.shape);
    ASSERT_NE(it, shapes.end()) << to_string(row.shape);
    EXPECT_EQ(to_string(row.shape.mask), to_string(it->mask));  // the pattern's name survives
    EXPECT_TRUE(store.has_shape(cpu_fingerprint(), *it));
  }
  EXPECT_EQ(stored_mask_of(path, 6).size(), inline_text(*shapes[5].mask.blocks).size());
  for (const StoredMeasurement& m : store.measurements())
    EXPECT_NE(std::find(shapes.begin(), shapes.end(), m.shape), shapes.end());
}

TEST(StoreMasks, AnEqualTableIsOneShapeWhateverTextNamesIt) {
  TempDir dir;
  std::mt19937 rng(17);
  const std::string path = dir.file("tune.db");
  const Mask star = parse_mask("star:4");
  const Mask same_cells = parse_mask("blocks:4:C.../FC../F.C./F..C");
  ASSERT_EQ(star, same_cells);
  ASSERT_NE(to_string(star), to_string(same_cells));
  Store store = Store::open(path);
  store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, star), random_rows(rng, 2));
  EXPECT_TRUE(store.has_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, same_cells)));
  store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, same_cells), random_rows(rng, 2));
  store.record_shape(cpu_fingerprint(), shape_of({8192}, 32, 8, same_cells), random_rows(rng, 2));
  // A sink of one block and a window of one: the star again, under a third name.
  store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, parse_mask("stream:4,1,1")), random_rows(rng, 2));
  store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, parse_mask("stream:4,1,2")), random_rows(rng, 2));
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM shapes"), 3);
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM shapes WHERE mask = 'star:4'"), 2);  // the first text stays
  EXPECT_EQ(store.best().size(), 3u);
}

TEST(StoreMasks, AStoredTableFileNameIsDamageAndIsNeverOpened) {
  TempDir dir;
  std::mt19937 rng(18);
  const std::string path = dir.file("tune.db"), table = dir.file("table.txt");
  std::ofstream(table) << "1\nF\n";
  { Store::open(path).record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, parse_mask("star:4")), random_rows(rng, 1)); }
  { Connection(path, OpenMode::read_write).exec(("UPDATE shapes SET mask = 'blocks:" + table + "'").c_str()); }
  expect_error_naming([&] { Store::open_read_only(path).best(); }, path, "names a table file");
  expect_error_naming([&] { Store::open_read_only(path).measurements(); }, path, "table shapes row 1");
}

// Version 3 added only an index on shapes.mask (block masks may be stored since): a version 2
// file is that file without the index. Readers read it as before; a writer migrates it.
TEST(StoreSchema, AVersion2DatabaseIsReadAsBeforeAndMigratedByTheNextWriter) {
  TempDir dir;
  std::mt19937 rng(19);
  const std::string path = dir.file("tune.db");
  std::vector<AttentionShape> shapes = shape_sweep();
  {
    Store store = Store::open(path);
    for (const AttentionShape& s : shapes) store.record_shape(cpu_fingerprint(), s, random_rows(rng, 3));
  }
  const std::vector<BestRow> before = Store::open_read_only(path).best();
  {
    Connection conn(path, OpenMode::read_write);
    conn.exec("DROP INDEX shapes_by_mask");
    conn.exec("ALTER TABLE tune_leases DROP COLUMN heartbeat_at");
    // Version 2's best view and measurements, before passes (db/schema.cc, migration 0 -> 1).
    conn.exec("DROP VIEW best");
    conn.exec("ALTER TABLE measurements DROP COLUMN pass");
    conn.exec("CREATE VIEW best AS "
              "SELECT w.fingerprint_id, w.shape_id, w.candidate_id, w.measurement_id, w.median_s, w.measurements, "
              "s.batch, s.seq_lens, s.total_tokens, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, s.dtype, s.mask, "
              "c.strategy, c.ulysses, c.ring, c.rank_order, c.head_policy "
              "FROM (SELECT fingerprint_id, shape_id, candidate_id, id AS measurement_id, min(median_s) AS median_s, "
              "count(*) AS measurements FROM measurements GROUP BY fingerprint_id, shape_id) AS w "
              "JOIN shapes AS s ON s.id = w.shape_id JOIN candidates AS c ON c.id = w.candidate_id");
    conn.exec("PRAGMA user_version = 2");
  }
  ASSERT_EQ(count_rows(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'shapes_by_mask'"), 0);
  const auto same = [](const std::vector<BestRow>& a, const std::vector<BestRow>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!(a[i].shape == b[i].shape) || !(a[i].candidate == b[i].candidate) || a[i].median_s != b[i].median_s)
        return false;
    return true;
  };
  EXPECT_TRUE(same(Store::open_read_only(path).best(), before));
  EXPECT_EQ(count_rows(path, "PRAGMA user_version"), 2);  // a reader changes nothing
  {
    Store store = Store::open(path);
    store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, parse_mask("star:16")), random_rows(rng, 2));
  }
  EXPECT_EQ(count_rows(path, "PRAGMA user_version"), kSchemaVersion);
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'shapes_by_mask'"), 1);
  std::vector<BestRow> after = Store::open_read_only(path).best();
  ASSERT_EQ(after.size(), before.size() + 1);
  after.erase(std::remove_if(after.begin(), after.end(),
                             [](const BestRow& r) { return r.shape.mask.kind == MaskKind::blocks; }),
              after.end());
  EXPECT_TRUE(same(after, before));
  EXPECT_EQ(integrity(path), "ok");
}

// --- passes ----------------------------------------------------------------------------------

// Every pass is its own question: a shape's best per pass over random rows is the minimum of that
// pass's rows only, has_shape answers per pass, and a lookup of one pass never answers another's.
TEST(StorePass, EachPassHasItsOwnBestResumeAndLookupOverRandomRows) {
  TempDir dir;
  std::mt19937 rng(23);
  const std::string path = dir.file("tune.db");
  const std::vector<AttentionShape> shapes = shape_sweep();
  const Pass passes[] = {Pass::forward, Pass::backward, Pass::forward_backward};
  std::map<std::pair<size_t, Pass>, std::pair<LayoutChoice, double>> expected;
  {
    Store store = Store::open(path);
    for (size_t i = 0; i < shapes.size(); ++i)
      for (Pass pass : passes) {
        if ((i + size_t(pass)) % 3 == 0) continue;  // some shapes miss some passes
        const std::vector<MeasurementRow> rows = random_rows(rng, 4);
        store.record_shape(cpu_fingerprint(), shapes[i], rows, pass);
        const auto best = std::min_element(rows.begin(), rows.end(),
                                           [](const auto& a, const auto& b) { return a.median_s < b.median_s; });
        expected[{i, pass}] = {best->candidate, best->median_s};
      }
  }
  const Store store = Store::open_read_only(path);
  for (Pass pass : passes) {
    size_t rows_of_pass = 0;
    for (const BestRow& row : store.best(std::nullopt, pass)) {
      ++rows_of_pass;
      EXPECT_EQ(row.pass, pass);
      const size_t i = size_t(std::find(shapes.begin(), shapes.end(), row.shape) - shapes.begin());
      ASSERT_LT(i, shapes.size());
      const auto it = expected.find({i, pass});
      ASSERT_NE(it, expected.end()) << to_string(row.shape) << " has no " << to_string(pass) << " rows";
      EXPECT_EQ(row.candidate, it->second.first);
      EXPECT_EQ(row.median_s, it->second.second);
    }
    const Lookup lookup = Lookup::open(path, cpu_fingerprint(), {}, {}, pass);
    EXPECT_EQ(lookup.shapes(), rows_of_pass);
    for (size_t i = 0; i < shapes.size(); ++i) {
      const auto it = expected.find({i, pass});
      EXPECT_EQ(store.has_shape(cpu_fingerprint(), shapes[i], pass), it != expected.end());
      const std::optional<Answer> answer = lookup.query(shapes[i]);  // no fallback: measured answers only
      if (it == expected.end()) {
        EXPECT_TRUE(!answer || answer->source == Source::nearest) << to_string(shapes[i]);
      } else {
        ASSERT_TRUE(answer.has_value()) << to_string(shapes[i]);
        EXPECT_EQ(answer->source, Source::exact);
        EXPECT_EQ(answer->choice, it->second.first);
        EXPECT_EQ(answer->time_s, it->second.second);
      }
    }
  }
  EXPECT_EQ(store.best().size(), expected.size());  // every pass's rows, each shape once per pass
}

// A version 3 file (written before passes were stored, by that release's schema) reads as forward
// measurements only, and the next writer migrates it keeping every row, each a forward row.
TEST(StorePass, AVersion3FileIsForwardOnlyAndMigratesWithItsRowsForward) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  {
    const Connection conn(path, OpenMode::read_write);
    create_at_version(conn, 3);
    // What a version 3 tuner inserted: two candidates of one shape, the faster ring.
    conn.exec("INSERT INTO fingerprints VALUES (1, 'gloo', 'cpu', 4, 4, 1, 'gloo 0.5.0', '0.1.0');"
              "INSERT INTO shapes VALUES (1, 1, '4096', 4096, 32, 8, 128, 128, 'bf16', 'causal');"
              "INSERT INTO candidates VALUES (1, 'ulysses', 4, 1, 'ulysses-inner', 'balanced'),"
              "                              (2, 'ring', 1, 4, 'ulysses-inner', 'balanced');"
              "INSERT INTO measurements VALUES (1, 1, 1, 1, 2e-3, 1.9e-3, 2.2e-3, 5, '{}', NULL, NULL, 'cpu-gloo', "
              "'2025-01-02T03:04:05Z'), (2, 1, 1, 2, 1e-3, 0.9e-3, 1.2e-3, 5, '{}', NULL, NULL, 'cpu-gloo', "
              "'2025-01-02T03:04:06Z')");
  }
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM pragma_table_info('measurements') WHERE name = 'pass'"), 0);
  EXPECT_THROW(create_at_version(Connection(path, OpenMode::read_write), 2), Error);  // not a new file
  const auto check = [&](const char* when) {
    const Store store = Store::open_read_only(path);
    const std::vector<BestRow> forward = store.best(std::nullopt, Pass::forward);
    ASSERT_EQ(forward.size(), 1u) << when;
    EXPECT_EQ(forward[0].pass, Pass::forward) << when;
    EXPECT_EQ(forward[0].candidate.strategy, Strategy::ring) << when;
    EXPECT_EQ(forward[0].median_s, 1e-3) << when;
    EXPECT_TRUE(store.best(std::nullopt, Pass::backward).empty()) << when;
    EXPECT_TRUE(store.best(std::nullopt, Pass::forward_backward).empty()) << when;
    EXPECT_EQ(Lookup::open(path, cpu_fingerprint(), {}, {}, Pass::backward).shapes(), 0u) << when;
    for (const StoredMeasurement& m : store.measurements()) EXPECT_EQ(m.pass, Pass::forward) << when;
  };
  check("read as version 3");
  EXPECT_EQ(count_rows(path, "PRAGMA user_version"), 3);  // a reader changes nothing
  {
    Store store = Store::open(path);  // the writer migrates 3 -> 4 before it writes
    EXPECT_TRUE(store.has_shape(cpu_fingerprint(), shape_of({4096}), Pass::forward));
    EXPECT_FALSE(store.has_shape(cpu_fingerprint(), shape_of({4096}), Pass::backward));
  }
  EXPECT_EQ(count_rows(path, "PRAGMA user_version"), kSchemaVersion);
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM measurements WHERE pass = 'fwd'"), 2);
  check("migrated to the current version");
  EXPECT_EQ(integrity(path), "ok");
}

// --- leases ----------------------------------------------------------------------------------

using namespace std::chrono_literals;

// A lease row as a tuner on another host writes it, its heartbeat `age` seconds old.
void plant_lease(const std::string& path, const Fingerprint& fp, const std::string& host, int age_s) {
  { Store::open(path); }
  Connection conn(path, OpenMode::read_write);
  const std::string key = fp.backend + '\x1f' + fp.device_model + '\x1f' + std::to_string(fp.cluster.world) + '\x1f' +
                          std::to_string(fp.cluster.ranks_per_node) + '\x1f' + fp.library_versions + '\x1f' +
                          fp.cptune_version;
  const std::string sql = "INSERT INTO tune_leases (fingerprint, host, pid, start_time, acquired_at, heartbeat_at) "
                          "VALUES (?1, ?2, 4242, 17, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour'), "
                          "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3))";
  Statement st(conn, sql.c_str());
  st.bind(1, key).bind(2, std::string_view(host)).bind(3, "-" + std::to_string(age_s) + " seconds");
  st.run();
}

std::string lease_host(const std::string& path) {
  Connection conn(path, OpenMode::read_only);
  Statement st(conn, "SELECT host FROM tune_leases");
  return st.step() ? st.column_text(0) : "";
}

TEST(StoreLease, AnotherHostsLeaseWhoseHeartbeatStoppedIsTakenOver) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  plant_lease(path, cpu_fingerprint(), "a-host-that-died", 120);
  LeaseTiming timing;
  timing.expiry = 60s;
  TuneLease lease(path, cpu_fingerprint(), /*wait=*/false, timing);
  EXPECT_EQ(lease_host(path), this_process().host);
}

TEST(StoreLease, AnotherHostsLeaseWithAFreshHeartbeatIsRespected) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  plant_lease(path, cpu_fingerprint(), "a-live-host", 1);
  expect_error_naming([&] { TuneLease(path, cpu_fingerprint(), false); }, path, "on a-live-host");
  EXPECT_EQ(lease_host(path), "a-live-host");
}

// A waiter whose holder on another host stops refreshing takes the lease over once the expiry
// has passed, instead of waiting forever.
TEST(StoreLease, AWaiterTakesOverOnceTheHolderStopsRefreshing) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  plant_lease(path, cpu_fingerprint(), "a-host-that-dies-now", 0);
  LeaseTiming timing;
  timing.expiry = 1500ms;
  timing.poll = 50ms;
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> taken = done->get_future();
  const auto start = std::chrono::steady_clock::now();
  std::thread([=] {
    try {
      TuneLease lease(path, cpu_fingerprint(), /*wait=*/true, timing);
      done->set_value();
    } catch (...) {
      done->set_exception(std::current_exception());
    }
  }).detach();  // a waiter that never returns must not hang the test: it is left behind
  ASSERT_EQ(taken.wait_for(20s), std::future_status::ready) << "the waiter never took over the dead lease";
  taken.get();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 1400ms) << "a fresh heartbeat was taken over at once";
}

// The holder's heartbeat keeps its lease alive past the expiry: another process that tries
// after the expiry is refused. The other process is forked while the heartbeat thread runs.
TEST(StoreLease, TheHoldersHeartbeatKeepsItsLeaseAlivePastTheExpiry) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  LeaseTiming timing;
  timing.expiry = 1s;
  timing.heartbeat = 100ms;
  TuneLease lease(path, cpu_fingerprint(), false, timing);
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM tune_leases WHERE "
                             "(julianday('now') - julianday(heartbeat_at)) * 86400 < 0.5"),
            1)
      << "the heartbeat was not refreshed";
  const pid_t child = fork();
  if (child == 0) {
    try {
      TuneLease(path, cpu_fingerprint(), false, timing);
      _exit(1);  // taken from a live holder
    } catch (const Error& e) {
      _exit(std::string(e.what()).find("pid " + std::to_string(getppid())) != std::string::npos ? 0 : 2);
    } catch (...) {
      _exit(3);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  EXPECT_TRUE(lease.held());
}

// The tuner forks its ranks right after taking the lease. The constructor returns only once
// the heartbeat thread has started and waits, so no fork copies a lock that a thread still
// starting holds: under ASan, the allocator's, which hung a rank's Gloo thread at its own start
// (CI: 1 world-2 tune in 12; scripts/sanitize.sh runs this test). Each child, forked right after
// the lease is taken, starts a thread of its own and exits; none may hang.
TEST(StoreLease, AChildForkedRightAfterTheLeaseIsTakenStartsThreadsAndExits) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  { Store::open(path); }
  for (int i = 0; i < 60; ++i) {
    TuneLease lease(path, cpu_fingerprint(), false);
    const pid_t child = fork();
    if (child == 0) {
      for (int t = 0; t < 4; ++t) std::thread([] { std::vector<char> work(8192); }).join();
      _exit(0);
    }
    int status = -1;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (waitpid(child, &status, WNOHANG) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(child, SIGKILL);  // only the child this test forked
      waitpid(child, &status, 0);
      FAIL() << "iteration " << i << ": a child forked right after the lease was taken hung";
    }
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "iteration " << i << ": child status " << status;
  }
}

TEST(StoreLease, DbShowPrintsTheLiveLease) {
  TempDir dir;
  const std::string path = dir.file("tune.db");
  { Store::open(path).record_shape(cpu_fingerprint(), shape_of({4096}), {measurement(candidates_for_world_4()[0], 1e-3)}); }
  const TuneLease lease(path, cpu_fingerprint(), false);
  std::ostringstream out;
  std::streambuf* const console = std::cout.rdbuf(out.rdbuf());
  cli::cmd_db({"show", "--db", path});
  std::cout.rdbuf(console);
  EXPECT_NE(out.str().find("lease: gloo cpu P=4 G=4 nodes=1 held by pid " + std::to_string(getpid()) + " on " +
                           this_process().host),
            std::string::npos)
      << out.str();
  EXPECT_NE(out.str().find("heartbeat 0 s ago"), std::string::npos) << out.str();
}

// --- read-only databases ---------------------------------------------------------------------

// Runs check in a child process of another account (nobody) when this test runs as root, of
// this one otherwise; true when it returned true.
bool as_another_account(const std::function<bool()>& check) {
  const pid_t child = fork();
  if (child == 0) {
    if (geteuid() == 0 && (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0)) _exit(3);
    bool ok = false;
    try {
      ok = check();
    } catch (const std::exception& e) {
      std::cerr << "reader: " << e.what() << "\n";
    }
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::set<std::string> files_in(const std::string& folder) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) names.insert(entry.path().filename());
  return names;
}

// A WAL store whose folder is other users' to read only (0755, or 0555 for a non-root owner).
std::string read_only_store(const TempDir& dir, size_t shapes) {
  const std::string path = dir.file("tune.db");
  std::mt19937 rng(3);
  {
    Store store = Store::open(path);
    const auto all = shape_sweep();
    for (size_t i = 0; i < shapes; ++i) store.record_shape(cpu_fingerprint(), all[i], random_rows(rng, 3));
  }
  EXPECT_EQ(files_in(dir.path()), std::set<std::string>{"tune.db"}) << "a closed WAL store keeps no -wal, -shm";
  chmod(path.c_str(), 0444);
  return path;
}

bool every_reader_reads(const std::string& path, size_t shapes) {
  const Store store = Store::open_read_only(path);
  const bool rows = store.best().size() == shapes && store.check_rows().shapes == shapes && store.integrity_problems().empty();
  return rows && Lookup::open(path, cpu_fingerprint()).shapes() == shapes;
}

TEST(StoreReadOnly, AWalStoreInAFolderTheReaderCannotWriteIsReadAndNoFileIsCreated) {
  TempDir dir;
  const std::string path = read_only_store(dir, 5);
  chmod(dir.path().c_str(), geteuid() == 0 ? 0755 : 0555);
  EXPECT_TRUE(as_another_account([&] { return every_reader_reads(path, 5); }));
  chmod(dir.path().c_str(), 0755);
  EXPECT_EQ(files_in(dir.path()), std::set<std::string>{"tune.db"});
}

// A folder others may write (a shared scratch folder): a reader of another account that may
// not write the file leaves no -wal or -shm of its own, which would stop the owner's tuner.
TEST(StoreReadOnly, AReaderOfAnotherAccountLeavesNoFilesInASharedFolder) {
  TempDir dir;
  const std::string path = read_only_store(dir, 3);
  chmod(dir.path().c_str(), 01777);
  EXPECT_TRUE(as_another_account([&] { return every_reader_reads(path, 3); }));
  EXPECT_EQ(files_in(dir.path()), std::set<std::string>{"tune.db"});
  chmod(path.c_str(), 0644);
  std::mt19937 rng(4);
  Store::open(path).record_shape(cpu_fingerprint(), shape_sweep()[10], random_rows(rng, 2));
  EXPECT_EQ(Store::open_read_only(path).best().size(), 4u);
}

// While the owner's tuner has the store open, its -wal and -shm exist: a reader that cannot
// write them reads through them, the rows not yet checkpointed included.
TEST(StoreReadOnly, AReaderThatCannotWriteSeesWhatAnOpenWriterCommitted) {
  TempDir dir;
  const std::string path = read_only_store(dir, 2);
  chmod(path.c_str(), 0644);
  Store writer = Store::open(path);
  std::mt19937 rng(5);
  writer.record_shape(cpu_fingerprint(), shape_sweep()[7], random_rows(rng, 2));
  ASSERT_TRUE(std::filesystem::exists(path + "-wal") && std::filesystem::exists(path + "-shm"));
  chmod(dir.path().c_str(), geteuid() == 0 ? 0755 : 0555);
  EXPECT_TRUE(as_another_account([&] { return Store::open_read_only(path).best().size() == 3; }));
  chmod(dir.path().c_str(), 0755);
}

// --- cptune db -------------------------------------------------------------------------------

std::string cptune_db(const std::vector<std::string>& args) {
  std::ostringstream out;
  std::streambuf* const console = std::cout.rdbuf(out.rdbuf());
  try {
    cli::cmd_db(args);
  } catch (...) {
    std::cout.rdbuf(console);
    throw;
  }
  std::cout.rdbuf(console);
  return out.str();
}

class DbCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("tune.db");
    Store store = Store::open(path_);
    std::mt19937 rng(10);
    const auto candidates = candidates_for_world_4();
    store.record_shape(cpu_fingerprint(), shape_of({77, 4097}),
                       {measurement(candidates[0], 2e-3), measurement(candidates[7], 1e-3)});
    store.record_shape(cpu_fingerprint(), shape_of({8192}), random_rows(rng, 4));
    store.record_shape(cpu_fingerprint(8), shape_of({8192}), random_rows(rng, 3, 8));
  }
  TempDir dir_;
  std::string path_;
};

TEST_F(DbCommand, ListShowsEveryFingerprintWithItsShapeAndMeasurementCounts) {
  std::istringstream lines(cptune_db({"list", "--db", path_}));
  std::vector<std::string> rows;
  for (std::string line; std::getline(lines, line);) rows.push_back(line);
  ASSERT_EQ(rows.size(), 3u);
  const auto words = [](const std::string& line) {
    std::istringstream in(line);
    return std::vector<std::string>(std::istream_iterator<std::string>(in), {});
  };
  const std::vector<std::string> a = words(rows[1]), b = words(rows[2]);
  EXPECT_EQ((std::vector<std::string>(a.begin(), a.begin() + 8)),
            (std::vector<std::string>{"1", "gloo", "cpu", "4", "4", "1", "2", "6"}));
  EXPECT_EQ((std::vector<std::string>(b.begin(), b.begin() + 8)),
            (std::vector<std::string>{"2", "gloo", "cpu", "8", "8", "1", "1", "3"}));
}

TEST_F(DbCommand, ShowPrintsTheBestCandidateOfEveryShapeOfOneFingerprint) {
  const std::string all = cptune_db({"show", "--db", path_});
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 4);  // header and three shapes
  const std::string one = cptune_db({"show", "--db", path_, "--fingerprint", "1"});
  EXPECT_EQ(std::count(one.begin(), one.end(), '\n'), 3);
  const size_t at = one.find("77,4097");
  ASSERT_NE(at, std::string::npos) << one;
  const std::string packed = one.substr(at, one.find('\n', at) - at);  // the faster: hybrid U=2 R=2 kv-aligned
  EXPECT_NE(packed.find("hybrid "), std::string::npos) << packed;
  EXPECT_NE(packed.find("kv-aligned"), std::string::npos) << packed;
  EXPECT_THROW(cptune_db({"show", "--db", path_, "--fingerprint", "9"}), Error);
}

TEST_F(DbCommand, ExportGivesEveryMeasurementAsJsonAndAsCsv) {
  const auto json = nlohmann::json::parse(cptune_db({"export", "--db", path_, "--json"}));
  ASSERT_EQ(json.size(), 9u);
  EXPECT_EQ(json[0]["seq_lens"], (std::vector<int64_t>{77, 4097}));
  EXPECT_EQ(json[0]["median_s"], 2e-3);
  EXPECT_EQ(json[0]["phase_medians_s"]["attention"], 2e-3 * 0.6);
  EXPECT_EQ(json[0]["world"], 4);
  EXPECT_EQ(json[8]["world"], 8);
  const std::string csv = cptune_db({"export", "--db", path_, "--csv"});
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 10);
  EXPECT_EQ(csv.substr(0, csv.find(',')), "measurement_id");
  EXPECT_NE(csv.find(",\"77,4097\","), std::string::npos);
  EXPECT_NE(csv.find("\"{\"\"attention\"\":"), std::string::npos);  // JSON inside CSV, quotes doubled
  EXPECT_THROW(cptune_db({"export", "--db", path_}), Error);
  EXPECT_THROW(cptune_db({"export", "--db", path_, "--csv", "--json"}), Error);
}

TEST_F(DbCommand, ListingsPrintBlockMasksByTheirText) {
  std::mt19937 rng(20);
  {
    Store store = Store::open(path_);
    store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, parse_mask("strided:16,4")), random_rows(rng, 2));
    store.record_shape(cpu_fingerprint(), shape_of({4096}, 32, 8, random_table(rng, 64)), random_rows(rng, 2));
  }
  const std::string show = cptune_db({"show", "--db", path_});
  EXPECT_NE(show.find(" strided:16,4 "), std::string::npos) << show;
  EXPECT_NE(show.find(" blocks:64#"), std::string::npos) << show;  // too long for the column
  EXPECT_NE(show.find("`cptune db export` prints its text"), std::string::npos) << show;
  const auto json = nlohmann::json::parse(cptune_db({"export", "--db", path_, "--json"}));
  std::set<std::string> masks;
  for (const auto& row : json) masks.insert(row["mask"].get<std::string>());
  EXPECT_TRUE(masks.count("strided:16,4"));
  EXPECT_TRUE(std::any_of(masks.begin(), masks.end(), [](const std::string& m) {
    return m.rfind("blocks:64:", 0) == 0 && parse_mask(m).blocks->n() == 64;
  }));
  const std::string csv = cptune_db({"export", "--db", path_, "--csv"});
  EXPECT_NE(csv.find(",\"strided:16,4\","), std::string::npos);
}

TEST_F(DbCommand, AMissingDatabaseOrAnUnknownActionIsAnError) {
  expect_error_naming([&] { cptune_db({"list", "--db", dir_.file("missing.db")}); }, dir_.file("missing.db"),
                      "does not exist");
  EXPECT_THROW(cptune_db({"frob", "--db", path_}), Error);
  EXPECT_THROW(cptune_db({}), Error);
}

}  // namespace
}  // namespace cptune::db
