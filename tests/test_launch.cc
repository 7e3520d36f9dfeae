// Launcher-native runs: the env:// TCP store (served by rank 0, bounded waits, errors naming
// host:port), env:// specs from MASTER_ADDR / MASTER_PORT (torchrun's agent port avoided), the
// launchers' ranks per host, and join_outside_launch (world from the launcher, a mismatch or a
// launch with no way to meet an Error, never a silent local fork). Real torchrun and mpirun
// runs: tests/launchers/check_launchers.sh.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "backends/comm/gloo_comm.h"
#include "backends/comm/rendezvous.h"
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

// Saves, clears and restores every variable a launcher or env:// reads.
class LauncherEnv : public ::testing::Test {
 protected:
  static constexpr const char* kNames[] = {
      "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
      "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
      "SLURM_NTASKS_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE", "CPTUNE_MASTER_PORT"};
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
    backends::TcpStore store("127.0.0.1", port, 10s, rank == 0);
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
  const std::string message = error_of([&] { backends::TcpStore("127.0.0.1", port, 500ms, false); });
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_NE(message.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << message;
  EXPECT_NE(message.find("rank 0 serves it"), std::string::npos) << message;
}

TEST(TcpStore, KeyNobodyWritesTimesOutNamingTheKeyAndTheStore) {
  const int port = free_port();
  backends::TcpStore store("127.0.0.1", port, 600ms, true);
  const auto start = Clock::now();
  const std::string message = error_of([&] { store.get("never"); });
  EXPECT_GE(Clock::now() - start, 500ms);
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_NE(message.find("'never'"), std::string::npos) << message;
  EXPECT_NE(message.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << message;
}

TEST(TcpStore, PortInUseIsAnErrorNamingIt) {
  const int port = free_port();
  backends::TcpStoreServer first(port);
  const std::string message = error_of([&] { backends::TcpStoreServer second(port); });
  EXPECT_NE(message.find("port " + std::to_string(port)), std::string::npos) << message;
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
