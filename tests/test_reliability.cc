// What survives an adversary: ranks never outlive the cptune that started them (SIGKILL,
// SIGTERM or Ctrl-C to the parent), a killed tune keeps every finished shape in a sound
// database, and two tuners on one database never measure a shape twice.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "db/lease.h"
#include "db/sqlite.h"
#include "tests/command.h"
#include "tests/temp_dir.h"

extern char** environ;

namespace cptune {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;

// Starts cptune with args, stdout and stderr into files; returns its pid.
pid_t spawn_cptune(const std::vector<std::string>& args, const std::string& out_path, const std::string& err_path) {
  std::vector<std::string> argv_text{CPTUNE_BINARY};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, STDOUT_FILENO, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&files, STDERR_FILENO, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, CPTUNE_BINARY, &files, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&files);
  return rc == 0 ? pid : -1;
}

// A process this test may watch: its pid and start time, so a reused pid is not mistaken for it.
struct Watched {
  int64_t pid = 0;
  int64_t start_time = 0;
  bool alive() const { return db::process_start_time(pid) == start_time; }
};

// The live children of parent, found by scanning /proc (field 4 of stat is the parent pid).
std::vector<Watched> children_of(pid_t parent) {
  std::vector<Watched> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat;
    if (!std::getline(in, stat)) continue;
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream fields(stat.substr(close + 1));
    std::string state;
    int64_t ppid = 0;
    fields >> state >> ppid;
    if (ppid != parent || state == "Z") continue;
    const int64_t pid = std::stoll(name);
    if (const auto start = db::process_start_time(pid)) out.push_back({pid, *start});
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

int64_t query_int(const std::string& db_path, const char* sql) {
  db::Connection conn(db_path, db::OpenMode::read_only);
  db::Statement st(conn, sql);
  return st.step() ? st.column_int(0) : -1;
}

std::string integrity(const std::string& db_path) {
  db::Connection conn(db_path, db::OpenMode::read_only);
  db::Statement st(conn, "PRAGMA integrity_check");
  std::string out;
  while (st.step()) out += st.column_text(0);
  return out;
}

// Waits (up to limit) until pred() holds; returns whether it did.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

// Shapes that take a CPU rank a few hundred milliseconds each to measure.
std::string write_shapes(const TempDir& dir, int count) {
  const std::string path = dir.file("shapes.csv");
  std::ofstream out(path);
  out << "seq,heads,kv_heads,head_dim,v_head_dim,dtype,mask,batch\n";
  for (int i = 0; i < count; ++i) out << 512 + 32 * i << ",8,8,64,64,fp32,causal,1\n";
  return path;
}

struct Started {
  pid_t parent = -1;
  std::vector<Watched> ranks;
};

// Starts cptune and waits until all `world` ranks are running and `ready` holds.
template <typename Ready>
Started start_with_ranks(const std::vector<std::string>& args, const TempDir& dir, int world, Ready ready) {
  Started s;
  s.parent = spawn_cptune(args, dir.file("out.txt"), dir.file("err.txt"));
  EXPECT_GT(s.parent, 0);
  EXPECT_TRUE(eventually([&] { return children_of(s.parent).size() == size_t(world) && ready(); }, 60s))
      << read_file(dir.file("err.txt"));
  s.ranks = children_of(s.parent);
  return s;
}

// Kills the parent with sig and checks that no rank is alive 2 s later; returns the exit status.
int kill_parent_and_check_ranks(const Started& s, int sig) {
  kill(s.parent, sig);
  int status = 0;
  waitpid(s.parent, &status, 0);
  const bool all_gone = eventually(
      [&] {
        for (const Watched& r : s.ranks)
          if (r.alive()) return false;
        return true;
      },
      2s);
  EXPECT_TRUE(all_gone) << "a rank outlived its parent by 2 s after signal " << sig;
  for (const Watched& r : s.ranks)
    if (r.alive()) kill(pid_t(r.pid), SIGKILL);  // only ranks this test started
  return status;
}

const std::vector<std::string> kLongRun{"run",        "--world", "4",          "--seq",  "4096",  "--heads",
                                        "8",          "--head-dim", "64",       "--strategy", "ring", "--iterations",
                                        "1000000"};

TEST(RanksDieWithParent, RunRanksDieWhenParentIsKilled) {
  for (int sig : {SIGKILL, SIGTERM}) {
    TempDir dir;
    const Started s = start_with_ranks(kLongRun, dir, 4, [] { return true; });
    ASSERT_EQ(s.ranks.size(), 4u);
    std::this_thread::sleep_for(300ms);  // the ranks are past rendezvous and computing
    const int status = kill_parent_and_check_ranks(s, sig);
    if (sig == SIGTERM) {
      ASSERT_TRUE(WIFEXITED(status)) << "SIGTERM is forwarded and the parent exits by itself";
      EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
      EXPECT_NE(read_file(dir.file("err.txt")).find("stopped by signal"), std::string::npos);
    }
  }
}

// A tune killed after some shapes: its ranks are gone within 2 s, the database is sound, and
// every shape it reported finished is stored.
void check_tune_killed(int sig) {
  TempDir dir;
  const std::string db_path = dir.file("tune.db"), shapes = write_shapes(dir, 40);
  const Started s = start_with_ranks({"tune", "--db", db_path, "--shapes", shapes, "--world", "2", "--no-verify"}, dir,
                                     2, [&] { return count_of(read_file(dir.file("err.txt")), ": best ") >= 2; });
  const int status = kill_parent_and_check_ranks(s, sig);
  if (sig != SIGKILL) {
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 128 + sig);
  }
  const size_t finished = count_of(read_file(dir.file("err.txt")), ": best ");
  EXPECT_GE(finished, 2u);
  EXPECT_EQ(integrity(db_path), "ok");
  const int64_t stored = query_int(db_path, "SELECT count(DISTINCT shape_id) FROM measurements");
  EXPECT_GE(stored, int64_t(finished)) << "a shape reported finished was lost";
  EXPECT_LE(stored, int64_t(finished) + 1);
  EXPECT_LT(stored, 40) << "the tune was not stopped";
}

TEST(RanksDieWithParent, TuneKilledWithSigkillKeepsFinishedShapes) { check_tune_killed(SIGKILL); }
TEST(RanksDieWithParent, TuneStoppedWithSigtermKeepsFinishedShapes) { check_tune_killed(SIGTERM); }
TEST(RanksDieWithParent, TuneStoppedWithCtrlCKeepsFinishedShapes) { check_tune_killed(SIGINT); }

// Two tuners on one database: the second refuses and names the first (exit 2); with --wait it
// runs after the first and finds every shape stored. No candidate is ever measured twice.
TEST(TuneLease, SecondTunerRefusesOrWaitsAndNothingIsMeasuredTwice) {
  TempDir dir;
  const std::string db_path = dir.file("tune.db"), shapes = write_shapes(dir, 6);
  const std::vector<std::string> tune{"tune", "--db", db_path, "--shapes", shapes, "--world", "2", "--no-verify"};
  const Started first = start_with_ranks(tune, dir, 2, [] { return true; });

  const auto refused = testing::run_command(std::string(CPTUNE_BINARY) + " tune --db " + db_path + " --shapes " +
                                            shapes + " --world 2 --no-verify");
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("pid " + std::to_string(first.parent)), std::string::npos) << refused.output;

  const auto waited = testing::run_command(std::string(CPTUNE_BINARY) + " tune --wait --db " + db_path +
                                           " --shapes " + shapes + " --world 2 --no-verify");
  int status = 0;
  waitpid(first.parent, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(dir.file("err.txt"));
  EXPECT_EQ(waited.exit_code, 0) << waited.output;
  EXPECT_EQ(count_of(waited.output, "already stored for this fingerprint"), 6u) << waited.output;
  EXPECT_EQ(query_int(db_path, "SELECT count(*) FROM (SELECT 1 FROM measurements "
                               "GROUP BY fingerprint_id, shape_id, candidate_id HAVING count(*) > 1)"),
            0);
  EXPECT_EQ(query_int(db_path, "SELECT count(*) FROM tune_leases"), 0) << "released on a clean exit";
}

// A lease left by a killed tuner is taken over by the next one.
TEST(TuneLease, DeadHoldersLeaseIsTakenOver) {
  TempDir dir;
  const std::string db_path = dir.file("tune.db"), shapes = write_shapes(dir, 40);
  const Started first = start_with_ranks({"tune", "--db", db_path, "--shapes", shapes, "--world", "2", "--no-verify"},
                                         dir, 2, [] { return true; });
  kill_parent_and_check_ranks(first, SIGKILL);
  EXPECT_EQ(query_int(db_path, "SELECT count(*) FROM tune_leases"), 1);
  const auto next = testing::run_command(std::string(CPTUNE_BINARY) + " tune --db " + db_path +
                                         " --seq 256 --heads 4 --world 2 --no-verify");
  EXPECT_EQ(next.exit_code, 0) << next.output;
}

}  // namespace
}  // namespace cptune
