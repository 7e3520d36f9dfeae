// The CLI of issue 13 as a user runs it: --engine and the constraint flags on simulate, tune and
// lookup (filters, never a rejection), lookup's engine configuration, run's nccl-tests columns,
// --seq sweep and --csv, and the tune progress line (ETA redrawn every round, 80 columns).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "tests/command.h"
#include "tests/temp_dir.h"

namespace cptune {
namespace {

using testing::run_command;
using testing::TempDir;

std::string cptune(const std::string& args) { return std::string(CPTUNE_BINARY) + " " + args; }

nlohmann::json json_of(const testing::CommandResult& r) {
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return nlohmann::json::parse(r.output);
}

TEST(EngineCli, SimulateWithAnEngineOrFlagsListsOnlyWhatTheyAllow) {
  const std::string shape = "--hardware h100-sxm --world 8 --seq 32k --heads 24 --kv-heads 8 --mask causal --json";
  const nlohmann::json all = json_of(run_command(cptune("simulate " + shape)));
  const nlohmann::json megatron = json_of(run_command(cptune("simulate --engine megatron " + shape)));
  EXPECT_EQ(megatron["schema"], "cptune/simulate/1");
  ASSERT_FALSE(megatron["candidates"].empty());
  EXPECT_LT(megatron["candidates"].size(), all["candidates"].size());
  for (const auto& c : megatron["candidates"]) {
    const std::string s = c["strategy"];
    EXPECT_TRUE(s == "ring-zigzag" || s == "allgather-kv" || s == "ulysses" || s == "hybrid") << s;
    EXPECT_EQ(c["order"], "ulysses-inner");
  }
  const nlohmann::json u2 = json_of(run_command(cptune("simulate --ulysses 2 --strategy hybrid,hybrid-uaa " + shape)));
  ASSERT_FALSE(u2["candidates"].empty());
  for (const auto& c : u2["candidates"]) EXPECT_EQ(c["ulysses"], 2);
  const auto bad = run_command(cptune("simulate --engine vllm " + shape));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("megatron"), std::string::npos) << bad.output;  // names the engines
}

TEST(EngineCli, TuneAndLookupFilterByFlagsAndLookupPrintsTheEnginesConfiguration) {
  TempDir dir;
  const std::string db = dir.file("tune.db");
  const std::string shape = "--world 4 --seq 256 --heads 4 --kv-heads 4 --head-dim 16 --mask causal";
  // --ulysses / --ring filter what tune measures (they used to be refused with exit 2).
  const auto tune = run_command(cptune("tune --db " + db + " " + shape +
                                       " --ulysses 2 --exhaustive --iterations 1 --warmups 0"));
  ASSERT_EQ(tune.exit_code, 0) << tune.output;
  const nlohmann::json rows = json_of(run_command(cptune("db export --json --db " + db)));
  ASSERT_FALSE(rows.empty());
  for (const auto& row : rows) {
    EXPECT_EQ(row["ulysses"], 2) << row.dump();
    EXPECT_EQ(row["device_model"], "cpu");
    EXPECT_EQ(row["schema"], "cptune/measurement/1");
    EXPECT_TRUE(row.contains("order") && row.contains("max_abs_err"));
  }
  // The stored best is a U=2 hybrid; megatron runs a2a+p2p: the answer is measured and in its terms.
  const nlohmann::json answer = json_of(run_command(cptune("lookup --db " + db + " " + shape + " --engine megatron --json")));
  EXPECT_EQ(answer["schema"], "cptune/lookup/1");
  EXPECT_TRUE(answer["time_s"].contains("median"));
  EXPECT_EQ(answer["engine"]["name"], "megatron");
  const auto args = run_command(cptune("lookup --db " + db + " " + shape + " --engine megatron --format args"));
  ASSERT_EQ(args.exit_code, 0) << args.output;
  EXPECT_EQ(args.output.rfind("--context-parallel-size 4 --cp-comm-type ", 0), 0u) << args.output;
  // prime-rl runs ring-flash-attn's llama3 all-gather (cp_style "ring") or Ulysses, never a
  // zigzag ring (prime-rl @559b447 trainer/models/layers/attn.py): neither was measured, so the
  // simulator's pick on the hardware asked for, in prime-rl's TOML (model.cp, model.cp_style).
  const nlohmann::json prime = json_of(
      run_command(cptune("lookup --db " + db + " " + shape + " --engine prime-rl --hardware cpu-gloo --json")));
  EXPECT_TRUE(prime["strategy"] == "allgather-kv" || prime["strategy"] == "ulysses") << prime.dump();
  EXPECT_EQ(prime["source"], "simulated");
  EXPECT_EQ(prime["hardware"], "cpu-gloo");
  EXPECT_EQ(prime["engine"]["python"].get<std::string>().rfind("[model]\ncp = 4\ncp_style = ", 0), 0u) << prime.dump();
  // An engine's question is a GPU question: not priced on the CPU preset unasked. With a database
  // it gets the measured answers only, and this miss (not found, exit 3) names the flag to give.
  const auto unpriced = run_command(cptune("lookup --db " + db + " " + shape + " --engine prime-rl"));
  EXPECT_EQ(unpriced.exit_code, 3);
  EXPECT_NE(unpriced.output.find("--hardware"), std::string::npos) << unpriced.output;
  // --format without an engine, or a shape no engine layout fits: exit 2 for the bad flag, 3 (not found) naming why.
  EXPECT_EQ(run_command(cptune("lookup --db " + db + " " + shape + " --format args")).exit_code, 2);
  const auto none = run_command(cptune("lookup --db " + db +
                                       " --world 4 --seq 257 --heads 4 --head-dim 16 --mask causal --engine megatron"));
  EXPECT_EQ(none.exit_code, 3) << "not found (tuner/cli/commands.h kExitNotFound)";
  EXPECT_NE(none.output.find("megatron"), std::string::npos) << none.output;
}

TEST(EngineCli, SimulateWithAnEnginePrintsEachRowsConfiguration) {
  const std::string shape = "--hardware h100-sxm --world 8 --seq 4096 --heads 24 --kv-heads 24";
  const auto table = run_command(cptune("simulate --engine diffusers " + shape));
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_NE(table.output.find("diffusers config"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find("ulysses_degree=8"), std::string::npos) << table.output;
  const nlohmann::json doc = json_of(run_command(cptune("simulate --engine diffusers --json " + shape)));
  EXPECT_EQ(doc["engine"], "diffusers");
  ASSERT_FALSE(doc["candidates"].empty());
  for (const auto& c : doc["candidates"]) {
    const std::string python = c["engine_config"]["python"];
    EXPECT_EQ(python.rfind("ContextParallelConfig(", 0), 0u) << python;
    EXPECT_TRUE(c["engine_config"]["json"].is_object());
  }
  // A backward pass: cache-dit runs forward only (_templated_*.py backward raises), so nothing is left.
  const auto bwd = run_command(cptune("simulate --engine cache-dit --pass fwd-bwd " + shape));
  EXPECT_EQ(bwd.exit_code, 2);
  EXPECT_NE(bwd.output.find("forward only"), std::string::npos) << bwd.output;
}

TEST(EngineCli, LookupWithoutADatabaseAnswersFromTheSimulator) {
  const std::string shape = "--world 8 --seq 4096 --heads 24 --kv-heads 24";
  const nlohmann::json a = json_of(run_command(cptune("lookup --engine diffusers --hardware h100-sxm --json " + shape)));
  EXPECT_EQ(a["source"], "simulated");
  EXPECT_EQ(a["hardware"], "h100-sxm");
  EXPECT_EQ(a["engine"]["python"].get<std::string>().rfind("ContextParallelConfig(", 0), 0u) << a.dump();
  // CPU ranks over Gloo without an engine: the cpu-gloo preset the fingerprint names.
  const nlohmann::json cpu = json_of(run_command(cptune("lookup --json " + shape)));
  EXPECT_EQ(cpu["source"], "simulated");
  EXPECT_EQ(cpu["hardware"], "cpu-gloo");
  // An engine (a GPU question) on this CPU fingerprint without --hardware: exit 2, naming the flag.
  const auto gpu = run_command(cptune("lookup --engine megatron " + shape));
  EXPECT_EQ(gpu.exit_code, 2);
  EXPECT_NE(gpu.output.find("--hardware"), std::string::npos) << gpu.output;
  // A named database that does not exist stays an error.
  const auto missing = run_command(cptune("lookup --db /nonexistent/tune.db " + shape));
  EXPECT_EQ(missing.exit_code, 2);
  // No layout (not found, exit 3): the message names the rule that refused the last candidate, with its source.
  const auto causal = run_command(cptune("lookup --engine diffusers --hardware h100-sxm --mask causal " + shape));
  EXPECT_EQ(causal.exit_code, 3);
  EXPECT_NE(causal.output.find("is_causal"), std::string::npos) << causal.output;
  EXPECT_NE(causal.output.find("huggingface/diffusers @58eb52c"), std::string::npos) << causal.output;
}

TEST(EngineCli, RunReportsBytesAndBandwidthsSweepsLengthsAndWritesCsv) {
  const std::string common = "run --world 4 --strategy hybrid --ulysses 2 --heads 4 --head-dim 16 --iterations 1 "
                             "--warmups 0";
  const nlohmann::json doc = json_of(run_command(cptune(common + " --seq 512 --json")));
  EXPECT_EQ(doc["schema"], "cptune/run/1");
  const auto& qkv = doc["phases"]["qkv"];
  EXPECT_EQ(qkv["collective"], "alltoall");
  EXPECT_EQ(qkv["ranks"], 2);
  // Each of 2 Ulysses ranks holds 512/4 tokens of 4 heads and sends half the heads of Q, K, V.
  EXPECT_EQ(qkv["bytes"], 3 * (512 / 4) * 2 * 16 * 2);
  const double t = qkv["median"];
  EXPECT_NEAR(qkv["busbw_GBps"].get<double>(), double(qkv["bytes"]) / t / 1e9, 1e-9);
  EXPECT_NEAR(qkv["algbw_GBps"].get<double>(), qkv["busbw_GBps"].get<double>() * 2, 1e-9);  // n/(n-1), n = 2
  EXPECT_EQ(doc["phases"]["attention"]["collective"], "sendrecv");
  EXPECT_NEAR(doc["phases"]["attention"]["algbw_GBps"].get<double>(),
              doc["phases"]["attention"]["busbw_GBps"].get<double>(), 1e-12);

  const auto csv = run_command(cptune(common + " --seq 256:1024:x2 --csv"));
  ASSERT_EQ(csv.exit_code, 0) << csv.output;
  std::istringstream lines(csv.output);
  std::string header;
  std::getline(lines, header);
  EXPECT_EQ(header, "strategy,ulysses,ring,world,seq,phase,median_s,min_s,max_s,collective,ranks,bytes,algbw_GBps,"
                    "busbw_GBps");
  std::set<std::string> seqs;
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> cells;
    std::stringstream cells_in(line);
    for (std::string cell; std::getline(cells_in, cell, ',');) cells.push_back(cell);
    ASSERT_GE(cells.size(), 9u) << line;
    seqs.insert(cells[4]);
  }
  EXPECT_EQ(seqs, (std::set<std::string>{"256", "512", "1024"}));
}

TEST(EngineCli, TuneProgressLineMovesEveryRoundAndFitsEightyColumns) {
  if (run_command("command -v script").exit_code != 0) GTEST_SKIP() << "no script(1) for a pseudo-terminal";
  TempDir dir;
  const std::string typescript = dir.file("typescript");
  const std::string tune = cptune("tune --db " + dir.file("tune.db") +
                                  " --world 2 --seq 256 --heads 2 --head-dim 16 --iterations 4 --warmups 1 --top 1");
  const auto r = run_command("script -qec '" + tune + " >/dev/null' " + typescript + " </dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto log = run_command("cat " + typescript);
  std::set<std::string> percents;
  int redraws = 0;
  std::stringstream parts(log.output);
  for (std::string part; std::getline(parts, part, '\r');) {
    const size_t bar = part.find("\x1b[K[");
    if (bar == std::string::npos) continue;
    const std::string line = part.substr(bar + 3);
    if (line.find("ETA") == std::string::npos) continue;
    ++redraws;
    EXPECT_LE(line.size(), 80u) << line;
    std::smatch m;
    if (std::regex_search(line, m, std::regex("(\\d+)% "))) percents.insert(m[1]);
  }
  EXPECT_GE(redraws, 5) << log.output;  // the shape's start and its 5 rounds
  EXPECT_GE(percents.size(), 5u) << log.output;
}

}  // namespace
}  // namespace cptune
