// The Python client (the package python/cptune, over ctypes) an engine written in Python uses,
// through its command line (scripts/cptune_lookup.py: `python -m cptune` from the source tree)
// and its classes, against libcptune_lookup.so and a database written through the C++ Store.
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
    uaa.median_s = uaa.min_s = uaa.max_s = 2.5e-3;
    uaa.iterations = hybrid.iterations = 3;
    hybrid.candidate = {Strategy::hybrid_uaa, 2, 2, RankOrder::ring_inner, HeadPolicy::kv_aligned};
    hybrid.median_s = hybrid.min_s = hybrid.max_s = 1.5e-3;
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
  EXPECT_EQ(answer["rank_order"], "ring-inner") << "the C ABI's name answers too";
  EXPECT_EQ(answer["head_policy"], "kv-aligned");
  EXPECT_EQ(answer["time_s"], 1.5e-3);
  EXPECT_EQ(answer["measured_tokens"], 4174);
}

TEST_F(PythonClient, AnotherLengthOfTheFamilyAnswersNearestAsOneLine) {
  const CommandResult r = client("--seq 6000");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "nearest hybrid-uaa U=2 R=2 ring-inner kv-aligned 0.0015 s\n");
}

TEST_F(PythonClient, AShapeOfNoMeasuredFamilyIsNotFoundWithExitCode3LikeTheCli) {
  const CommandResult r = client("--seq 4096 --head-dim 64 --json");
  EXPECT_EQ(r.exit_code, 3) << r.output;
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
                           "sys.path.insert(0, '" CPTUNE_SOURCE_DIR "/python')\n"
                           "import cptune\n"
                           "cptune.use_library(sys.argv[1])\n"
                           "with cptune.Lookup(sys.argv[2], world=4, hardware=None) as lookup:\n"
                           "    exact = lookup.best(cptune.Shape([77, 4097], 32, 8, mask='causal'))\n"
                           "    assert (exact.source, exact.strategy) == ('exact', 'hybrid-uaa'), exact\n"
                           "    assert exact.rank_order == exact.order == 'ring-inner', exact\n"
                           "    try:\n"
                           "        lookup.best(cptune.Shape([4096], 32, 8, mask='full'))\n"
                           "        raise SystemExit('expected NotFound')\n"
                           "    except cptune.NotFound:\n"
                           "        pass\n"
                           "print('ok')\n";
  const CommandResult r = run(std::string(kPython) + " " + script + " " + kLibrary + " " + db_);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "ok\n");
}

// The package (python/cptune) as an engine uses it for a block-sparse mask: a Mask made once from
// a pattern's text or from its rows gives the stored answer; a bad one names itself.
TEST_F(PythonClient, ThePackagePassesABlockMaskMadeOnceFromTextOrRows) {
  {
    Store store = Store::open(db_);
    MeasurementRow ring;
    ring.candidate = {Strategy::ring_zigzag, 1, 4, RankOrder::ulysses_inner, HeadPolicy::balanced};
    ring.median_s = ring.min_s = ring.max_s = 1e-3;
    ring.iterations = 3;
    store.record_shape(Fingerprint{"gloo", "cpu", Cluster{4, 4}, "gloo 0.5.0", "0.1.0"},
                       AttentionShape{1, {4096}, 32, 8, 128, 128, DType::bf16, parse_mask("star:4")}, {ring});
  }
  // The package as pip lays it out: the library bundled beside the modules.
  ASSERT_EQ(run("cp -r " CPTUNE_SOURCE_DIR "/python/cptune " + dir_ + "/ && cp -L " + kLibrary + " " + dir_ +
                "/cptune/libcptune_lookup.so").exit_code, 0);
  const std::string script = dir_ + "/engine.py";
  std::ofstream(script) << "import sys\n"
                           "sys.path.insert(0, sys.argv[1])\n"
                           "import cptune\n"
                           "lookup = cptune.Lookup(sys.argv[2], world=4, hardware=None)\n"
                           "star = cptune.Mask('star:4')\n"
                           "rows = cptune.Mask(rows=['C...', 'FC..', 'F.C.', 'F..C'])\n"
                           "cells = cptune.Mask(rows=[[2, 0, 0, 0], [1, 2, 0, 0], [1, 0, 2, 0], [1, 0, 0, 2]])\n"
                           "assert star.text == 'star:4', star.text\n"
                           "assert rows.text == 'blocks:4:C.../FC../F.C./F..C', rows.text\n"
                           "for mask in (star, rows, cells, 'star:4', rows.text):\n"
                           "    a = lookup.best(cptune.Shape([4096], q_heads=32, kv_heads=8, mask=mask))\n"
                           "    assert (a.source, a.strategy) == ('exact', 'ring-zigzag'), (mask, a)\n"
                           "a = lookup.best(cptune.Shape([6000], q_heads=32, kv_heads=8, mask=star))\n"
                           "assert a.source == 'nearest', a\n"
                           "for bad, words in (('star:0', 'block count 0'), ('stream:4,1,0', 'LOCAL = 0')):\n"
                           "    try:\n"
                           "        cptune.Mask(bad)\n"
                           "        raise SystemExit('expected CptuneError for ' + bad)\n"
                           "    except cptune.CptuneError as e:\n"
                           "        assert words in str(e), str(e)\n"
                           "try:\n"
                           "    cptune.Mask(rows=['C.', 'FX'])\n"
                           "    raise SystemExit('expected CptuneError')\n"
                           "except cptune.CptuneError as e:\n"
                           "    assert \"'X'\" in str(e), str(e)\n"
                           "print('ok')\n";
  const CommandResult r = run(std::string(kPython) + " " + script + " " + dir_ + " " + db_);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "ok\n");
}

}  // namespace
}  // namespace cptune::db
