// scripts/cptune_lookup.py, the ctypes client an engine written in Python would use, against
// libcptune_lookup.so and a database written through the C++ Store.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/command.h"
#include "db/store.h"

namespace cptune::db {
namespace {

#ifndef CPTUNE_PYTHON_ENV
#define CPTUNE_PYTHON_ENV ""  // tests/CMakeLists.txt: the ASan runtime preloaded under -DCPTUNE_SANITIZE
#endif
constexpr const char* kPython = CPTUNE_PYTHON_ENV "/usr/bin/python3 -B";  // -B: no __pycache__ in the source tree
constexpr const char* kClient = CPTUNE_SOURCE_DIR "/scripts/cptune_lookup.py";
constexpr const char* kLibrary = CPTUNE_BUILD_DIR "/db/libcptune_lookup.so";

using testing::CommandResult;
CommandResult run(const std::string& command) { return testing::run_command(command); }

class PythonClient : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/cptune_python_XXXXXX";
    dir_ = mkdtemp(pattern);
    db_ = dir_ + "/tune.db";
    Store store = Store::open(db_);
    const Fingerprint fp{"gloo", "cpu", Cluster{4, 4}, "gloo 0.5.0", "0.1.0"};
    const AttentionShape shape{1, {77, 4097}, 32, 8, 128, 128, DType::bf16, {MaskKind::causal, 0}};
    MeasurementRow uaa, hybrid;
    uaa.candidate = {Strategy::uaa, 4, 1, RankOrder::ulysses_inner, HeadPolicy::balanced};
    uaa.median_s = 2.5e-3;
    hybrid.candidate = {Strategy::hybrid_uaa, 2, 2, RankOrder::ring_inner, HeadPolicy::kv_aligned};
    hybrid.median_s = 1.5e-3;
    store.record_shape(fp, shape, {uaa, hybrid});
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // The client's command line with this test's library and database.
  CommandResult client(const std::string& args, const std::string& db = "") const {
    return run(std::string(kPython) + " " + kClient + " --lib " + kLibrary + " --db " + (db.empty() ? db_ : db) +
               " --world 4 --heads 32 --kv-heads 8 --mask causal " + args);
  }

  std::string dir_, db_;
};

TEST_F(PythonClient, AnExactShapeAnswersTheMeasuredWinnerAsJson) {
  const CommandResult r = client("--seq 77,4097 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto answer = nlohmann::json::parse(r.output);
  EXPECT_EQ(answer["source"], "exact");
  EXPECT_EQ(answer["strategy"], "hybrid-uaa");
  EXPECT_EQ(answer["ulysses"], 2);
  EXPECT_EQ(answer["ring"], 2);
  EXPECT_EQ(answer["order"], "ring-inner");
  EXPECT_EQ(answer["head_policy"], "kv-aligned");
  EXPECT_EQ(answer["time_s"], 1.5e-3);
  EXPECT_EQ(answer["measured_tokens"], 4174);
}

TEST_F(PythonClient, AnotherLengthOfTheFamilyAnswersNearestAsOneLine) {
  const CommandResult r = client("--seq 6000");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "nearest hybrid-uaa U=2 R=2 ring-inner kv-aligned 0.0015 s\n");
}

TEST_F(PythonClient, AShapeOfNoMeasuredFamilyIsNotFoundWithExitCode1) {
  const CommandResult r = client("--seq 4096 --head-dim 64 --json");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(nlohmann::json::parse(r.output)["source"], "not-found");
}

TEST_F(PythonClient, AMissingDatabaseOrABadValueIsAnErrorWithExitCode2) {
  const CommandResult missing = client("--seq 4096", dir_ + "/missing.db");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.output.find("database: database '" + dir_ + "/missing.db' does not exist"), std::string::npos)
      << missing.output;
  const CommandResult dtype = client("--seq 4096 --dtype bf17");
  EXPECT_EQ(dtype.exit_code, 2);
  EXPECT_NE(dtype.output.find("invalid-argument: unknown dtype 'bf17'"), std::string::npos) << dtype.output;
}

TEST_F(PythonClient, TheClassApiAnswersLikeTheCommandLine) {
  const std::string script = dir_ + "/engine.py";
  std::ofstream(script) << "import sys\n"
                           "sys.path.insert(0, '" CPTUNE_SOURCE_DIR "/scripts')\n"
                           "from cptune_lookup import CptuneLookup\n"
                           "fp = {'backend': 'gloo', 'device_model': 'cpu', 'world': 4}\n"
                           "with CptuneLookup(sys.argv[1], sys.argv[2], fp) as lookup:\n"
                           "    assert lookup.shapes == 1, lookup.shapes\n"
                           "    exact = lookup.query([77, 4097], 32, 8, mask='causal')\n"
                           "    assert exact['source'] == 'exact' and exact['strategy'] == 'hybrid-uaa', exact\n"
                           "    assert lookup.query([4096], 32, 8, mask='full') is None\n"
                           "print('ok')\n";
  const CommandResult r = run(std::string(kPython) + " " + script + " " + kLibrary + " " + db_);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "ok\n");
}

}  // namespace
}  // namespace cptune::db
