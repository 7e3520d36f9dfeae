// The executor on GPUs: every strategy that lays out on the GPUs of this host runs end to end
// over NCCL with the CUDA kernel and verifies against the CPU reference (world 1 on one GPU:
// the whole executor with NCCL's self send/recv; every GPU when there are more). The CLI
// refuses --backend nccl with a clear error and exit code 2 where there is no GPU. GPU tests
// skip without a device; ranks are forked, and this process never touches CUDA itself.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "backends/comm/comm.h"
#include "backends/exec/executor.h"
#include "backends/comm/launcher.h"
#include "core/error.h"
#include "core/layout.h"
#include "tests/faulty_comm.h"
#include "tests/layout_sweep.h"

#if CPTUNE_HAVE_CUDA
#include "backends/comm/cuda/nccl_comm.h"
#include "backends/comm/cuda/nccl_launch.h"
#include "backends/exec/cuda/cuda_device.h"
#include "backends/exec/device.h"
#endif

namespace cptune {
namespace {

struct Cli {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

Cli run_cli(const std::string& args) {
  const std::string command = std::string(CPTUNE_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {};
  Cli out;
  std::array<char, 4096> chunk{};
  while (fgets(chunk.data(), chunk.size(), pipe) != nullptr) out.output += chunk.data();
  const int status = pclose(pipe);
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

constexpr const char* kSmallRun = "run --world 1 --strategy uaa --seq 300 --heads 4 --head-dim 64 --iterations 1";

int gpu_count() {
#if CPTUNE_HAVE_CUDA
  static const int count = backends::probe_cuda_devices().count;
  return count;
#else
  return 0;
#endif
}

TEST(GpuExecutorCli, WithoutAGpuNcclIsRefusedWithExitCode2) {
  if (gpu_count() > 0) GTEST_SKIP() << "a CUDA device is present; this checks the refusal on machines without one";
  const Cli cli = run_cli(std::string(kSmallRun) + " --backend nccl --verify");
  EXPECT_EQ(cli.exit_code, 2) << cli.output;
#if CPTUNE_HAVE_CUDA
  EXPECT_NE(cli.output.find("no CUDA device"), std::string::npos) << cli.output;
#else
  EXPECT_NE(cli.output.find("built without CUDA"), std::string::npos) << cli.output;
#endif
}

TEST(GpuExecutorCli, UnknownBackendAndMetadataChannelAreRefused) {
  const Cli backend = run_cli(std::string(kSmallRun) + " --backend mpi");
  EXPECT_EQ(backend.exit_code, 2) << backend.output;
  EXPECT_NE(backend.output.find("gloo (CPU ranks) or nccl"), std::string::npos) << backend.output;
  const Cli metadata = run_cli(std::string(kSmallRun) + " --metadata gpu");
  EXPECT_EQ(metadata.exit_code, 2) << metadata.output;
  EXPECT_NE(metadata.output.find("choose one of cpu, device"), std::string::npos) << metadata.output;
}

TEST(GpuExecutorCli, DeviceMetadataChannelRunsOnGloo) {
  const Cli cli = run_cli("run --world 3 --strategy uaa --seq 300 --heads 5 --head-dim 16 --iterations 1 --verify "
                          "--metadata device");
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
  EXPECT_NE(cli.output.find("PASSED"), std::string::npos) << cli.output;
}

#if CPTUNE_HAVE_CUDA

#define REQUIRE_GPUS(n)                                                                                  \
  do {                                                                                                   \
    if (gpu_count() == 0) GTEST_SKIP() << "no CUDA device: " << backends::probe_cuda_devices().error;    \
    if (gpu_count() < (n)) GTEST_SKIP() << "needs " << (n) << " CUDA devices, this host shows " << gpu_count(); \
  } while (0)

TEST(GpuExecutorCli, RunsNcclWithVerifyOnOneGpu) {
  REQUIRE_GPUS(1);
  for (const char* metadata : {"cpu", "device"}) {
    const Cli cli = run_cli(std::string(kSmallRun) + " --backend nccl --verify --metadata " + metadata);
    EXPECT_EQ(cli.exit_code, 0) << cli.output;
    EXPECT_NE(cli.output.find("nccl"), std::string::npos) << cli.output;
    EXPECT_NE(cli.output.find("PASSED"), std::string::npos) << cli.output;
  }
}

AttentionShape shape_of(std::vector<int64_t> seqs, int64_t hq, int64_t hkv, Mask mask, int64_t d, int64_t dv,
                        DType dtype = DType::bf16, int64_t batch = 1) {
  return AttentionShape{batch, std::move(seqs), hq, hkv, d, dv, dtype, mask};
}

struct GpuShape {
  const char* name;
  AttentionShape shape;
};

std::vector<GpuShape> gpu_shapes() {
  return {
      {"GQA 32/8 causal, D 64", shape_of({1000}, 32, 8, {MaskKind::causal, 0}, 64, 64)},
      {"sliding window fp16, D 128", shape_of({777}, 4, 2, {MaskKind::sliding_window, 100}, 128, 128, DType::fp16)},
      {"packed batch of 2 samples, D 16 / Dv 8", shape_of({77, 150, 9}, 6, 2, {MaskKind::causal, 0}, 16, 8,
                                                          DType::bf16, 2)},
      {"25 heads full, D 96 / Dv 64", shape_of({257}, 25, 5, {MaskKind::full, 0}, 96, 64)},
  };
}

// Runs the layout on layout.world() local GPU ranks with --verify; 0 when every rank verified.
// With a kernel fault, rank 0's device drops the last key of its second K,V block (the timed
// iteration's first, after the warm-up's: the output verified is the last iteration's).
int run_verified(const Layout& layout, backends::ExecutorOptions options, std::string* log,
                 std::optional<testing::KernelFault> fault = std::nullopt) {
  options.verify = true;
  options.warmups = 1;
  options.iterations = 1;
  backends::RankLaunch launch;
  launch.world = static_cast<int>(layout.world());
  launch.timeout = std::chrono::seconds(60);
  std::ostringstream err;
  const int code = backends::run_nccl_ranks(launch, [&](backends::NcclComm& world) {
    std::unique_ptr<backends::Device> gpu = backends::make_cuda_device(world);
    if (fault) gpu = std::make_unique<testing::FaultyDevice>(std::move(gpu), *fault, world.rank() == 0 ? 1 : 1000);
    options.device = gpu.get();
    const backends::RunResult r = backends::execute(layout, world, options);
    if (!r.verified())
      std::fprintf(stderr, "rank %d: max_abs_err %.3e, worst error / tolerance %.3g\n", world.rank(), *r.max_abs_err,
                   r.worst_ratio);
    return r.verified() ? 0 : 1;
  }, err);
  *log = err.str();
  return code;
}

// Every strategy, U x R and head policy that lays out on `world` ranks, on every GPU shape, with
// both metadata channels for the strategies that gather lengths.
void expect_every_strategy_verifies(int64_t world) {
  int runs = 0;
  for (const GpuShape& gpu : gpu_shapes()) {
    testing::for_each_spec(gpu.shape, world, world, [&](const LayoutSpec& spec) {
      if (spec.choice.order == RankOrder::ring_inner && !(spec.choice.ulysses > 1 && spec.choice.ring > 1)) return;
      auto layout = testing::try_build(spec);
      if (!layout) return;
      for (MetadataChannel channel : {MetadataChannel::cpu, MetadataChannel::device}) {
        const bool gathers = spec.choice.strategy == Strategy::uaa || spec.choice.strategy == Strategy::hybrid_uaa;
        if (channel == MetadataChannel::device && !gathers) continue;
        backends::ExecutorOptions options;
        options.metadata = channel;
        std::string log;
        ++runs;
        EXPECT_EQ(run_verified(*layout, options, &log), 0)
            << gpu.name << ": " << to_string(spec.choice.strategy) << " " << to_string(spec.choice.head_policy) << " U="
            << layout->ulysses() << " R=" << layout->ring() << " metadata " << static_cast<int>(channel) << "\n"
            << log;
      }
    });
  }
  EXPECT_GT(runs, 20);
}

TEST(GpuExecutor, EveryStrategyVerifiesAtWorldOne) {
  REQUIRE_GPUS(1);
  expect_every_strategy_verifies(1);
}

TEST(GpuExecutor, EveryStrategyVerifiesOnEveryGpu) {
  REQUIRE_GPUS(2);
  expect_every_strategy_verifies(std::min(gpu_count(), 4));
}

TEST(GpuExecutor, AKernelMissingAKeyFailsVerification) {
  REQUIRE_GPUS(1);
  const Layout layout = Layout::build({shape_of({64}, 8, 8, {MaskKind::full, 0}, 64, 64), Cluster{1, 1}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
  std::string log;
  EXPECT_EQ(run_verified(layout, {}, &log), 0) << log;
  EXPECT_NE(run_verified(layout, {}, &log, testing::KernelFault::drop_last_key), 0);
  EXPECT_NE(log.find("rank 0 failed"), std::string::npos) << log;
}

TEST(GpuExecutor, ShapesTheKernelCannotRunAreAClearError) {
  REQUIRE_GPUS(1);
  for (const AttentionShape& shape : {shape_of({300}, 4, 4, {MaskKind::full, 0}, 64, 64, DType::fp32),
                                      shape_of({300}, 4, 4, {MaskKind::full, 0}, 12, 12)}) {
    const Layout layout = Layout::build({shape, Cluster{1, 1}, LayoutChoice{Strategy::uaa, 0, 0, RankOrder::ulysses_inner, HeadPolicy::balanced}});
    std::string log;
    EXPECT_EQ(run_verified(layout, {}, &log), 2) << log;  // cptune::Error in the rank: exit code 2
    EXPECT_NE(log.find("rank 0 failed with exit code 2"), std::string::npos) << log;
  }
}

#else

TEST(GpuExecutor, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA and NCCL: the GPU executor is not compiled"; }

#endif

}  // namespace
}  // namespace cptune
