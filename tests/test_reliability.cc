// What survives an adversary: ranks never outlive the cptune that started them (SIGKILL,
// SIGTERM or Ctrl-C to the parent), a killed tune keeps every finished shape in a sound
// database, and two tuners on one database never measure a shape twice.
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/stat.h>

#include <chrono>
#include <climits>
#include <set>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "core/error.h"
#include "db/cptune_lookup.h"
#include "db/lease.h"
#include "db/sqlite.h"
#include "db/store.h"
#include "backends/comm/launcher.h"
#include "tests/command.h"
#include "core/layout.h"
#include "tuner/cli/run_options.h"
#include "tuner/cli/shapes_file.h"
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

// Bad input the CLI must refuse with exit code 2 and a message, never wrap around, hang or
// end in "internal error".
TEST(BadInput, OversizedShapesAndClustersAreRefusedNotWrapped) {
  struct Case {
    std::string args, needle;
  };
  for (const Case& c : std::vector<Case>{
           {"simulate --nodes 99999999999 --gpus-per-node 99999999 --seq 4096 --heads 8",
            "exceed the supported world"},
           {"simulate --world 2097152 --seq 4194304 --heads 8", "world 2097152 is outside"},
           {"layout --seq 9223372036854775807 --heads 8 --world 2", "sequence length 9223372036854775807"},
           {"layout --seq-list 4611686018427387904,4611686018427387904 --heads 8 --world 2", "sequence length"},
           {"layout --seq 4096 --heads 8 --head-dim 9223372036854775807 --world 2", "head dim 9223372036854775807"},
           {"layout --seq 4096 --heads 8 --world 2 --mask sliding:9223372036854775807", "sliding window"},
           {"layout --seq 4096 --heads 100000000 --world 2", "query heads 100000000"},
       }) {
    const auto r = testing::run_command(std::string(CPTUNE_BINARY) + " " + c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << c.args << "\n" << r.output;
  }
}

// The C ABI keeps its header's promise: a bad value is INVALID_ARGUMENT, never NOT_FOUND,
// INTERNAL or an answer.
class CAbiCodes : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("t.db");
    db::Store store = db::Store::open(path_);
    db::MeasurementRow row;
    row.candidate = LayoutChoice{Strategy::uaa, 2, 1, RankOrder::ulysses_inner, HeadPolicy::balanced};
    row.median_s = row.min_s = row.max_s = 1e-3;
    row.iterations = 3;
    store.record_shape(fingerprint(), AttentionShape{1, {4096}, 8, 8, 64, 64, DType::bf16, {}}, {row});
  }
  static db::Fingerprint fingerprint() { return {"gloo", "cpu", Cluster{2, 2}, "gloo 0.5.0", "0.1.0"}; }
  cptune_fingerprint c_fingerprint() const {
    cptune_fingerprint fp{};
    fp.struct_size = sizeof fp;
    fp.backend = "gloo";
    fp.device_model = "cpu";
    fp.world = 2;
    fp.ranks_per_node = 2;
    fp.nodes = 1;
    fp.library_versions = "gloo 0.5.0";
    fp.cptune_version = "0.1.0";
    return fp;
  }
  int open_with(const std::string& hardware) {
    const cptune_fingerprint fp = c_fingerprint();
    cptune_lookup* lookup = nullptr;
    const int status = cptune_lookup_open_with_simulator(path_.c_str(), &fp, hardware.c_str(), &lookup);
    cptune_lookup_close(lookup);
    return status;
  }
  int query(std::vector<int64_t> seq_lens, int64_t q_heads, int64_t kv_heads, int64_t head_dim, const char* mask) {
    const cptune_fingerprint fp = c_fingerprint();
    cptune_lookup* lookup = nullptr;
    EXPECT_EQ(cptune_lookup_open(path_.c_str(), &fp, &lookup), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
    cptune_shape shape{};
    shape.struct_size = sizeof shape;
    shape.batch = 1;
    shape.seq_lens = seq_lens.data();
    shape.num_seqs = seq_lens.size();
    shape.q_heads = q_heads;
    shape.kv_heads = kv_heads;
    shape.head_dim = head_dim;
    shape.dtype = "bf16";
    shape.mask = mask;
    cptune_choice out{};
    out.struct_size = sizeof out;
    const int status = cptune_lookup_query(lookup, &shape, &out);
    cptune_lookup_close(lookup);
    return status;
  }
  TempDir dir_;
  std::string path_;
};

TEST_F(CAbiCodes, AnUnreadableHardwareDescriptionIsInvalidArgument) {
  EXPECT_EQ(open_with("cpu-gloo"), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  EXPECT_EQ(open_with(std::string(5000, 'x') + ".json"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(open_with(std::string(5000, 'x')), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(open_with(dir_.path()), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("directory"), std::string::npos) << cptune_lookup_last_error();
  const std::string fifo = dir_.file("hw.fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(open_with(fifo), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT) << "a FIFO is refused, not waited on";
}

TEST_F(CAbiCodes, PresetsComeFromTheBuildsShareFolderNotTheSourceTree) {
  EXPECT_EQ(open_with("no-such-preset"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  const std::string message = cptune_lookup_last_error();
  EXPECT_NE(message.find("cpu-gloo"), std::string::npos) << message;
  EXPECT_EQ(message.find(CPTUNE_SOURCE_DIR), std::string::npos) << message;
  EXPECT_TRUE(std::filesystem::exists(std::string(CPTUNE_BUILD_DIR) + "/share/cptune/hardware/cpu-gloo.json"));
}

// The installed library reads the presets installed beside it, and nothing else: with them
// removed, a preset name is INVALID_ARGUMENT even though the source and build trees hold it.
TEST_F(CAbiCodes, AnInstalledLibraryFindsOnlyInstalledPresets) {
  if (std::filesystem::exists(CPTUNE_INSTALLED_HARDWARE_DIR) || std::getenv("CPTUNE_HARDWARE_DIR"))
    GTEST_SKIP() << "presets are installed system-wide or named by CPTUNE_HARDWARE_DIR here";
  const std::string prefix = dir_.file("prefix");
  const auto install =
      testing::run_command("cmake --install " CPTUNE_BUILD_DIR " --component lookup --prefix " + prefix);
  ASSERT_EQ(install.exit_code, 0) << install.output;
  std::string library;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(prefix))
    if (entry.path().filename() == "libcptune_lookup.so") library = entry.path();
  ASSERT_FALSE(library.empty()) << install.output;
  // Loaded by a relative path, as ctypes.CDLL("./libcptune_lookup.so") does. The library's own
  // code is bound inside it (version script), so this program's static copy of the same
  // functions cannot stand in for it.
  const std::filesystem::path cwd = std::filesystem::current_path();
  std::filesystem::current_path(std::filesystem::path(library).parent_path());
  struct RestoreCwd {
    std::filesystem::path path;
    ~RestoreCwd() { std::filesystem::current_path(path); }
  } restore{cwd};
  void* handle = dlopen("./libcptune_lookup.so", RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << dlerror();
  using OpenFn = int (*)(const char*, const cptune_fingerprint*, const char*, cptune_lookup**);
  using CloseFn = void (*)(cptune_lookup*);
  const auto open = reinterpret_cast<OpenFn>(dlsym(handle, "cptune_lookup_open_with_simulator"));
  const auto close = reinterpret_cast<CloseFn>(dlsym(handle, "cptune_lookup_close"));
  ASSERT_TRUE(open && close);
  const cptune_fingerprint fp = c_fingerprint();
  const auto open_status = [&] {
    cptune_lookup* lookup = nullptr;
    const int status = open(path_.c_str(), &fp, "cpu-gloo", &lookup);
    close(lookup);
    return status;
  };
  EXPECT_EQ(open_status(), CPTUNE_LOOKUP_OK);
  std::filesystem::remove_all(prefix + "/share/cptune/hardware");
  EXPECT_EQ(open_status(), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  dlclose(handle);
}

TEST_F(CAbiCodes, BadShapesAreInvalidArgument) {
  EXPECT_EQ(query({4096}, 8, 8, 64, "full"), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  EXPECT_EQ(query({4096}, 8, 3, 64, "full"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT) << "kv heads not dividing q heads";
  EXPECT_EQ(query({INT64_MAX}, 8, 8, 64, "full"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(query({int64_t(1) << 62, int64_t(1) << 62}, 8, 8, 64, "full"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(query({4096}, 8, 8, INT64_MAX, "full"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(query({4096}, INT64_MAX, 1, 64, "full"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(query({4096}, 8, 8, 64, "sliding:9223372036854775807"), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(query({kMaxTokens}, 8, 8, 64, "full"), CPTUNE_LOOKUP_OK) << "the limit itself is accepted";
}

TEST_F(CAbiCodes, AHugeFingerprintWorldIsInvalidArgument) {
  cptune_fingerprint fp = c_fingerprint();
  fp.world = INT64_MAX;
  fp.ranks_per_node = 1;
  fp.nodes = INT64_MAX;
  cptune_lookup* lookup = nullptr;
  EXPECT_EQ(cptune_lookup_open(path_.c_str(), &fp, &lookup), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(lookup, nullptr);
}

// A NULL buffer with a size above 0 is NULL_ARGUMENT for every function that writes text (it
// crashed), and *needed is still the size the text needs.
TEST_F(CAbiCodes, ANullBufferWithASizeIsNullArgumentNotACrash) {
  size_t needed = 0;
  EXPECT_EQ(cptune_lookup_list_fingerprints(path_.c_str(), nullptr, 64, &needed), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_GT(needed, 1u);
  EXPECT_EQ(cptune_lookup_list_fingerprints(path_.c_str(), nullptr, 0, &needed), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT)
      << "size 0 asks the size";
  cptune_lookup_mask* mask = nullptr;
  ASSERT_EQ(cptune_lookup_mask_create("star:4", &mask), CPTUNE_LOOKUP_OK);
  needed = 0;
  EXPECT_EQ(cptune_lookup_mask_text(mask, nullptr, 4096, &needed), CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT);
  EXPECT_EQ(needed, std::string("star:4").size() + 1);
  cptune_lookup_mask_free(mask);
}

// open_local takes the limits plain open takes: a world or ranks per node outside 1..kMaxWorld
// is refused at open (INT64_MAX was accepted, and a query at world 2^32 spun for 21 s).
TEST_F(CAbiCodes, OpenLocalRefusesTheWorldsPlainOpenRefuses) {
  struct Case {
    int64_t world, ranks_per_node;
  };
  for (const Case c : {Case{INT64_MAX, 1}, Case{int64_t(1) << 32, 8}, Case{kMaxWorld + 1, 1}, Case{0, 1},
                       Case{-4, 1}, Case{4, 0}, Case{4, INT64_MAX}}) {
    cptune_lookup* lookup = nullptr;
    EXPECT_EQ(cptune_lookup_open_local(path_.c_str(), "gloo", c.world, c.ranks_per_node, "cpu-gloo", nullptr, &lookup),
              CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT)
        << c.world << " " << c.ranks_per_node;
    EXPECT_EQ(lookup, nullptr);
    cptune_fingerprint fp = c_fingerprint();
    fp.world = c.world;
    fp.ranks_per_node = c.ranks_per_node;
    fp.nodes = 1;
    EXPECT_EQ(cptune_lookup_open(path_.c_str(), &fp, &lookup), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  }
  cptune_lookup* lookup = nullptr;
  EXPECT_EQ(cptune_lookup_open_local(path_.c_str(), "gloo", 2, 2, nullptr, nullptr, &lookup), CPTUNE_LOOKUP_OK);
  cptune_lookup_close(lookup);
}

// A shape's num_seqs is checked against kMaxSequences before seq_lens is read that far.
TEST_F(CAbiCodes, AHugeNumSeqsIsRefusedBeforeSeqLensIsRead) {
  const cptune_fingerprint fp = c_fingerprint();
  cptune_lookup* lookup = nullptr;
  ASSERT_EQ(cptune_lookup_open(path_.c_str(), &fp, &lookup), CPTUNE_LOOKUP_OK);
  const int64_t seq = 4096;
  cptune_shape shape{sizeof shape, 1, &seq, SIZE_MAX, 8, 8, 64, 64, "bf16", "full"};
  cptune_choice out{};
  out.struct_size = sizeof out;
  EXPECT_EQ(cptune_lookup_query(lookup, &shape, &out), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  cptune_lookup_close(lookup);
}

testing::CommandResult cptune_cli(const std::string& args) {
  return testing::run_command("timeout 60 " + std::string(CPTUNE_BINARY) + " " + args);
}

// Exit code 2, the needle in the message, and no internal error or crash.
void expect_refused(const std::string& args, const std::string& needle) {
  const auto r = cptune_cli(args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output.substr(0, 2000);
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output.substr(0, 2000);
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << args << "\n" << r.output.substr(0, 2000);
  EXPECT_LT(r.output.size(), 4000u) << args << ": a message quotes at most a bounded excerpt";
}

// A database tuned for real, then damaged by hand: every reader refuses it, naming table and row.
class DamagedDatabase : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = dir_.file("t.db");
    const auto r = cptune_cli("tune --db " + db_ + " --world 2 --seq 256 --heads 4 --head-dim 16 --iterations 1 " +
                              "--warmups 0 --no-verify");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  void damage(const char* sql) {
    db::Connection conn(db_, db::OpenMode::read_write);
    conn.exec("PRAGMA ignore_check_constraints = ON");
    conn.exec(sql);
  }
  void expect_every_reader_refuses(const std::string& needle) {
    expect_refused("lookup --db " + db_ + " --world 2 --seq 256 --heads 4 --head-dim 16", needle);
    expect_refused("db show --db " + db_, needle);
    expect_refused("db export --csv --db " + db_, needle);
    expect_refused("db check --db " + db_, needle);
    // The tuner reads as the readers do before it writes: it neither adds to the file nor
    // calls a shape whose rows are damaged "already stored".
    const std::string before = read_file(db_);
    for (const char* seq : {"256", "512"})
      expect_refused("tune --db " + db_ + " --world 2 --seq " + seq + " --heads 4 --head-dim 16 --iterations 1 " +
                         "--warmups 0 --no-verify",
                     needle);
    EXPECT_TRUE(read_file(db_) == before) << "the tuner wrote into a damaged store";
  }
  TempDir dir_;
  std::string db_;
};

TEST_F(DamagedDatabase, ASoundDatabasePassesCheck) {
  const auto r = cptune_cli("db check --db " + db_);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(": ok"), std::string::npos) << r.output;
}

TEST_F(DamagedDatabase, AReaderLeavesNoWalOrShmFilesBehind) {
  ASSERT_FALSE(std::filesystem::exists(db_ + "-wal"));
  const auto r = cptune_cli("lookup --db " + db_ + " --world 2 --seq 256 --heads 4 --head-dim 16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(db_ + "-wal"));
  EXPECT_FALSE(std::filesystem::exists(db_ + "-shm"));
  EXPECT_EQ(cptune_cli("db show --db " + db_).exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(db_ + "-wal"));
  db::Connection reader(db_, db::OpenMode::read_only);
  EXPECT_THROW(reader.exec("DELETE FROM measurements"), Error) << "a reader still cannot write";
}

TEST_F(DamagedDatabase, DegreesThatAreNotTheWorldAreRefused) {
  damage("UPDATE candidates SET ulysses = 0, ring = -7 - id");
  expect_every_reader_refuses("candidates");
  expect_refused("lookup --db " + db_ + " --world 2 --seq 256 --heads 4 --head-dim 16", "table candidates row");
}

TEST_F(DamagedDatabase, AnInfiniteMedianIsRefused) {
  damage("UPDATE measurements SET median_s = -1e999");
  expect_every_reader_refuses("median_s");
}

TEST_F(DamagedDatabase, TextInANumberColumnIsRefused) {
  damage("UPDATE shapes SET q_heads = 'four'");
  expect_every_reader_refuses("table shapes row");
}

TEST_F(DamagedDatabase, AMeasurementOfAMissingCandidateIsRefusedByCheckAndTune) {
  damage("DELETE FROM candidates WHERE id = (SELECT min(candidate_id) FROM measurements)");
  expect_refused("db check --db " + db_, "refers to a row of candidates that is missing");
  expect_refused("tune --db " + db_ + " --world 2 --seq 512 --heads 4 --head-dim 16 --no-verify",
                 "refers to a row of candidates that is missing");
}

TEST_F(DamagedDatabase, AMissingTableIsRefusedByTheTunerToo) {
  damage("DROP TABLE candidates");
  expect_every_reader_refuses("table 'candidates' is missing");
  expect_refused("tune --db " + db_ + " --world 2 --seq 256 --heads 4 --head-dim 16 --no-verify",
                 "table 'candidates' is missing");
}

// Files that are not regular files are refused at once, never waited on or read forever.
TEST(BadInput, FifosDevicesAndDirectoriesAreRefusedAtOnce) {
  TempDir dir;
  const std::string fifo = dir.file("in.fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const std::string shape = " --world 2 --seq 256 --heads 4 --head-dim 16";
  expect_refused("tune --db " + dir.file("t.db") + " --world 2 --shapes " + fifo, "is a FIFO");
  expect_refused("tune --db " + dir.file("t.db") + " --world 2 --shapes /dev/zero", "is a device");
  expect_refused("tune --db " + dir.file("t.db") + " --world 2 --shapes " + dir.path(), "is a directory");
  expect_refused("tune --db " + fifo + shape, "is a FIFO");
  expect_refused("lookup --db " + fifo + shape, "is a FIFO");
  expect_refused("simulate --hardware " + fifo + " --world 2 --seq 4096 --heads 8", "is a FIFO");
  expect_refused("simulate --hardware " + dir.path() + " --world 2 --seq 4096 --heads 8", "is a directory");
}

TEST(ShapesFile, DuplicatesAreMeasuredOnceAndAByteOrderMarkIsAccepted) {
  TempDir dir;
  const std::string path = dir.file("shapes.csv");
  {
    std::ofstream out(path);
    out << "\xEF\xBB\xBFseq,heads,kv_heads,head_dim\n";
    for (int i = 0; i < 200000; ++i) out << (i % 3 == 1 ? "512" : "256") << ",8,8,64\n";
  }
  const std::vector<AttentionShape> shapes = cli::read_shapes_file(path);
  ASSERT_EQ(shapes.size(), 2u);
  EXPECT_EQ(shapes[0].seq_lens, std::vector<int64_t>{256}) << "the first line naming a shape keeps its place";
  EXPECT_EQ(shapes[1].seq_lens, std::vector<int64_t>{512});
}

// Found by tests/fuzz/fuzz_shapes_csv: a column named twice made a row read past its cells.
TEST(ShapesFile, AColumnNamedTwiceIsRefused) {
  TempDir dir;
  const std::string path = dir.file("shapes.csv");
  std::ofstream(path) << "seq,seq,heads\n7,8\n";
  try {
    cli::read_shapes_file(path);
    ADD_FAILURE() << "a header naming seq twice was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("column 'seq' is named twice"), std::string::npos) << e.what();
  }
}

TEST(BadInput, ImpossibleSizesAreRefusedBeforeAnyRankStarts) {
  expect_refused("run --world 2 --seq 1M --heads 4096", "GiB of host memory");
  expect_refused("tune --db /tmp/cptune_never_written.db --world 2 --seq 1M --heads 4096", "no candidate layout fits");
  EXPECT_FALSE(std::filesystem::exists("/tmp/cptune_never_written.db")) << "refused before the database is touched";
  expect_refused("run --world 2 --seq 4096 --heads 100000000", "query heads 100000000");
  expect_refused("tune --db /tmp/cptune_never_written.db --world 2 --seq 256 --heads 100000000",
                 "query heads 100000000");
  EXPECT_FALSE(std::filesystem::exists("/tmp/cptune_never_written.db-wal"));
}

// The tuner allocates every candidate of a shape at once (interleaved measurement): a shape
// whose layouts fit one at a time but not together is refused, not left to the OOM killer.
TEST(HostMemory, CandidatesMeasuredTogetherAreCountedTogether) {
  const double have = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  const Cluster cluster{2, 2};
  const cli::RunArgs local;  // gloo, local ranks
  for (int64_t seq = 1024; seq <= kMaxTokens; seq *= 2) {
    const Layout layout = Layout::build(
        {AttentionShape{1, {seq}, 8, 8, 64, 64, DType::fp32, {}}, cluster, resolve({Strategy::ring}, cluster)});
    double need = 0;
    for (const RankLayout& rank : layout.ranks()) need += double(rank.peak_bytes);
    if (need <= have / 2) continue;
    if (need > have) GTEST_SKIP() << "no sequence length lands between half and all of this machine's memory";
    EXPECT_NO_THROW(cli::check_host_memory(local, {&layout, 1}, false));
    const std::vector<Layout> together{layout, layout};
    EXPECT_THROW(cli::check_host_memory(local, together, false), Error);
    return;
  }
  FAIL() << "no shape reached half of this machine's memory";
}

TEST(BadInput, SmallerGapsAreClosed) {
  TempDir dir;
  const std::string seq = std::string(100000, '7');
  expect_refused("layout --world 2 --heads 4 --seq-list 1," + seq, "--seq-list");
  expect_refused("lookup --db " + dir.file("none.db") + " --world 2 --heads 4 --seq-list -5,7", "-5");
  expect_refused("lookup --db " + dir.file("none.db") + " --world 2 --heads 4 --seq 99999999999999",
                 "99999999999999");
  expect_refused("lookup --db " + dir.file("none.db") + " --world 2 --heads 4 --seq 256 --backend x", "--backend x");
  expect_refused("layout --world 2 --heads 4 --seq 256 stray", "unexpected argument 'stray'");
  expect_refused("layout --world 2 --heads 4 --seq 256 --ranks-per-node 3", "--ranks-per-node 3");
  expect_refused("simulate --world 2 --heads 4 --seq 256 --top 0", "--top 0");
  std::ofstream(dir.file("plain")) << "x";
  const auto file_store = testing::run_command("RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 timeout 60 " + std::string(CPTUNE_BINARY) +
                                               " run --world 1 --heads 4 --seq 256 --rendezvous file://" +
                                               dir.file("plain"));
  EXPECT_EQ(file_store.exit_code, 2) << file_store.output;
  EXPECT_NE(file_store.output.find("is a file, not a directory"), std::string::npos) << file_store.output;
}

}  // namespace
}  // namespace cptune

namespace cptune {
namespace {

size_t rendezvous_dirs_in(const std::string& dir) {
  size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.path().filename().string().rfind("cptune-rendezvous-", 0) == 0) ++n;
  return n;
}

// Issue 26: a launcher killed with SIGKILL cannot remove its rendezvous directory; the next local
// run removes every such directory whose creator is gone, and leaves a live run's alone.
TEST(LocalRuns, AKilledLaunchersRendezvousDirectoryIsRemovedByTheNextRun) {
  TempDir dir;
  const std::string tmp = dir.file("tmp");
  std::filesystem::create_directory(tmp);
  setenv("TMPDIR", tmp.c_str(), 1);
  const Started s = start_with_ranks(kLongRun, dir, 4, [] { return true; });
  kill_parent_and_check_ranks(s, SIGKILL);
  ASSERT_EQ(rendezvous_dirs_in(tmp), 1u) << "the killed launcher's directory";
  // A live run's directory: its owner file names this test process.
  const std::string live = tmp + "/cptune-rendezvous-live00";
  std::filesystem::create_directory(live);
  std::ofstream(live + "/owner") << getpid() << " " << *db::process_start_time(getpid()) << "\n";
  const auto r = testing::run_command(std::string(CPTUNE_BINARY) + " run --world 1 --seq 64 --heads 2 --head-dim 8");
  unsetenv("TMPDIR");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(rendezvous_dirs_in(tmp), 1u);
  EXPECT_TRUE(std::filesystem::exists(live));
}

// The old launcher put every local rank's Gloo pairs on 127.0.0.1: --world 256 needed 65280
// listening ports at once and failed after 141 s with 181 "Address already in use".
TEST(LocalRuns, AWorldAboveTheLocalLimitIsRefusedAtOnce) {
  auto r = testing::run_command(std::string(CPTUNE_BINARY) + " run --world 600 --strategy ring --seq 600 --heads 2 --head-dim 8");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("at most 512"), std::string::npos) << r.output;
  r = testing::run_command("ulimit -n 200 && " + std::string(CPTUNE_BINARY) + " run --world 160 --strategy ring --seq 160 --heads 2 --head-dim 8");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("at most 136 with ulimit -n"), std::string::npos) << r.output;
}

TEST(LocalRuns, EachLocalRankHasItsOwnLoopbackAddress) {
  std::set<std::string> seen;
  for (int rank = 0; rank < backends::kMaxLocalWorld; ++rank) {
    const std::string a = backends::local_rank_address(rank);
    EXPECT_EQ(a.rfind("127.", 0), 0u) << a;
    EXPECT_EQ(a.find(".0", a.rfind('.')), std::string::npos) << a << ": a last byte of 0";
    EXPECT_TRUE(seen.insert(a).second) << a << " twice";
  }
}

// Under `ulimit -f` a write past the limit raised SIGXFSZ and killed tune silently (exit 153);
// ignored, the write fails with EFBIG and is reported.
TEST(BadInput, AFileSizeLimitIsAnErrorNotASilentKill) {
  TempDir dir;
  const auto r = testing::run_command("ulimit -f 4 && " + std::string(CPTUNE_BINARY) + " tune --db " + dir.file("t.db") +
                                      " --world 2 --seq 256 --heads 4 --head-dim 16 --iterations 1 --warmups 0 --no-verify");
  EXPECT_NE(r.exit_code, 128 + SIGXFSZ) << r.output;
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace cptune
