// One spelling per concept, a complete --help for every command and action, contradictions
// refused, and the exit codes docs/reliability.md promises (0 ok, 2 bad input, 3 not found).
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "db/store.h"
#include "tests/command.h"
#include "tests/temp_dir.h"
#include "tuner/cli/commands.h"
#include "tuner/cli/flag_renames.h"

namespace cptune {
namespace {

using testing::run_command;
using testing::TempDir;

std::string cptune(const std::string& args) { return std::string(CPTUNE_BINARY) + " " + args; }

// stdout alone (stderr to `err_file`), so deprecation notes and JSON can be told apart.
testing::CommandResult run_split(const std::string& args, const std::string& err_file) {
  return run_command("{ " + cptune(args) + " 2>" + err_file + "; }");
}

struct HelpCase {
  std::string args;        // what follows `cptune`
  std::string usage;       // the usage line's start
  std::vector<std::string> options;  // flags its option list must name
};

const std::vector<HelpCase> kHelpCases = {
    {"layout", "usage: cptune layout", {"--seq", "--heads", "--world", "--strategy", "--json"}},
    {"simulate", "usage: cptune simulate", {"--hardware", "--ranks-per-node", "--world", "--top", "--json", "--csv"}},
    {"run", "usage: cptune run", {"--world", "--strategy", "--verify", "--inputs", "--out"}},
    {"tune", "usage: cptune tune", {"--db", "--shapes", "--top", "--no-verify", "--wait"}},
    {"lookup", "usage: cptune lookup", {"--db", "--engine", "--format", "--json"}},
    {"calibrate", "usage: cptune calibrate", {"--world", "--out"}},
    {"validate", "usage: cptune validate", {"--shapes", "--top", "--tolerance", "--json", "--csv", "--out"}},
    {"db", "usage: cptune db", {"--db", "--fingerprint", "--csv", "--json"}},
    {"db list", "usage: cptune db", {"--db"}},
    {"db show", "usage: cptune db", {"--db", "--fingerprint"}},
    {"db export", "usage: cptune db", {"--db", "--csv", "--json"}},
    {"db check", "usage: cptune db", {"--db"}},
    {"topology", "usage: cptune topology import", {"--base", "--out", "--name", "--nodes"}},
    {"topology import", "usage: cptune topology import", {"--base", "--out", "--name", "--nodes"}},
    {"mask", "usage: cptune mask show", {"--seq", "--json"}},
    {"mask show", "usage: cptune mask show", {"--seq", "--json"}},
};

TEST(CliHelp, EveryCommandAndActionPrintsItsUsageAndEveryOptionWithExitCode0) {
  for (const HelpCase& c : kHelpCases) {
    for (const std::string flag : {"--help", "-h"}) {
      const auto r = run_command(cptune(c.args + " " + flag));
      EXPECT_EQ(r.exit_code, 0) << c.args << " " << flag << "\n" << r.output;
      EXPECT_NE(r.output.find(c.usage), std::string::npos) << c.args << "\n" << r.output;
      for (const std::string& option : c.options)
        EXPECT_NE(r.output.find(option), std::string::npos) << c.args << " --help does not list " << option;
    }
  }
}

TEST(CliHelp, HelpCommandPrintsTheNamedCommandsOwnHelp) {
  for (const HelpCase& c : kHelpCases) {
    const auto direct = run_command(cptune(c.args + " --help"));
    const auto via_help = run_command(cptune("help " + c.args));
    EXPECT_EQ(via_help.exit_code, 0) << c.args;
    EXPECT_EQ(via_help.output, direct.output) << "cptune help " << c.args;
  }
  const auto top = run_command(cptune("help"));
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_NE(top.output.find("commands:"), std::string::npos);
}

TEST(CliHelp, ValidatePrintsItsToleranceAsWrittenWithItsMeaning) {
  const auto r = run_command(cptune("validate --help"));
  EXPECT_NE(r.output.find("0.05"), std::string::npos);
  EXPECT_EQ(r.output.find("0.05000"), std::string::npos) << "a double's digits leak into the help:\n" << r.output;
  EXPECT_NE(r.output.find("5%"), std::string::npos);
}

TEST(CliHelp, UsageLinesShowTheStrategyAsOptional) {
  for (const std::string cmd : {"layout", "run"}) {
    const auto r = run_command(cptune(cmd + " --help"));
    EXPECT_NE(r.output.find("[--strategy NAME]"), std::string::npos) << cmd << ":\n" << r.output;
  }
}

TEST(CliRenames, EveryOldSpellingGivesTheSameOutputAsTheNewOneWithOneNote) {
  TempDir dir;
  const std::string err = dir.file("err");
  const std::string shape = " --seq 8k --heads 16 --kv-heads 8 --json";
  const auto renamed = run_split("simulate --hardware h100-sxm --nodes 2 --gpus-per-node 4" + shape, err);
  const std::string notes = run_command("cat " + err).output;
  const auto canonical = run_split("simulate --hardware h100-sxm --nodes 2 --ranks-per-node 4" + shape, err);
  ASSERT_EQ(renamed.exit_code, 0) << notes;
  ASSERT_EQ(canonical.exit_code, 0);
  EXPECT_EQ(renamed.output, canonical.output);
  EXPECT_NE(notes.find("--gpus-per-node is deprecated"), std::string::npos) << notes;
  EXPECT_NE(notes.find("--ranks-per-node"), std::string::npos) << notes;
  EXPECT_EQ(run_command("cat " + err).output, "") << "the new spelling prints no note";
}

TEST(CliRenames, TheTableRewritesOnlyItsCommandsFlagsAndKeepsValues) {
  std::ostringstream notes;
  const cli::Args out = cli::apply_flag_renames("tune", {"--top-k", "2", "--top-k=4", "--seq", "--top-k"}, notes);
  // A token equal to an old flag is rewritten wherever it stands (no command takes one as a value).
  EXPECT_EQ(out, (cli::Args{"--top", "2", "--top=4", "--seq", "--top"}));
  const cli::Args other = cli::apply_flag_renames("simulate", {"--top-k", "2"}, notes);
  EXPECT_EQ(other, (cli::Args{"--top-k", "2"})) << "simulate never had --top-k";
  for (const cli::FlagRename& r : cli::flag_renames()) {
    EXPECT_EQ(r.old_flag.rfind("--", 0), 0u);
    EXPECT_EQ(r.new_flag.rfind("--", 0), 0u);
    EXPECT_NE(r.old_flag, r.new_flag);
  }
}

TEST(CliConsistency, ContradictoryFlagsAreRefusedWithExitCode2NamingBoth) {
  TempDir dir;
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {"simulate --hardware h100-sxm --seq 8k --heads 16 --json --csv", "--json and --csv"},
      {"tune --db " + dir.file("t.db") + " --world 2 --seq 64 --heads 2 --head-dim 16 --verify --no-verify",
       "--verify and --no-verify"},
      {"validate --world 2 --shapes x.csv --json --csv", "--json and --csv"},
      {"validate --world 2 --shapes x.csv --out " + dir.file("v.json"), "needs --json or --csv"},
  };
  for (const Case& c : cases) {
    const auto r = run_command(cptune(c.args));
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("t.db"))) << "a refused tune creates no database";
}

TEST(CliConsistency, AMissingShapeFlagIsNamedWithoutTheMeshFlagsTail) {
  for (const std::string cmd : {"run --world 2 --seq 64 --mask star:8", "layout --world 2 --seq 64"}) {
    const auto r = run_command(cptune(cmd));
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--heads"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("set by --strategy"), std::string::npos) << r.output;
  }
  // A mesh error still names the mesh flags.
  const auto mesh = run_command(cptune("layout --world 4 --seq 64 --heads 8 --strategy hybrid --ulysses 3"));
  EXPECT_EQ(mesh.exit_code, 2) << mesh.output;
  EXPECT_NE(mesh.output.find("set by --strategy"), std::string::npos) << mesh.output;
}

TEST(CliExitCodes, LookupTellsNotFoundFromBadInput) {
  TempDir dir;
  const std::string db = dir.file("empty.db");
  db::Store::open(db);  // a sound, empty database
  // Ulysses needs Hq divisible by U: nothing measured and nothing the simulator may answer.
  const auto missing = run_command(cptune("lookup --db " + db + " --world 2 --seq 64 --heads 3 --kv-heads 3 --strategy ulysses"));
  EXPECT_EQ(missing.exit_code, cli::kExitNotFound) << missing.output;
  EXPECT_NE(missing.output.find("not found"), std::string::npos) << missing.output;
  const auto bad = run_command(cptune("lookup --db " + db + " --world 2 --seq 64 --heads 0"));
  EXPECT_EQ(bad.exit_code, cli::kExitBadInput) << bad.output;
  const auto ok = run_command(cptune("lookup --db " + db + " --world 2 --seq 64 --heads 4"));
  EXPECT_EQ(ok.exit_code, cli::kExitOk) << ok.output;
}

}  // namespace
}  // namespace cptune
