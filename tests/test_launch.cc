// Launcher-native runs: the env:// TCP store (served by rank 0, bounded waits, errors naming
// host:port), env:// specs from MASTER_ADDR / MASTER_PORT (torchrun's agent port avoided), the
// launchers' ranks per host, and join_outside_launch (world from the launcher, a mismatch or a
// launch with no way to meet an Error, never a silent local fork). Real torchrun and mpirun
// runs: tests/launchers/check_launchers.sh.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backends/comm/gloo_comm.h"
#include "backends/comm/rendezvous.h"
#include "backends/comm/store_token.h"
#include "backends/comm/tcp_store.h"
#include "core/error.h"
#include "tests/multiprocess.h"
#include "tuner/cli/run_options.h"

namespace cptune {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A port nothing listens on right now (bound once with port 0, then released).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "no Error";
}

constexpr const char* kToken = "test-token";

backends::TcpStoreServerOptions server_options(int port) {
  backends::TcpStoreServerOptions options;
  options.port = port;
  options.bind_host = "127.0.0.1";
  options.token = kToken;
  options.stall_timeout = 1s;
  return options;
}

// A raw TCP client of the store, speaking whatever it likes.
class RawClient {
 public:
  explicit RawClient(int port, const char* address = "127.0.0.1") {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(port));
    inet_pton(AF_INET, address, &addr.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    timeval tv{2, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawClient() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool send_bytes(const std::string& bytes) { return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size()); }
  // One message: op, u32 length, body.
  bool send_message(char op, const std::string& body) {
    std::string m(1, op);
    for (int i = 0; i < 4; ++i) m.push_back(char((body.size() >> (8 * i)) & 0xff));
    return send_bytes(m + body);
  }
  // The next byte, or -1 on EOF, error or a 2 s silence.
  int read_byte() {
    unsigned char b = 0;
    return ::recv(fd_, &b, 1, 0) == 1 ? b : -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::string u32(uint32_t v) {
  std::string out;
  for (int i = 0; i < 4; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
  return out;
}

// A store client doing one set and get, timed.
std::chrono::milliseconds round_trip(int port) {
  const auto start = Clock::now();
  backends::TcpStore store("127.0.0.1", port, 3s, false, kToken);
  store.set("k", {'v'});
  if (store.get("k") != std::vector<char>{'v'}) ADD_FAILURE() << "read back the wrong value";
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

// Three bytes of a header, left open: the old server's one thread blocked on them, so rank 0
// hung past its timeout and never exited after a successful run.
TEST(TcpStoreAdversary, AHalfSentMessageBlocksNobodyAndTheServerStopsAtOnce) {
  const int port = free_port();
  auto server = std::make_unique<backends::TcpStoreServer>(server_options(port));
  RawClient slow(port);
  ASSERT_TRUE(slow.connected());
  ASSERT_TRUE(slow.send_bytes(std::string("G\x05\x00", 3)));
  RawClient authed_slow(port);
  ASSERT_TRUE(authed_slow.send_message('A', kToken));
  ASSERT_EQ(authed_slow.read_byte(), 1);
  ASSERT_TRUE(authed_slow.send_bytes(std::string("S\x01\x00", 3)));
  EXPECT_LT(round_trip(port), 1000ms);
  const auto start = Clock::now();
  server.reset();  // both clients still hold their sockets
  EXPECT_LT(Clock::now() - start, 500ms);
}

TEST(TcpStoreAdversary, ABadOrMissingTokenGetsNothingAndStoresNothing) {
  const int port = free_port();
  backends::TcpStoreServer server(server_options(port));
  {
    RawClient bare(port);  // the old protocol: straight to a get of a rank's address
    ASSERT_TRUE(bare.send_message('G', "cptune/1"));
    EXPECT_EQ(bare.read_byte(), -1);  // dropped, no answer
  }
  {
    RawClient wrong(port);
    ASSERT_TRUE(wrong.send_message('A', "guessed"));
    EXPECT_EQ(wrong.read_byte(), 0);  // refused, then closed
    wrong.send_message('S', "cptune/1" + u32(4) + "evil");
    EXPECT_EQ(wrong.read_byte(), -1);
  }
  backends::TcpStore store("127.0.0.1", port, 2s, false, kToken);
  std::vector<char> value;
  EXPECT_NE(error_of([&] { store.wait({"cptune/1"}, 300ms); }).find("timed out"), std::string::npos);
  const std::string message = error_of([&] { backends::TcpStore("127.0.0.1", port, 2s, false, "other-token"); });
  EXPECT_NE(message.find("refused this rank's token"), std::string::npos) << message;
  EXPECT_EQ(message.find("other-token"), std::string::npos) << "the message shows the token: " << message;
}

TEST(TcpStoreAdversary, OversizedSetsAreDroppedUnreadAndTheTotalIsCapped) {
  const int port = free_port();
  backends::TcpStoreServerOptions options = server_options(port);
  options.max_total_bytes = (3 << 20) + 64;  // three 1 MiB values and their keys
  backends::TcpStoreServer server(options);
  {
    RawClient big(port);
    ASSERT_TRUE(big.send_message('A', kToken));
    ASSERT_EQ(big.read_byte(), 1);
    // A 64 MiB value announced: the server drops the connection instead of buffering it.
    ASSERT_TRUE(big.send_bytes("S" + u32(3) + "big" + u32(64u << 20) + std::string(1 << 16, 'x')));
    EXPECT_EQ(big.read_byte(), -1);
  }
  backends::TcpStore store("127.0.0.1", port, 2s, false, kToken);
  const std::vector<char> mib(1 << 20, 'x');
  store.set("a", mib);
  store.set("b", mib);
  store.set("a", mib);  // replacing a key does not count twice
  const std::string message = error_of([&] {
    store.set("c", mib);
    store.set("d", mib);
  });
  EXPECT_NE(message.find("refused key 'd'"), std::string::npos) << message;
  EXPECT_NE(error_of([&] { store.set("e", std::vector<char>((1 << 20) + 1)); }).find("over the store's caps"), std::string::npos);
  EXPECT_EQ(store.get("b"), mib);  // still serving
}

TEST(TcpStoreAdversary, ManyIdleConnectionsDoNotCrowdOutTheRanks) {
  const int port = free_port();
  backends::TcpStoreServer server(server_options(port));
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 300; ++i) idle.push_back(std::make_unique<RawClient>(port));
  EXPECT_LT(round_trip(port), 2000ms);
}

TEST(TcpStoreAdversary, WithMasterAddrLoopbackTheStoreListensOnLoopbackOnly) {
  const int port = free_port();
  backends::TcpStoreServer server(server_options(port));
  // 127.0.0.2 is this host too, but not the address asked for: the old server (every
  // interface) answered there.
  RawClient other(port, "127.0.0.2");
  EXPECT_FALSE(other.connected());
  RawClient asked(port, "127.0.0.1");
  EXPECT_TRUE(asked.connected());
}

TEST(TcpStoreAdversary, EnvRankZeroExitsAfterItsRunWhateverAClientHoldsOpen) {
  const int port = free_port();
  constexpr int kWorld = 2;
  const auto start = Clock::now();
  const testing::RanksOutcome outcome = testing::run_ranks(kWorld, [&](int rank) {
    setenv("CPTUNE_STORE_TOKEN", kToken, 1);
    backends::GlooCommOptions options;
    options.rank = rank;
    options.size = kWorld;
    options.rendezvous = "env://127.0.0.1:" + std::to_string(port);
    options.timeout = 5s;
    std::unique_ptr<RawClient> slow;
    if (rank == 1) {  // a stranger's half message reaches rank 0's store before rank 1 does
      std::this_thread::sleep_for(300ms);
      slow = std::make_unique<RawClient>(port);
      slow->send_bytes(std::string("G\x05\x00", 3));
    }
    auto comm = backends::GlooComm::create(options);
    comm->barrier();
    return 0;
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
  EXPECT_LT(Clock::now() - start, 10s);
}

// Saves, clears and restores every variable a launcher or env:// reads.
class LauncherEnv : public ::testing::Test {
 protected:
  static constexpr const char* kNames[] = {
      "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
      "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
      "SLURM_NTASKS_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE", "CPTUNE_MASTER_PORT",
      "CPTUNE_STORE_TOKEN", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "OMPI_MCA_orte_precondition_transports",
      "PMIX_NAMESPACE", "CPTUNE_STORE_BIND"};
  void SetUp() override {
    for (const char* name : kNames) {
      const char* value = std::getenv(name);
      saved_.emplace_back(name, value ? std::optional<std::string>(value) : std::nullopt);
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) value ? setenv(name, value->c_str(), 1) : unsetenv(name);
  }
  static void set(const char* name, const std::string& value) { setenv(name, value.c_str(), 1); }
  static void torchrun_rank(int rank, int world, int local_world) {
    set("RANK", std::to_string(rank));
    set("WORLD_SIZE", std::to_string(world));
    set("LOCAL_RANK", std::to_string(rank % local_world));
    set("LOCAL_WORLD_SIZE", std::to_string(local_world));
  }

 private:
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

TEST(TcpStore, SetGetAndWaitAcrossForkedRanksWithRankZeroServing) {
  const int port = free_port();
  constexpr int kWorld = 4;
  const testing::RanksOutcome outcome = testing::run_ranks(kWorld, [&](int rank) {
    backends::TcpStore store("127.0.0.1", port, 10s, rank == 0, kToken);
    const std::string mine = "value of rank " + std::to_string(rank) + std::string(1000 * rank, 'x');
    store.set("key" + std::to_string(rank), std::vector<char>(mine.begin(), mine.end()));
    for (int peer = 0; peer < kWorld; ++peer) {
      const std::vector<char> got = store.get("key" + std::to_string(peer));
      const std::string want = "value of rank " + std::to_string(peer) + std::string(1000 * peer, 'x');
      testing::check(std::string(got.begin(), got.end()) == want, "rank " + std::to_string(rank) + " read key" +
                                                                      std::to_string(peer) + " wrong");
    }
    // Rank 0 serves: it leaves only after everyone has read everything.
    store.set("done" + std::to_string(rank), {1});
    if (rank == 0) {
      std::vector<std::string> all;
      for (int peer = 0; peer < kWorld; ++peer) all.push_back("done" + std::to_string(peer));
      store.wait(all);
    }
    return 0;
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(TcpStore, GlooCommOverEnvRendezvousMovesEveryByte) {
  const int port = free_port();
  constexpr int kWorld = 3;
  const testing::RanksOutcome outcome = testing::run_ranks(kWorld, [&](int rank) {
    backends::GlooCommOptions options;
    options.rank = rank;
    options.size = kWorld;
    options.rendezvous = "env://127.0.0.1:" + std::to_string(port);
    options.timeout = 15s;
    setenv("CPTUNE_STORE_TOKEN", kToken, 1);
    auto comm = backends::GlooComm::create(options);
    std::vector<int64_t> mine(8, rank), all(8 * kWorld, -1);
    comm->allgather_host(mine.data(), int64_t(mine.size() * sizeof(int64_t)), all.data());
    for (int peer = 0; peer < kWorld; ++peer)
      testing::check(all[size_t(peer) * 8] == peer && all[size_t(peer) * 8 + 7] == peer, "allgather misplaced bytes");
    comm->barrier();
    return 0;
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(TcpStore, NoServerFailsWithinTheTimeoutNamingHostAndPort) {
  const int port = free_port();
  const auto start = Clock::now();
  const std::string message = error_of([&] { backends::TcpStore("127.0.0.1", port, 500ms, false, kToken); });
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_NE(message.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << message;
  EXPECT_NE(message.find("rank 0 serves it"), std::string::npos) << message;
}

TEST(TcpStore, KeyNobodyWritesTimesOutNamingTheKeyAndTheStore) {
  const int port = free_port();
  backends::TcpStore store("127.0.0.1", port, 600ms, true, kToken);
  const auto start = Clock::now();
  const std::string message = error_of([&] { store.get("never"); });
  EXPECT_GE(Clock::now() - start, 500ms);
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_NE(message.find("'never'"), std::string::npos) << message;
  EXPECT_NE(message.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << message;
}

TEST(TcpStore, PortInUseIsAnErrorNamingIt) {
  const int port = free_port();
  backends::TcpStoreServer first(server_options(port));
  const std::string message = error_of([&] { backends::TcpStoreServer second(server_options(port)); });
  EXPECT_NE(message.find("port " + std::to_string(port)), std::string::npos) << message;
}

TEST_F(LauncherEnv, TheStoreTokenComesFromCptuneStoreTokenOrTheLaunchersJobId) {
  const std::string none = error_of([] { backends::store_token_from_environment(); });
  EXPECT_NE(none.find("set CPTUNE_STORE_TOKEN"), std::string::npos) << none;
  set("OMPI_MCA_orte_precondition_transports", "a47a0aeedb8ad988-dfd8f94ccf7d8035");
  const std::string mpirun = backends::store_token_from_environment().value;
  set("SLURM_JOB_ID", "4242");
  set("SLURM_STEP_ID", "0");
  const std::string srun = backends::store_token_from_environment().value;
  set("TORCHELASTIC_RUN_ID", "none");
  set("MASTER_PORT", "29500");
  const std::string torchrun = backends::store_token_from_environment().value;
  EXPECT_NE(mpirun, srun);
  EXPECT_NE(srun, torchrun);
  set("MASTER_PORT", "29600");  // another torchrun job on this host
  EXPECT_NE(backends::store_token_from_environment().value, torchrun);
  set("SLURM_STEP_ID", "1");
  unsetenv("TORCHELASTIC_RUN_ID");
  EXPECT_NE(backends::store_token_from_environment().value, srun);  // the next job step
  set("CPTUNE_STORE_TOKEN", "s3cret");
  EXPECT_EQ(backends::store_token_from_environment().value, "s3cret");
  set("CPTUNE_STORE_TOKEN", "");
  EXPECT_NE(error_of([] { backends::store_token_from_environment(); }).find("empty"), std::string::npos);
}

TEST_F(LauncherEnv, EnvSpecReadsMasterAddrAndPortAndAvoidsTorchrunsAgentPort) {
  EXPECT_NE(error_of([] { backends::parse_rendezvous("env://"); }).find("MASTER_ADDR"), std::string::npos);
  set("MASTER_ADDR", "node7");
  EXPECT_NE(error_of([] { backends::parse_rendezvous("env://"); }).find("MASTER_PORT is not set"), std::string::npos);
  set("MASTER_PORT", "29500");
  backends::RendezvousSpec spec = backends::parse_rendezvous("env://");
  EXPECT_EQ(spec.kind, backends::RendezvousSpec::Kind::env);
  EXPECT_EQ(spec.host, "node7");
  EXPECT_EQ(spec.port, 29500);
  EXPECT_EQ(backends::to_string(spec), "env://node7:29500");
  EXPECT_EQ(backends::parse_rendezvous(backends::to_string(spec)).port, 29500);  // round trip
  set("TORCHELASTIC_USE_AGENT_STORE", "True");  // torchrun's agent owns MASTER_PORT
  EXPECT_EQ(backends::parse_rendezvous("env://").port, 29501);
  set("CPTUNE_MASTER_PORT", "31000");
  EXPECT_EQ(backends::parse_rendezvous("env://").port, 31000);
  set("MASTER_PORT", "http");
  EXPECT_NE(error_of([] { backends::parse_rendezvous("env://"); }).find("'http'"), std::string::npos);
  EXPECT_NE(error_of([] { backends::parse_rendezvous("env://host"); }).find("needs the port"), std::string::npos);
}

TEST_F(LauncherEnv, EachLaunchersRanksPerHostAreRead) {
  torchrun_rank(5, 8, 4);
  EXPECT_EQ(backends::launch_env_from_environment()->local_world, 4);
  set("LOCAL_WORLD_SIZE", "9");
  EXPECT_NE(error_of([] { backends::launch_env_from_environment(); }).find("LOCAL_WORLD_SIZE='9'"), std::string::npos);
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}) unsetenv(name);
  set("OMPI_COMM_WORLD_RANK", "1");
  set("OMPI_COMM_WORLD_SIZE", "4");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
  set("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
  EXPECT_EQ(backends::launch_env_from_environment()->local_world, 2);
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                           "OMPI_COMM_WORLD_LOCAL_SIZE"})
    unsetenv(name);
  set("SLURM_PROCID", "0");
  set("SLURM_NTASKS", "4");
  set("SLURM_LOCALID", "0");
  EXPECT_EQ(backends::launch_env_from_environment()->local_world, 0);  // not given: unknown
  set("SLURM_NTASKS_PER_NODE", "4");
  EXPECT_EQ(backends::launch_env_from_environment()->local_world, 4);
}

TEST_F(LauncherEnv, JoiningALaunchTakesItsWorldAndRanksPerHostAndEnvRendezvous) {
  cli::RunArgs run;
  int64_t world = 0, per_node = 0;
  cli::join_outside_launch(world, &per_node, run);  // no launcher: nothing changes
  EXPECT_EQ(world, 0);
  EXPECT_EQ(run.rendezvous, "");

  torchrun_rank(3, 8, 4);
  set("MASTER_ADDR", "127.0.0.1");
  set("MASTER_PORT", "29500");
  cli::join_outside_launch(world, &per_node, run);
  EXPECT_EQ(world, 8);
  EXPECT_EQ(per_node, 4);
  EXPECT_EQ(run.rendezvous, "env://");

  cli::RunArgs explicit_store;
  explicit_store.rendezvous = "file:///shared/x";
  int64_t same = 8, given_per_node = 8;
  cli::join_outside_launch(same, &given_per_node, explicit_store);
  EXPECT_EQ(explicit_store.rendezvous, "file:///shared/x");  // the user's store wins
  EXPECT_EQ(given_per_node, 8);                              // and so does --ranks-per-node

  int64_t wrong = 2;
  const std::string mismatch = error_of([&] { cli::join_outside_launch(wrong, nullptr, run); });
  EXPECT_NE(mismatch.find("--world 2 disagrees with the launcher's world size 8"), std::string::npos) << mismatch;
}

TEST_F(LauncherEnv, MpirunWithoutAStoreIsAnErrorSayingWhatToPass) {
  set("OMPI_COMM_WORLD_RANK", "0");
  set("OMPI_COMM_WORLD_SIZE", "4");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "0");
  cli::RunArgs run;
  int64_t world = 0;
  const std::string message = error_of([&] { cli::join_outside_launch(world, nullptr, run); });
  for (const char* part : {"mpirun rank 0 of 4", "--rendezvous", "file://", "redis://", "MASTER_ADDR", "MASTER_PORT"})
    EXPECT_NE(message.find(part), std::string::npos) << part << " missing from: " << message;
}

}  // namespace
}  // namespace cptune
