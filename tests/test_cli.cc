// The cptune binary as a user meets it: JSON documents with the promised keys, bad input named
// with exit code 2, and a tuner killed with SIGKILL that resumes without losing a finished shape.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "db/store.h"
#include "tests/command.h"
#include "tests/temp_dir.h"

namespace cptune {
namespace {

using testing::run_command;

std::string cptune(const std::string& args) { return std::string(CPTUNE_BINARY) + " " + args; }

using testing::TempDir;

TEST(CliLayout, JsonHasEveryPromisedKeyForEveryRank) {
  const auto r = run_command(cptune("layout --seq 4097 --heads 25 --kv-heads 5 --head-dim 128 --world 3 --strategy uaa --json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto doc = nlohmann::json::parse(r.output);
  EXPECT_EQ(doc["strategy"], "uaa");
  EXPECT_EQ(doc["world"], 3);
  EXPECT_EQ(doc["ulysses"], 3);
  EXPECT_EQ(doc["ring"], 1);
  EXPECT_EQ(doc["padding"]["tokens"], 0);
  EXPECT_EQ(doc["padding"]["heads"], 0);
  ASSERT_EQ(doc["ranks"].size(), 3u);
  int64_t tokens = 0, heads = 0;
  for (const auto& rank : doc["ranks"]) {
    for (const char* key : {"rank", "seq_tokens", "q_heads", "kv_heads", "send_bytes", "recv_bytes", "flops", "peak_bytes"})
      EXPECT_TRUE(rank.contains(key)) << key;
    tokens += rank["seq_tokens"].get<int64_t>();
    heads += rank["q_heads"].get<int64_t>();
  }
  EXPECT_EQ(tokens, 4097);
  EXPECT_EQ(heads, 25);
}

TEST(CliLayout, PackedBatchAndTableWork) {
  const auto r = run_command(cptune("layout --seq-list 77,4097 --heads 24 --kv-heads 8 --world 4 --ulysses 2 --strategy hybrid-uaa"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("hybrid-uaa"), std::string::npos);
  EXPECT_NE(r.output.find("s1["), std::string::npos) << "the second sequence's runs are listed";
}

TEST(CliErrors, BadValuesAreNamedWithExitCode2) {
  struct Case {
    std::string args, needle;
  };
  for (const Case& c : std::vector<Case>{
           {"layout --seq 4097 --heads 25 --kv-heads 5 --world 3 --strategy ulysses", "not divisible by Ulysses degree 3; use uaa"},
           {"layout --seq 4097 --heads 24 --world 3 --strategy bogus", "unknown strategy 'bogus'"},
           {"layout --seq 4x --heads 24 --world 3", "bad --seq '4x'"},
           {"layout --seq -64 --heads 8 --world 3", "bad --seq '-64'"},
           {"tune --db /tmp/never.db --world 2 --shapes " CPTUNE_SOURCE_DIR "/tests/fuzz/corpus/shapes_csv/negative-heads-with-bom.csv",
            "bad heads '-08'"},
           {"layout --seq 2 --heads 24 --world 3", "sequence length 2 is smaller than world 3"},
           {"layout --seq 64 --heads 24 --world 3 --mask sliding", "needs a window"},
           {"layout --seq 64 --heads 24 --world 6 --strategy hybrid --ulysses 4", "hybrid needs"},
           {"layout --seq 64 --heads 24", "--world is required"},
           {"run --world 2 --seq 64 --heads 4 --iterations 0", "--iterations 0"},
           {"run --world 2 --seq 64 --heads 4 --backend mpi", "--backend mpi"},
           {"tune --world 2 --seq 64 --heads 4", "--db is required"},
           {"lookup --db /nonexistent/x.db --world 2 --seq 64 --heads 4", "/nonexistent/x.db"},
           {"frobnicate", "unknown command 'frobnicate'"},
       }) {
    const auto r = run_command(cptune(c.args));
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST(CliRun, JsonReportsVerificationAndPhases) {
  const auto r = run_command(cptune("run --world 3 --strategy uaa --seq 301 --heads 25 --kv-heads 5 --head-dim 16 "
                                    "--iterations 2 --verify --json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto doc = nlohmann::json::parse(r.output);
  EXPECT_EQ(doc["verified"], true);
  EXPECT_LE(doc["max_abs_err"].get<double>(), doc["tolerance"].get<double>());
  for (const char* key : {"median", "min", "max"}) EXPECT_GT(doc["time_s"][key].get<double>(), 0) << key;
  EXPECT_TRUE(doc["phases"].contains("qkv"));
  EXPECT_TRUE(doc["phases"].contains("o"));
  EXPECT_TRUE(doc["phases"].contains("gather"));  // UAA's gather of per-rank lengths
}

TEST(CliTune, ABadShapesRowIsNamedByLineBeforeAnyRankStarts) {
  TempDir dir;
  std::ofstream(dir.file("shapes.csv")) << "seq,heads,kv_heads\n64,8,8\n64,eight,8\n";
  const auto r = run_command(cptune("tune --db " + dir.file("t.db") + " --world 2 --shapes " + dir.file("shapes.csv")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("shapes.csv line 3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("'eight'"), std::string::npos) << r.output;
}

TEST(CliTune, ANonDatabaseFileIsRefusedAndLeftAsItWas) {
  TempDir dir;
  const std::string db = dir.file("notes.db");
  std::ofstream(db) << "these are my notes, not a database\n";
  const auto r = run_command(cptune("tune --db " + db + " --world 2 --seq 64 --heads 4 --head-dim 8"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(db), std::string::npos) << r.output;
  std::ifstream in(db);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text, "these are my notes, not a database\n");
}

// The kill -9 property end to end: a tune killed mid-run keeps every finished shape in
// a database that passes integrity_check, and the rerun measures only the rest.
TEST(CliTune, KilledMidRunKeepsFinishedShapesAndTheRerunCompletesTheRest) {
  TempDir dir;
  const std::string db = dir.file("t.db"), shapes = dir.file("shapes.csv");
  {
    std::ofstream out(shapes);
    out << "seq,heads,kv_heads,head_dim,mask\n";
    for (int s = 0; s < 6; ++s) out << 200 + 37 * s << ",4,2,16,causal\n";
  }
  const std::string args = "tune --db " + db + " --world 2 --shapes " + shapes + " --iterations 2 --warmups 0 --top-k 2";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", (cptune(args) + " >/dev/null 2>&1").c_str(), nullptr);
    _exit(127);
  }
  // Kill the whole process group of the tune (launcher and ranks) once a shape is stored.
  const auto stored = [&] {
    if (!std::filesystem::exists(db)) return size_t{0};
    try {
      return db::Store::open_read_only(db).best().size();
    } catch (const Error&) {
      return size_t{0};
    }
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool exited = false;
  while (stored() == 0 && !exited && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    exited = waitpid(pid, nullptr, WNOHANG) == pid;
  }
  ASSERT_FALSE(exited && stored() == 0) << "the tune ended before storing a shape: run `" << cptune(args) << "`";
  run_command("pkill -9 -f 'cptune tune --db " + db + "'");
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  const size_t before = stored();
  ASSERT_GE(before, 1u);
  const auto check = run_command("sqlite3 " + db + " 'PRAGMA integrity_check;'");
  EXPECT_NE(check.output.find("ok"), std::string::npos) << check.output;

  const auto rerun = run_command(cptune(args));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  EXPECT_EQ(stored(), 6u);
  size_t skipped = 0;
  for (size_t at = 0; (at = rerun.output.find("already stored", at)) != std::string::npos; ++at) ++skipped;
  EXPECT_GE(skipped, before) << "every shape finished before the kill is skipped, not measured again\n" << rerun.output;
}

TEST(CliLookup, AnswersExactNearestAndSimulatedAfterATune) {
  TempDir dir;
  const std::string db = dir.file("t.db");
  const auto tune = run_command(cptune("tune --db " + db + " --world 2 --seq 256 --heads 4 --head-dim 16 --iterations 2 --top-k 1"));
  ASSERT_EQ(tune.exit_code, 0) << tune.output;
  auto source = [&](const std::string& shape) {
    const auto r = run_command(cptune("lookup --db " + db + " --world 2 --head-dim 16 --json " + shape));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output)["source"].get<std::string>();
  };
  EXPECT_EQ(source("--seq 256 --heads 4"), "exact");
  EXPECT_EQ(source("--seq 300 --heads 4"), "nearest");
  EXPECT_EQ(source("--seq 300 --heads 6"), "simulated");
}

}  // namespace
}  // namespace cptune
