// Properties of NcclComm. Without a GPU only the refusals run: asking for NCCL ranks is a clear
// cptune::Error, never a crash. With one GPU every operation runs at world 1 (each block goes to
// the rank itself through NCCL's self send/recv); with 2+ GPUs the same on several ranks. Every
// rank is a forked process and this test process never touches CUDA itself: a child forked
// after its parent initialised CUDA cannot use it.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backends/comm/gloo_comm.h"
#include "core/error.h"
#include "tests/multiprocess.h"

#if CPTUNE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backends/comm/cuda/nccl_comm.h"
#include "backends/comm/cuda/nccl_launch.h"
#endif

namespace cptune {
namespace {

#if CPTUNE_HAVE_CUDA

using backends::NcclComm;
using testing::check;
using namespace std::chrono_literals;

const backends::CudaDevices& devices() {
  static const backends::CudaDevices probed = backends::probe_cuda_devices();
  return probed;
}

#define REQUIRE_GPUS(n)                                                                                   \
  do {                                                                                                    \
    if (devices().count == 0) GTEST_SKIP() << "no CUDA device: " << devices().error;                      \
    if (devices().count < (n))                                                                            \
      GTEST_SKIP() << "needs " << (n) << " CUDA devices, this host shows " << devices().count;            \
  } while (0)

// Runs body on `world` forked ranks, rank r on CUDA device r, each with an NcclComm over a Gloo
// comm of a fresh FileStore. Returns the outcome for the parent to assert on.
testing::RanksOutcome run_nccl(int world, const std::function<void(NcclComm&)>& body) {
  const backends::TempRendezvousDir dir = testing::fresh_file_rendezvous();
  return testing::run_ranks(world, [&](int rank) {
    backends::GlooCommOptions gloo;
    gloo.rank = rank;
    gloo.size = world;
    gloo.rendezvous = dir.spec();
    gloo.timeout = 30s;
    const auto host = backends::GlooComm::create(gloo);
    const auto comm = NcclComm::create(*host, {rank, 30s});
    body(*comm);
    return 0;
  }, 120s);
}

// Byte i of the block member src sends to member dst.
uint8_t payload(int src, int dst, int64_t i) { return static_cast<uint8_t>(src * 131 + dst * 17 + i * 7 + (i >> 8)); }

// Device memory with host-side fill and read-back (after the comm's stream has drained).
class GpuBytes {
 public:
  explicit GpuBytes(int64_t bytes) : bytes_(bytes) {
    check(cudaMalloc(&data_, static_cast<size_t>(std::max<int64_t>(bytes, 1))) == cudaSuccess, "cudaMalloc");
    check(cudaMemset(data_, 0xEE, static_cast<size_t>(std::max<int64_t>(bytes, 1))) == cudaSuccess, "cudaMemset");
  }
  ~GpuBytes() { cudaFree(data_); }
  GpuBytes(const GpuBytes&) = delete;
  GpuBytes& operator=(const GpuBytes&) = delete;
  std::byte* data() const { return static_cast<std::byte*>(data_); }
  void write(const std::vector<uint8_t>& host, int64_t offset = 0) {
    check(cudaMemcpy(data() + offset, host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess, "upload");
  }
  std::vector<uint8_t> read(NcclComm& comm) const {
    comm.synchronize();
    std::vector<uint8_t> host(static_cast<size_t>(bytes_));
    check(cudaMemcpy(host.data(), data_, host.size(), cudaMemcpyDeviceToHost) == cudaSuccess, "download");
    return host;
  }

 private:
  void* data_ = nullptr;
  int64_t bytes_;
};

std::vector<uint8_t> block(int src, int dst, int64_t bytes) {
  std::vector<uint8_t> out(static_cast<size_t>(bytes));
  for (int64_t i = 0; i < bytes; ++i) out[static_cast<size_t>(i)] = payload(src, dst, i);
  return out;
}

// Uneven all-to-all-v with zero blocks: counts[src][dst] bytes, packed in member order.
void check_alltoallv(NcclComm& comm, const std::function<int64_t(int, int)>& count) {
  const int me = comm.rank(), n = comm.size();
  std::vector<int64_t> send_bytes, recv_bytes;
  for (int p = 0; p < n; ++p) {
    send_bytes.push_back(count(me, p));
    recv_bytes.push_back(count(p, me));
  }
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < n; ++p) {
    send_total += send_bytes[p];
    recv_total += recv_bytes[p];
  }
  GpuBytes send(send_total), recv(recv_total);
  int64_t offset = 0;
  for (int p = 0; p < n; ++p) {
    send.write(block(me, p, send_bytes[p]), offset);
    offset += send_bytes[p];
  }
  comm.alltoallv(send.data(), send_bytes, recv.data(), recv_bytes);
  const std::vector<uint8_t> got = recv.read(comm);
  offset = 0;
  for (int p = 0; p < n; ++p) {
    const std::vector<uint8_t> want = block(p, me, recv_bytes[p]);
    check(std::equal(want.begin(), want.end(), got.begin() + offset),
          "alltoallv: rank " + std::to_string(me) + " got a wrong block from " + std::to_string(p));
    offset += recv_bytes[p];
  }
}

void check_allgatherv(NcclComm& comm, const std::function<int64_t(int)>& count) {
  const int me = comm.rank(), n = comm.size();
  std::vector<int64_t> recv_bytes;
  int64_t total = 0;
  for (int p = 0; p < n; ++p) total += recv_bytes.emplace_back(count(p));
  GpuBytes send(count(me)), recv(total);
  send.write(block(me, 0, count(me)));
  comm.allgatherv(send.data(), count(me), recv.data(), recv_bytes);
  const std::vector<uint8_t> got = recv.read(comm);
  int64_t offset = 0;
  for (int p = 0; p < n; ++p) {
    const std::vector<uint8_t> want = block(p, 0, recv_bytes[p]);
    check(std::equal(want.begin(), want.end(), got.begin() + offset),
          "allgatherv: rank " + std::to_string(me) + " got a wrong block of " + std::to_string(p));
    offset += recv_bytes[p];
  }
}

// The executor's ring: each step sends the current block on and receives the next, with the
// requests waited after other work was enqueued on the stream.
void check_ring(NcclComm& comm, int64_t bytes) {
  const int me = comm.rank(), n = comm.size(), next = (me + 1) % n, prev = (me + n - 1) % n;
  GpuBytes a(bytes), b(bytes), scratch(bytes);
  a.write(block(me, 0, bytes));
  std::byte *current = a.data(), *incoming = b.data();
  for (int step = 0; step + 1 < std::max(n, 2); ++step) {
    auto send = comm.isend(current, bytes, next, step);
    auto recv = comm.irecv(incoming, bytes, prev, step);
    check(cudaMemsetAsync(scratch.data(), step, static_cast<size_t>(bytes), comm.stream()) == cudaSuccess,
          "work on the stream between isend and wait");
    send->wait();
    recv->wait();
    std::swap(current, incoming);
  }
  comm.synchronize();
  std::vector<uint8_t> got(static_cast<size_t>(bytes));
  check(cudaMemcpy(got.data(), current, got.size(), cudaMemcpyDeviceToHost) == cudaSuccess, "download");
  const int origin = ((me - (std::max(n, 2) - 1)) % n + n) % n;  // the block came this many hops
  check(got == block(origin, 0, bytes), "ring: rank " + std::to_string(me) + " ended with a wrong block");
}

TEST(NcclComm, WorldOfOneMovesEveryByteToItself) {
  REQUIRE_GPUS(1);
  const auto outcome = run_nccl(1, [](NcclComm& comm) {
    check(comm.backend() == "nccl" && comm.rank() == 0 && comm.size() == 1, "identity");
    check_alltoallv(comm, [](int, int) { return int64_t{100003}; });
    check_alltoallv(comm, [](int, int) { return int64_t{0}; });
    check_allgatherv(comm, [](int) { return int64_t{4097}; });
    check_ring(comm, 1 << 20);
    comm.barrier();
    const int64_t mine = 42;
    int64_t all = 0;
    comm.allgather_host(&mine, sizeof mine, &all);
    check(all == 42, "allgather_host");
    auto part = comm.split(0, 0);
    check(part->size() == 1 && part->rank() == 0, "split of one");
    check_alltoallv(dynamic_cast<NcclComm&>(*part), [](int, int) { return int64_t{777}; });
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(NcclComm, MisuseIsAnErrorNamingTheRank) {
  REQUIRE_GPUS(1);
  const auto outcome = run_nccl(1, [](NcclComm& comm) {
    const std::vector<int64_t> two{1, 1}, one{1};
    GpuBytes buffer(16);
    try {
      comm.alltoallv(buffer.data(), two, buffer.data(), one);
    } catch (const Error& e) {
      check(std::string(e.what()).find("rank 0 of 1") != std::string::npos, e.what());
      return;
    }
    check(false, "a send_bytes of the wrong length was accepted");
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(NcclComm, UnevenAlltoallvWithZeroBlocksOnEveryGpu) {
  REQUIRE_GPUS(2);
  const int world = std::min(devices().count, 8);
  const auto outcome = run_nccl(world, [](NcclComm& comm) {
    check_alltoallv(comm, [](int src, int dst) { return int64_t{(src * 7 + dst * 3) % 5} * 1001; });
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(NcclComm, UnevenAllgathervAndRingOnEveryGpu) {
  REQUIRE_GPUS(2);
  const int world = std::min(devices().count, 8);
  const auto outcome = run_nccl(world, [](NcclComm& comm) {
    check_allgatherv(comm, [](int p) { return int64_t{p == 1 ? 0 : 1000 + 313 * p}; });
    check_allgatherv(comm, [](int) { return int64_t{65536}; });
    check_ring(comm, (1 << 20) + 3);
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(NcclComm, SplitGroupsFollowKeysLikeGloo) {
  REQUIRE_GPUS(2);
  const int world = std::min(devices().count, 8);
  const auto outcome = run_nccl(world, [](NcclComm& comm) {
    // Two groups by parity, ordered backwards by key.
    auto part = comm.split(comm.rank() % 2, -comm.rank());
    const int members = (comm.size() - comm.rank() % 2 + 1) / 2;
    check(part->size() == members, "split size");
    check(part->rank() == members - 1 - comm.rank() / 2, "split rank follows the key");
    check_alltoallv(dynamic_cast<NcclComm&>(*part), [](int src, int dst) { return int64_t{src * 100 + dst + 1}; });
  });
  EXPECT_TRUE(outcome.all_ok()) << outcome.describe();
}

TEST(NcclComm, TooManyLocalRanksIsAClearError) {
  REQUIRE_GPUS(1);
  try {
    backends::check_gpus_for(devices().count + 1, true);
    FAIL() << "more local ranks than GPUs were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("need one GPU each"), std::string::npos) << e.what();
  }
}

// What this machine (no GPU) shows: the refusal names the cause, in the parent and in a rank.
TEST(NcclComm, WithoutAGpuAskingForNcclIsAClearError) {
  if (devices().count > 0) GTEST_SKIP() << "a CUDA device is present; this checks the refusal on machines without one";
  try {
    backends::check_gpus_for(1, true);
    FAIL() << "NCCL ranks were allowed without a GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
  const auto outcome = run_nccl(1, [](NcclComm&) { check(false, "an NcclComm was created without a GPU"); });
  ASSERT_EQ(outcome.ranks.size(), 1u);
  EXPECT_EQ(outcome.ranks[0].exit_code, testing::kRankUserError) << outcome.describe();
}

#else

TEST(NcclComm, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA and NCCL: NcclComm is not compiled"; }

#endif

}  // namespace
}  // namespace cptune
