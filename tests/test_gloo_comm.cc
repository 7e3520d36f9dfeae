// Properties of GlooComm on 2..8 forked ranks: every byte of every collective lands where the
// counts say, Ulysses and ring groups of every U x R mesh in both rank orders, ring rotation,
// and failures (a missing or dead peer, a bad spec) that end in a cptune::Error, fast.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backends/comm/gloo_comm.h"
#include "backends/comm/rendezvous.h"
#include "core/error.h"
#include "core/types.h"
#include "tests/layout_sweep.h"
#include "tests/multiprocess.h"

namespace cptune {
namespace {

using backends::Comm;
using backends::GlooComm;
using testing::check;
using testing::RankCheckFailed;
using testing::run_ranks;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using PairBytes = std::vector<std::vector<int64_t>>;  // [src][dst]

// Ample on a loaded 2-core machine; the failure tests use a short one of their own.
constexpr std::chrono::milliseconds kOpTimeout = 15s;
constexpr std::chrono::milliseconds kRunTimeout = 60s;
constexpr std::chrono::milliseconds kShortTimeout = 2s;

std::unique_ptr<GlooComm> connect(const std::string& spec, int rank, int world,
                                  std::chrono::milliseconds timeout = kOpTimeout) {
  backends::GlooCommOptions options;
  options.rank = rank;
  options.size = world;
  options.rendezvous = spec;
  options.timeout = timeout;
  return GlooComm::create(options);
}

int64_t ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// Byte `index` of the block member `src` sends to member `dst`; `salt` tells trials and groups
// apart. A byte delivered to the wrong place or not at all mismatches with probability 255/256.
uint8_t payload_byte(uint64_t salt, int src, int dst, int64_t index) {
  uint64_t x = salt * 0x9E3779B97F4A7C15ull + (uint64_t(uint32_t(src)) << 44) + (uint64_t(uint32_t(dst)) << 28) +
               uint64_t(index);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;  // splitmix64 finalizer
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return uint8_t(x ^ (x >> 31));
}

void fill_block(uint8_t* out, int64_t bytes, uint64_t salt, int src, int dst) {
  for (int64_t i = 0; i < bytes; ++i) out[i] = payload_byte(salt, src, dst, i);
}

void check_block(const uint8_t* got, int64_t bytes, uint64_t salt, int src, int dst, const std::string& what) {
  for (int64_t i = 0; i < bytes; ++i)
    if (got[i] != payload_byte(salt, src, dst, i))
      throw RankCheckFailed(what + ": byte " + std::to_string(i) + " of " + std::to_string(bytes) + " from member " +
                            std::to_string(src) + " to member " + std::to_string(dst) + " is " +
                            std::to_string(got[i]) + ", expected " + std::to_string(payload_byte(salt, src, dst, i)));
}

// The counts of one alltoallv, the same on every rank: about a third are zero (UAA sends
// nothing to some peers), the rest 1..max_bytes.
PairBytes random_pair_bytes(uint64_t seed, int members, int64_t max_bytes) {
  std::mt19937_64 rng(seed);
  PairBytes bytes(members, std::vector<int64_t>(members, 0));
  for (auto& row : bytes)
    for (int64_t& b : row) b = (max_bytes == 0 || rng() % 3 == 0) ? 0 : 1 + int64_t(rng() % uint64_t(max_bytes));
  return bytes;
}

// Runs one alltoallv with these counts and checks every received byte.
void check_alltoallv(Comm& comm, uint64_t salt, const PairBytes& bytes, const std::string& what) {
  const int n = comm.size();
  const int me = comm.rank();
  std::vector<int64_t> send_bytes(n), recv_bytes(n);
  for (int p = 0; p < n; ++p) {
    send_bytes[p] = bytes[me][p];
    recv_bytes[p] = bytes[p][me];
  }
  std::vector<uint8_t> send(std::accumulate(send_bytes.begin(), send_bytes.end(), size_t(0)));
  std::vector<uint8_t> recv(std::accumulate(recv_bytes.begin(), recv_bytes.end(), size_t(0)), 0);
  int64_t offset = 0;
  for (int p = 0; p < n; offset += send_bytes[p], ++p) fill_block(send.data() + offset, send_bytes[p], salt, me, p);
  comm.alltoallv(send.data(), send_bytes, recv.data(), recv_bytes);
  offset = 0;
  for (int p = 0; p < n; offset += recv_bytes[p], ++p)
    check_block(recv.data() + offset, recv_bytes[p], salt, p, me, what + " alltoallv");
}

void check_members(Comm& group, int world_rank, const std::vector<int>& expected, const std::string& what) {
  std::vector<int> members(group.size());
  group.allgather_host(&world_rank, sizeof world_rank, members.data());
  if (members != expected) {
    std::string got, want;
    for (int m : members) got += std::to_string(m) + " ";
    for (int m : expected) want += std::to_string(m) + " ";
    throw RankCheckFailed(what + ": members are [ " + got + "], expected [ " + want + "]");
  }
}

// Ring attention's rotation: over R-1 steps each member passes the K and V blocks it holds to
// the next member, K and V in flight at once under distinct tags, V's receive posted first.
// Block sizes differ per origin member and some are empty. `while_in_flight` runs at each step
// while the transfers are outstanding, as a hybrid's Ulysses all-to-all or compute would.
void check_ring_rotation(Comm& ring, uint64_t salt, const std::string& what,
                         const std::function<void()>& while_in_flight = [] {}) {
  const int R = ring.size();
  const int me = ring.rank();
  const int next = (me + 1) % R;
  const int prev = (me + R - 1) % R;
  auto k_bytes = [&](int origin) { return int64_t(payload_byte(salt, origin, -1, 0) % 4 == 0 ? 0 : 1 + origin * 997); };
  auto v_bytes = [&](int origin) { return int64_t(1 + payload_byte(salt, origin, -2, 0) * 13); };
  std::vector<uint8_t> k(k_bytes(me)), v(v_bytes(me));
  fill_block(k.data(), int64_t(k.size()), salt, me, -1);
  fill_block(v.data(), int64_t(v.size()), salt, me, -2);
  for (int step = 0; step < R - 1; ++step) {
    const int origin = (me - step - 1 + 2 * R) % R;  // whose blocks arrive at this step
    std::vector<uint8_t> k_in(k_bytes(origin)), v_in(v_bytes(origin));
    auto recv_v = ring.irecv(v_in.data(), int64_t(v_in.size()), prev, 2 * step + 1);
    auto recv_k = ring.irecv(k_in.data(), int64_t(k_in.size()), prev, 2 * step);
    auto send_k = ring.isend(k.data(), int64_t(k.size()), next, 2 * step);
    auto send_v = ring.isend(v.data(), int64_t(v.size()), next, 2 * step + 1);
    while_in_flight();
    recv_k->wait();
    recv_v->wait();
    send_k->wait();
    send_v->wait();
    const std::string at = what + " ring step " + std::to_string(step);
    check_block(k_in.data(), int64_t(k_in.size()), salt, origin, -1, at + " K");
    check_block(v_in.data(), int64_t(v_in.size()), salt, origin, -2, at + " V");
    k.swap(k_in);
    v.swap(v_in);
  }
}

// The world ranks of the Ulysses group and of the ring group that `rank` is in, in group
// order (docs/design.md "Rank order in a hybrid mesh").
struct MeshGroups {
  std::vector<int> ulysses, ring;
};

MeshGroups mesh_groups(int rank, int U, int R, RankOrder order) {
  MeshGroups g;
  const bool ulysses_inner = order == RankOrder::ulysses_inner;
  for (int k = 0; k < U; ++k) g.ulysses.push_back(ulysses_inner ? rank / U * U + k : rank % R + k * R);
  for (int k = 0; k < R; ++k) g.ring.push_back(ulysses_inner ? rank % U + k * U : rank / R * R + k);
  return g;
}

// The group's first world rank names it; the position in the group orders it.
std::unique_ptr<Comm> split_into(Comm& world, const std::vector<int>& group) {
  const int key = int(std::find(group.begin(), group.end(), world.rank()) - group.begin());
  return world.split(group.front(), key);
}

class GlooCommOnP : public ::testing::TestWithParam<int> {
 protected:
  // Runs body on P ranks connected through a fresh FileStore and expects every rank to pass.
  void run_on_every_rank(const std::function<void(Comm& world)>& body) {
    const int P = GetParam();
    backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
    const testing::RanksOutcome outcome = run_ranks(
        P,
        [&](int rank) {
          std::unique_ptr<GlooComm> world = connect(dir.spec(), rank, P);
          body(*world);
          return 0;
        },
        kRunTimeout);
    EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
  }
};

TEST_P(GlooCommOnP, UnevenAlltoallvDeliversEveryByteWhereTheCountsSay) {
  run_on_every_rank([](Comm& world) {
    const int P = world.size();
    for (uint64_t trial = 1; trial <= 6; ++trial)
      check_alltoallv(world, trial, random_pair_bytes(trial, P, 4096), "trial " + std::to_string(trial));
    check_alltoallv(world, 7, random_pair_bytes(7, P, 0), "all counts zero");
    check_alltoallv(world, 8, random_pair_bytes(8, P, 256 << 10), "up to 256 KiB per pair");
  });
}

TEST_P(GlooCommOnP, UnevenAllgathervDeliversEveryContributionInMemberOrder) {
  run_on_every_rank([](Comm& world) {
    const int P = world.size();
    const int me = world.rank();
    for (uint64_t trial = 1; trial <= 6; ++trial) {
      const std::vector<int64_t> recv_bytes = random_pair_bytes(trial, P, 5000)[0];  // member p gives [p]
      std::vector<uint8_t> send(recv_bytes[me]);
      fill_block(send.data(), recv_bytes[me], trial, me, P);
      std::vector<uint8_t> recv(std::accumulate(recv_bytes.begin(), recv_bytes.end(), size_t(0)), 0);
      world.allgatherv(send.data(), recv_bytes[me], recv.data(), recv_bytes);
      int64_t offset = 0;
      for (int p = 0; p < P; offset += recv_bytes[p], ++p)
        check_block(recv.data() + offset, recv_bytes[p], trial, p, P, "allgatherv trial " + std::to_string(trial));
    }
  });
}

TEST_P(GlooCommOnP, AllgatherHostGathersEveryRanksBytesInRankOrder) {
  run_on_every_rank([](Comm& world) {
    const int P = world.size();
    for (int64_t bytes : {1, 24, 4096}) {
      std::vector<uint8_t> send(bytes), recv(bytes * P, 0);
      fill_block(send.data(), bytes, 99, world.rank(), P);
      world.allgather_host(send.data(), bytes, recv.data());
      for (int p = 0; p < P; ++p)
        check_block(recv.data() + p * bytes, bytes, 99, p, P, "allgather_host of " + std::to_string(bytes));
    }
  });
}

TEST_P(GlooCommOnP, BarrierHoldsEveryRankUntilTheLastArrives) {
  run_on_every_rank([](Comm& world) {
    for (int i = 0; i < 20; ++i) world.barrier();  // back to back, tags advance in step
    const int late = world.size() - 1;
    const auto late_by = 300ms;
    world.barrier();
    const auto start = Clock::now();
    if (world.rank() == late) std::this_thread::sleep_for(late_by);
    world.barrier();
    // Leaves room for 200 ms of scheduling skew between ranks on a loaded machine.
    const int64_t waited = ms_since(start);
    check(waited >= 100, "rank " + std::to_string(world.rank()) + " left the barrier after " +
                             std::to_string(waited) + " ms, before the rank 300 ms late arrived");
  });
}

TEST_P(GlooCommOnP, RingRotationOverPMinusOneStepsDeliversEachBlock) {
  run_on_every_rank([](Comm& world) {
    for (uint64_t trial = 1; trial <= 3; ++trial) check_ring_rotation(world, trial, "trial " + std::to_string(trial));
  });
}

TEST_P(GlooCommOnP, SplitOrdersMembersByKeyThenByRank) {
  run_on_every_rank([](Comm& world) {
    const int P = world.size();
    const int me = world.rank();
    // Two colors (even, odd ranks), keys descending: members come in reverse rank order.
    std::unique_ptr<Comm> parity = world.split(me % 2, -me);
    std::vector<int> expected;
    for (int r = P - 1; r >= 0; --r)
      if (r % 2 == me % 2) expected.push_back(r);
    check_members(*parity, me, expected, "parity group");
    // Equal keys keep the parent's rank order.
    std::unique_ptr<Comm> everyone = world.split(7, 0);
    expected.clear();
    for (int r = 0; r < P; ++r) expected.push_back(r);
    check_members(*everyone, me, expected, "one color, equal keys");
    check_alltoallv(*parity, 5, random_pair_bytes(5, parity->size(), 3000), "parity group");
  });
}

TEST_P(GlooCommOnP, UlyssesAndRingGroupsOfEveryMeshAndOrderHaveTheRightMembersAndMoveBytes) {
  run_on_every_rank([](Comm& world) {
    for (auto [U64, R64] : testing::factorizations(world.size())) {
      const int U = int(U64), R = int(R64);
      for (RankOrder order : {RankOrder::ulysses_inner, RankOrder::ring_inner}) {
        const std::string mesh = "U=" + std::to_string(U) + " R=" + std::to_string(R) + " " +
                                 std::string(to_string(order));
        const MeshGroups groups = mesh_groups(world.rank(), U, R, order);
        std::unique_ptr<Comm> ulysses = split_into(world, groups.ulysses);
        std::unique_ptr<Comm> ring = split_into(world, groups.ring);
        check_members(*ulysses, world.rank(), groups.ulysses, mesh + " ulysses group");
        check_members(*ring, world.rank(), groups.ring, mesh + " ring group");
        // Salts differ per group, so a block crossing into another group is caught.
        const uint64_t salt = uint64_t(U * 1000 + int(order) * 100);
        check_alltoallv(*ulysses, salt + groups.ulysses.front(), random_pair_bytes(salt, U, 2048),
                        mesh + " ulysses group");
        check_alltoallv(*ring, salt + 50 + groups.ring.front(), random_pair_bytes(salt + 1, R, 2048),
                        mesh + " ring group");
        // The Ulysses group's all-to-all runs while ring transfers are in flight.
        check_ring_rotation(*ring, salt + 77 + groups.ring.front(), mesh, [&] {
          check_alltoallv(*ulysses, salt + 88 + groups.ulysses.front(), random_pair_bytes(salt + 2, U, 1024),
                          mesh + " ulysses group during ring step");
        });
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, GlooCommOnP, ::testing::Range(2, 9),
                         [](const ::testing::TestParamInfo<int>& world) { return "P" + std::to_string(world.param); });

// The message a rank expects from a failure, checked inside the rank.
void check_error_says(const Error& e, const std::vector<std::string>& parts) {
  const std::string message = e.what();
  for (const std::string& part : parts)
    check(message.find(part) != std::string::npos, "error '" + message + "' does not say '" + part + "'");
}

TEST(GlooCommFailure, RankThatNeverArrivesFailsTheOthersWithErrorWithinTheTimeout) {
  constexpr int kWorld = 4;
  constexpr int kAbsent = 2;
  backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
  const testing::RanksOutcome outcome = run_ranks(
      kWorld,
      [&](int rank) {
        if (rank == kAbsent) return 0;  // exits without ever joining
        const auto start = Clock::now();
        try {
          connect(dir.spec(), rank, kWorld, kShortTimeout)->barrier();
        } catch (const Error& e) {
          check_error_says(e, {"rendezvous", "rank " + std::to_string(rank) + " of 4", "timed out after 2000 ms"});
          check(ms_since(start) < 10'000, "failed only after " + std::to_string(ms_since(start)) + " ms");
          return 0;
        }
        throw RankCheckFailed("rendezvous completed without rank 2");
      },
      kRunTimeout);
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
  EXPECT_LT(outcome.elapsed, 15s) << "the default 30 s timeout was used instead of the configured 2 s";
}

TEST(GlooCommFailure, RankThatDiesAfterRendezvousFailsTheOthersWithErrorWithinTheTimeout) {
  constexpr int kWorld = 3;
  backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
  const testing::RanksOutcome outcome = run_ranks(
      kWorld,
      [&](int rank) {
        std::unique_ptr<GlooComm> world = connect(dir.spec(), rank, kWorld, kShortTimeout);
        world->barrier();
        if (rank == kWorld - 1) return 0;  // dies: its sockets close
        const auto start = Clock::now();
        try {
          std::vector<int64_t> bytes(kWorld, 1000);
          std::vector<uint8_t> send(3000), recv(3000);
          world->alltoallv(send.data(), bytes, recv.data(), bytes);
        } catch (const Error& e) {
          check_error_says(e, {"alltoallv", "rank " + std::to_string(rank) + " of 3"});
          check(ms_since(start) < 10'000, "failed only after " + std::to_string(ms_since(start)) + " ms");
          return 0;
        }
        throw RankCheckFailed("alltoallv completed although rank 2 died");
      },
      kRunTimeout);
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
  EXPECT_LT(outcome.elapsed, 15s);
}

// Gloo's device thread writes to peers with plain write(): a peer that dies mid-message must
// give this rank an EPIPE to report, not SIGPIPE's kill (it flaked 2 in 40 runs of the test
// above; scripts/flake_loop.sh runs that one 200 times). A write to a closed socket stands in
// for the race: it raises SIGPIPE every time unless creating a comm set SIGPIPE to ignored.
TEST(GlooCommFailure, ARankWritingToAClosedPeerGetsEpipeInsteadOfDyingOfSigpipe) {
  backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
  const testing::RanksOutcome outcome = run_ranks(
      1,
      [&](int rank) {
        signal(SIGPIPE, SIG_DFL);  // what a fresh process has
        std::unique_ptr<GlooComm> world = connect(dir.spec(), rank, 1, kShortTimeout);
        int pair[2];
        check(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0, "socketpair failed");
        ::close(pair[1]);
        const char byte = 1;
        const ssize_t n = ::write(pair[0], &byte, 1);
        check(n < 0 && errno == EPIPE, "the write to a closed peer did not fail with EPIPE");
        ::close(pair[0]);
        return 0;
      },
      kRunTimeout);
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(GlooCommFailure, ASigpipeHandlerTheProgramInstalledIsKept) {
  backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
  const testing::RanksOutcome outcome = run_ranks(
      1,
      [&](int rank) {
        static volatile sig_atomic_t seen = 0;
        signal(SIGPIPE, [](int) { seen = 1; });
        std::unique_ptr<GlooComm> world = connect(dir.spec(), rank, 1, kShortTimeout);
        raise(SIGPIPE);
        check(seen == 1, "creating a comm replaced the program's SIGPIPE handler");
        return 0;
      },
      kRunTimeout);
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(GlooCommFailure, MisuseThrowsErrorNamingTheBadArgument) {
  backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
  const testing::RanksOutcome outcome = run_ranks(
      2,
      [&](int rank) {
        std::unique_ptr<GlooComm> world = connect(dir.spec(), rank, 2);
        const std::vector<int64_t> three = {1, 1, 1};
        uint8_t buf[4] = {};
        auto expect_error = [](const std::function<void()>& misuse, const std::string& says) {
          try {
            misuse();
          } catch (const Error& e) {
            check_error_says(e, {says});
            return;
          }
          throw RankCheckFailed("no Error for: " + says);
        };
        expect_error([&] { world->alltoallv(buf, three, buf, three); }, "send_bytes has 3 entries");
        expect_error([&] { world->isend(buf, 1, rank, 0); }, "the peer must be another member");
        expect_error([&] { world->irecv(buf, 1, 1 - rank, -3); }, "tag must not be negative");
        expect_error([&] { world->allgatherv(buf, 2, buf, std::vector<int64_t>{1, 1}); }, "send_bytes = 2");
        world->barrier();  // misuse is caught before anything moves: the comm still works
        return 0;
      },
      kRunTimeout);
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(GlooCommFailure, CreateWithBadRendezvousSpecThrowsErrorNamingIt) {
  // Inside a rank: create() must never start a TCP device thread in this forking process.
  const testing::RanksOutcome outcome = run_ranks(
      1,
      [](int) {
        for (const char* spec : {"tcp://127.0.0.1:29500", "/tmp/rendezvous", "file://relative/dir"}) {
          try {
            connect(spec, 0, 1);
          } catch (const Error& e) {
            check_error_says(e, {spec, "file:///", "redis://host:port"});
            continue;
          }
          throw RankCheckFailed(std::string("no Error for spec ") + spec);
        }
        return 0;
      },
      kRunTimeout);
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(Rendezvous, ParsesFileAndRedisSpecs) {
  const backends::RendezvousSpec file = backends::parse_rendezvous("file:///tmp/run1");
  EXPECT_EQ(file.kind, backends::RendezvousSpec::Kind::file);
  EXPECT_EQ(file.directory, "/tmp/run1");
  const backends::RendezvousSpec redis = backends::parse_rendezvous("redis://10.0.0.5:6380");
  EXPECT_EQ(redis.kind, backends::RendezvousSpec::Kind::redis);
  EXPECT_EQ(redis.host, "10.0.0.5");
  EXPECT_EQ(redis.port, 6380);
  EXPECT_EQ(backends::parse_rendezvous("redis://head-node").port, 6379);
  EXPECT_EQ(backends::to_string(redis), "redis://10.0.0.5:6380");
}

TEST(Rendezvous, BadSpecsThrowErrorNamingTheSpecAndTheAcceptedForms) {
  for (const char* spec : {"", "file://", "file://tmp/x", "redis://", "redis://:6379", "redis://h:port",
                           "redis://h:70000", "http://h:80"}) {
    try {
      backends::parse_rendezvous(spec);
      ADD_FAILURE() << "no Error for '" << spec << "'";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("'" + std::string(spec) + "'"), std::string::npos) << message;
      EXPECT_NE(message.find("file:///absolute/dir"), std::string::npos) << message;
      EXPECT_NE(message.find("redis://host:port"), std::string::npos) << message;
    }
  }
}

TEST(Rendezvous, MissingDirectoryThrowsErrorNamingIt) {
  try {
    backends::open_store(backends::parse_rendezvous("file:///nonexistent/cptune-rendezvous"), 1s);
    ADD_FAILURE() << "no Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/cptune-rendezvous"), std::string::npos) << e.what();
  }
}

TEST(Rendezvous, TempDirectoryIsPrivateFreshAndRemovedAfterwards) {
  std::string path;
  {
    backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
    path = dir.path();
    struct stat st {};
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    // Fresh: nothing in it but the record of the process that made it (pid, start time), which
    // lets a later run remove it if this one is killed.
    std::vector<std::string> entries;
    for (const auto& e : std::filesystem::directory_iterator(path)) entries.push_back(e.path().filename().string());
    EXPECT_EQ(entries, std::vector<std::string>{"owner"});
    EXPECT_EQ(dir.spec(), "file://" + path);
    std::ofstream(path + "/key") << "left by a run";
    backends::TempRendezvousDir moved = std::move(dir);
    EXPECT_EQ(moved.path(), path);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

// Clears every launcher variable for one test and restores them afterwards.
class LaunchEnvTest : public ::testing::Test {
 protected:
  static constexpr const char* kNames[] = {"RANK",          "WORLD_SIZE",
                                           "LOCAL_RANK",    "OMPI_COMM_WORLD_RANK",
                                           "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                                           "SLURM_PROCID",  "SLURM_NTASKS",
                                           "SLURM_LOCALID"};
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
  static void set(const char* name, const char* value) { setenv(name, value, 1); }
  static std::string error_of_launch_env() {
    try {
      backends::launch_env_from_environment();
    } catch (const Error& e) {
      return e.what();
    }
    return "no Error";
  }

 private:
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

TEST_F(LaunchEnvTest, NoLauncherVariablesMeansNoLaunchEnv) {
  EXPECT_FALSE(backends::launch_env_from_environment().has_value());
}

TEST_F(LaunchEnvTest, ReadsEachLaunchersVariables) {
  set("SLURM_PROCID", "5");
  set("SLURM_NTASKS", "8");
  set("SLURM_LOCALID", "1");
  std::optional<backends::LaunchEnv> env = backends::launch_env_from_environment();
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "srun");
  EXPECT_EQ(env->rank, 5);
  EXPECT_EQ(env->world, 8);
  EXPECT_EQ(env->local_rank, 1);

  set("OMPI_COMM_WORLD_RANK", "3");
  set("OMPI_COMM_WORLD_SIZE", "4");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "3");
  env = backends::launch_env_from_environment();
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "mpirun");
  EXPECT_EQ(env->rank, 3);

  // torchrun inside an srun allocation: the inner launcher's variables win.
  set("RANK", "2");
  set("WORLD_SIZE", "16");
  set("LOCAL_RANK", "2");
  env = backends::launch_env_from_environment();
  ASSERT_TRUE(env);
  EXPECT_EQ(env->launcher, "torchrun");
  EXPECT_EQ(env->rank, 2);
  EXPECT_EQ(env->world, 16);
  EXPECT_EQ(env->local_rank, 2);
}

TEST_F(LaunchEnvTest, IncompleteOrBadValuesThrowErrorNamingThem) {
  set("RANK", "1");
  EXPECT_NE(error_of_launch_env().find("WORLD_SIZE is not set"), std::string::npos) << error_of_launch_env();
  set("WORLD_SIZE", "four");
  set("LOCAL_RANK", "0");
  EXPECT_NE(error_of_launch_env().find("WORLD_SIZE='four' is not an integer"), std::string::npos)
      << error_of_launch_env();
  set("WORLD_SIZE", "1");
  EXPECT_NE(error_of_launch_env().find("RANK=1, WORLD_SIZE=1"), std::string::npos) << error_of_launch_env();
  set("WORLD_SIZE", "2");
  set("LOCAL_RANK", "-1");
  EXPECT_NE(error_of_launch_env().find("local rank"), std::string::npos) << error_of_launch_env();
}

// A private redis-server on a free loopback port, stopped when this goes.
class RedisServer {
 public:
  explicit RedisServer(const std::string& binary) {
    for (int attempt = 0; attempt < 3 && pid_ < 0; ++attempt) try_start(binary);
    if (pid_ < 0) throw std::runtime_error("redis-server did not start; its log:\n" + log());
  }
  ~RedisServer() {
    kill(pid_, SIGTERM);
    for (auto start = Clock::now(); Clock::now() - start < 2s; std::this_thread::sleep_for(10ms))
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;
  int port() const { return port_; }

  static std::optional<std::string> find_binary() {
    std::string dirs = std::getenv("PATH") ? std::getenv("PATH") : "";
    std::istringstream path(dirs + ":/usr/bin:/usr/sbin");
    for (std::string dir; std::getline(path, dir, ':');)
      if (!dir.empty() && access((dir + "/redis-server").c_str(), X_OK) == 0) return dir + "/redis-server";
    return std::nullopt;
  }

 private:
  static int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    return ntohs(addr.sin_port);
  }

  static bool accepts_connections(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    close(fd);
    return ok;
  }

  // The port may be taken between free_port() and redis binding it: then the server exits
  // and the caller tries another.
  void try_start(const std::string& binary) {
    const int port = free_port();
    const std::string port_text = std::to_string(port);
    const std::string log_path = scratch_.path() + "/redis.log";
    const pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
      execl(binary.c_str(), "redis-server", "--port", port_text.c_str(), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", static_cast<char*>(nullptr));
      _exit(127);
    }
    for (auto start = Clock::now(); Clock::now() - start < 10s; std::this_thread::sleep_for(20ms)) {
      if (waitpid(pid, nullptr, WNOHANG) == pid) return;  // exited: port taken or bad options
      if (accepts_connections(port)) {
        pid_ = pid;
        port_ = port;
        return;
      }
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }

  std::string log() const {
    std::ifstream in(scratch_.path() + "/redis.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  backends::TempRendezvousDir scratch_ = testing::fresh_file_rendezvous();  // holds the log
  pid_t pid_ = -1;
  int port_ = 0;
};

TEST(GlooCommRedis, ThreeRanksRendezvousThroughRedisAndAlltoallvEveryByte) {
  const std::optional<std::string> binary = RedisServer::find_binary();
  ASSERT_TRUE(binary) << "redis-server is not installed (looked in PATH, /usr/bin, /usr/sbin); the Redis "
                         "rendezvous test needs it: run scripts/install-deps.sh (Debian package redis-server)";
  RedisServer server(*binary);
  const std::string spec = "redis://127.0.0.1:" + std::to_string(server.port());
  const testing::RanksOutcome outcome = run_ranks(
      3,
      [&](int rank) {
        std::unique_ptr<GlooComm> world = connect(spec, rank, 3);
        for (uint64_t trial = 1; trial <= 3; ++trial)
          check_alltoallv(*world, trial, random_pair_bytes(trial, 3, 4096), "redis trial " + std::to_string(trial));
        std::unique_ptr<Comm> pair = world->split(rank == 2 ? 1 : 0, 0);  // splits rendezvous through Redis too
        check_alltoallv(*pair, 9, random_pair_bytes(9, pair->size(), 1000), "redis split");
        return 0;
      },
      kRunTimeout);
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

}  // namespace
}  // namespace cptune
