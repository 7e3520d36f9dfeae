// The cptune binary as a user meets it: JSON documents with the promised keys, bad input named
// with exit code 2, and a tuner killed with SIGKILL that resumes without losing a finished shape.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "db/store.h"
#include "tests/command.h"
#include "tests/temp_dir.h"
#include "tuner/cli/shapes_file.h"

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
  const std::string args = "tune --db " + db + " --world 2 --shapes " + shapes + " --iterations 2 --warmups 0 --top 2";
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
  const auto tune = run_command(cptune("tune --db " + db + " --world 2 --seq 256 --heads 4 --head-dim 16 --iterations 2 --top 1"));
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

// tune --pass stores the pass it timed; lookup --pass answers only from that pass's rows, and the
// same tune again for another pass measures it (nothing of the first pass is taken for it).
TEST(CliLookup, EachPassIsTunedAndAnsweredOnItsOwn) {
  TempDir dir;
  const std::string db = dir.file("t.db");
  const std::string shape = " --world 2 --seq 256 --heads 4 --head-dim 16";
  const auto tune_bwd = run_command(cptune("tune --db " + db + shape + " --iterations 2 --top 1 --pass bwd"));
  ASSERT_EQ(tune_bwd.exit_code, 0) << tune_bwd.output;
  auto answer = [&](const std::string& pass) {
    const auto r = run_command(cptune("lookup --db " + db + shape + " --hardware '' --json --pass " + pass));
    return std::pair{r.exit_code, r.output};
  };
  const auto [bwd_code, bwd] = answer("bwd");
  ASSERT_EQ(bwd_code, 0) << bwd;
  EXPECT_EQ(nlohmann::json::parse(bwd)["source"], "exact");
  EXPECT_EQ(nlohmann::json::parse(bwd)["pass"], "bwd");
  const auto [fwd_code, fwd] = answer("fwd");
  EXPECT_EQ(fwd_code, 3) << "no forward was measured and no simulator asked: not found\n" << fwd;
  EXPECT_NE(fwd.find("no layout for this shape"), std::string::npos) << fwd;
  const auto tune_fwd = run_command(cptune("tune --db " + db + shape + " --iterations 2 --top 1"));
  ASSERT_EQ(tune_fwd.exit_code, 0) << tune_fwd.output;
  EXPECT_EQ(tune_fwd.output.find("skipped"), std::string::npos) << "the forward was measured, not skipped\n"
                                                                << tune_fwd.output;
  EXPECT_EQ(answer("fwd").first, 0);
  const auto again = run_command(cptune("tune --db " + db + shape + " --iterations 2 --top 1 --pass bwd"));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("skipped"), std::string::npos) << "bwd already stored\n" << again.output;
  const auto bad = run_command(cptune("lookup --db " + db + shape + " --pass sideways"));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("sideways"), std::string::npos) << bad.output;
}

// --- block-sparse masks at the command line -----------------------------------------------------

// One text of every form parse_mask reads, and its canonical text (what every output prints).
struct MaskForm {
  std::string given, canonical;
};
const std::vector<MaskForm> kMaskForms{
    {"full", "full"},
    {"causal", "causal"},
    {"sliding:40", "sliding:40"},
    {"sliding-window:40", "sliding:40"},
    {"strided:8,3", "strided:8,3"},
    {"global-local:8,1,2", "global-local:8,1,2"},
    {"star:8", "star:8"},
    {"stream:8,1,3", "stream:8,1,3"},
    {"blocks:3:C../FC./.FC", "blocks:3:C../FC./.FC"},
    {"blocks:3:c../fc./.fc", "blocks:3:C../FC./.FC"},
};

int64_t doc_blocks(const std::string& pattern) { return parse_mask(pattern).blocks->n(); }

nlohmann::json mask_json(const std::string& mask_args) {
  const auto r = run_command(cptune("mask show " + mask_args + " --json"));
  EXPECT_EQ(r.exit_code, 0) << mask_args << "\n" << r.output;
  return r.exit_code == 0 ? nlohmann::json::parse(r.output) : nlohmann::json::object();
}

TEST(CliMask, EveryCommandNamingAShapeTakesEveryFormAndPrintsItsCanonicalText) {
  TempDir dir;
  std::ofstream(dir.file("table.txt")) << "# a table file\n3\nC . .\nF C .\n. F C\n";
  std::vector<MaskForm> forms = kMaskForms;
  forms.push_back({"blocks:" + dir.file("table.txt"), "blocks:3:C../FC./.FC"});
  { db::Store::open(dir.file("empty.db")); }  // a database without rows: lookups are simulated
  for (const MaskForm& f : forms) {
    const std::string shape = "--seq 301 --heads 4 --world 2 --head-dim 16 --mask " + f.given;
    const auto layout = run_command(cptune("layout " + shape + " --strategy ring --json"));
    ASSERT_EQ(layout.exit_code, 0) << f.given << "\n" << layout.output;
    EXPECT_EQ(nlohmann::json::parse(layout.output)["shape"]["mask"], f.canonical);
    const auto simulate = run_command(cptune("simulate " + shape + " --hardware cpu-gloo --json"));
    ASSERT_EQ(simulate.exit_code, 0) << f.given << "\n" << simulate.output;
    EXPECT_EQ(nlohmann::json::parse(simulate.output)["shape"]["mask"], f.canonical);
    // No database row for it: the simulator's pick on this mask.
    const auto lookup = run_command(cptune("lookup --db " + dir.file("empty.db") + " " + shape + " --json"));
    ASSERT_EQ(lookup.exit_code, 0) << f.given << "\n" << lookup.output;
    EXPECT_EQ(nlohmann::json::parse(lookup.output)["source"], "simulated");
    EXPECT_EQ(mask_json(f.given)["mask"], f.canonical);
  }
}

TEST(CliMask, SimulateCsvQuotesAPatternSoItsCommasStayInOneField) {
  const auto r = run_command(cptune("simulate --seq 1024:2048 --heads 4 --world 2 --hardware cpu-gloo --mask strided:8,3 --csv"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string header, row;
  std::getline(lines, header);
  std::getline(lines, row);
  EXPECT_NE(row.find(",\"strided:8,3\","), std::string::npos) << row;
  // Outside the quotes, a row has as many commas as the header.
  size_t commas = 0;
  bool quoted = false;
  for (char c : row) {
    if (c == '"') quoted = !quoted;
    commas += c == ',' && !quoted;
  }
  EXPECT_EQ(commas, size_t(std::count(header.begin(), header.end(), ',')));
}

TEST(CliMask, BadMasksExitWith2NamingTheBadValue) {
  struct Case {
    std::string mask, needle;
  };
  for (const Case& c : std::vector<Case>{
           {"star:0", "block count 0"},
           {"star:257", "block count 257"},
           {"strided:8", "strided:N,S"},
           {"strided:8,0", "S = 0"},
           {"stream:8,1,0", "LOCAL = 0"},
           {"global-local:8,x,2", "'x'"},
           {"diagonal:8", "unknown mask 'diagonal:8'"},
           {"blocks:2:CX/FC", "'X'"},
           {"blocks:2:C./FC/FF", "3 rows for 2 blocks"},
           {"blocks:/nonexistent/table.txt", "/nonexistent/table.txt"},
           {"blocks", "needs a table"},
       }) {
    for (const std::string command : {"layout --strategy ring", "simulate --hardware cpu-gloo", "mask show"}) {
      const std::string args = command == "mask show"
                                   ? "mask show '" + c.mask + "'"
                                   : command + " --seq 64 --heads 4 --world 2 --mask '" + c.mask + "'";
      const auto r = run_command(cptune(args));
      EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
      EXPECT_NE(r.output.find(c.needle), std::string::npos) << args << "\n" << r.output;
    }
  }
  const auto no_mask = run_command(cptune("mask show"));
  EXPECT_EQ(no_mask.exit_code, 2) << no_mask.output;
  const auto big = run_command(cptune("mask show star:4 --seq 4G"));
  EXPECT_EQ(big.exit_code, 2) << big.output;
  EXPECT_NE(big.output.find("--seq 4G"), std::string::npos) << big.output;
}

TEST(CliMask, ShowPrintsTheTableItsCellCountsAndItsCanonicalText) {
  const auto r = run_command(cptune("mask show star:4 --seq 8"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("mask star:4\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("3 full, 4 causal, 9 empty"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("C . . .\nF C . .\nF . C .\nF . . C\n"), std::string::npos) << r.output;
  // Three FULL cells of 2 x 2 pairs, four CAUSAL diagonal cells of 3: 24 of 64.
  EXPECT_NE(r.output.find("24 of 64 (query, key) pairs visible, density 0.375000"), std::string::npos) << r.output;
}

// The closed form of docs/block-masks.md: with s = L / N tokens a block, FULL cells hold s^2 pairs and CAUSAL
// diagonal cells s(s+1)/2; the patterns put CAUSAL cells only on the diagonal.
TEST(CliMask, VisiblePairsOfEveryPatternFollowTheClosedFormWhenNDividesL) {
  for (const std::string pattern : {"strided:16,4", "global-local:16,1,2", "star:16", "stream:16,1,3", "strided:5,2"}) {
    for (int64_t s : {1, 3, 64}) {
      const nlohmann::json doc = mask_json(pattern + " --seq " + std::to_string(s * doc_blocks(pattern)));
      const int64_t full = doc["cells"]["full"], causal = doc["cells"]["causal"], empty = doc["cells"]["empty"];
      const int64_t n = doc["blocks"];
      EXPECT_EQ(full + causal + empty, n * n);
      EXPECT_EQ(doc["visible_pairs"].get<int64_t>(), full * s * s + causal * s * (s + 1) / 2) << pattern << " s=" << s;
      EXPECT_EQ(doc["all_pairs"].get<int64_t>(), n * s * n * s);
      int64_t diagonal_causal = 0;
      for (int64_t q = 0; q < n; ++q) diagonal_causal += doc["rows"][q].get<std::string>()[q] == 'C';
      EXPECT_EQ(diagonal_causal, causal) << pattern;
    }
  }
}

TEST(CliMask, ShowJsonIsATableFileThatReadsBackAsTheSameTable) {
  TempDir dir;
  for (const MaskForm& f : kMaskForms) {
    const nlohmann::json doc = mask_json(f.given);
    if (doc["kind"] != "blocks") {
      EXPECT_FALSE(doc.contains("rows")) << f.given;
      continue;
    }
    std::ofstream(dir.file("t.json")) << doc.dump();
    const nlohmann::json back = mask_json("blocks:" + dir.file("t.json"));
    EXPECT_EQ(back["rows"], doc["rows"]) << f.given;
    const nlohmann::json inline_back = mask_json(back["mask"].get<std::string>());
    EXPECT_EQ(inline_back["rows"], doc["rows"]) << f.given;
  }
}

TEST(CliShapesFile, AMaskWithCommasIsQuotedOrWrittenWithSemicolons) {
  TempDir dir;
  std::ofstream(dir.file("table.txt")) << "2\nC.\nFC\n";
  std::ofstream(dir.file("shapes.csv")) << "seq,heads,mask\n"
                                        << "4096,8,\"strided:16,4\"\n"
                                        << "4096,8,global-local:16;1;2\n"
                                        << "4096,8,blocks:" << dir.file("table.txt") << "\n"
                                        << "4096,8,blocks:2:C./FC\n"  // the same table: listed once
                                        << "4096,8,star:16\n";
  const std::vector<AttentionShape> shapes = cli::read_shapes_file(dir.file("shapes.csv"));
  ASSERT_EQ(shapes.size(), 4u);
  EXPECT_EQ(to_string(shapes[0].mask), "strided:16,4");
  EXPECT_EQ(to_string(shapes[1].mask), "global-local:16,1,2");
  EXPECT_EQ(to_string(shapes[2].mask), "blocks:2:C./FC");
  EXPECT_EQ(shapes[3].mask, parse_mask("star:16"));

  std::ofstream(dir.file("bad.csv")) << "seq,heads,mask\n4096,8,strided:16,4\n";
  try {
    cli::read_shapes_file(dir.file("bad.csv"));
    ADD_FAILURE() << "an unquoted pattern with a comma is one cell too many";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("quoted"), std::string::npos) << e.what();
  }
  std::ofstream(dir.file("bad2.csv")) << "seq,heads,mask\n4096,8,\"stream:16,1,0\"\n";
  const auto r = run_command(cptune("tune --db " + dir.file("t.db") + " --world 2 --shapes " + dir.file("bad2.csv")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("line 2: LOCAL = 0"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace cptune
