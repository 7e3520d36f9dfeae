#include "backends/comm/cuda/nccl_launch.h"

#include <cuda_runtime_api.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>

#include "backends/comm/comm.h"
#include "backends/comm/cuda/nccl_comm.h"
#include "backends/comm/rendezvous.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

// What the probing child reports through its pipe.
struct ProbeReport {
  int status = 0;  // cudaError_t
  int count = 0;
  char message[240] = {};
  char model[256] = {};
};

[[noreturn]] void probe_in_child(int fd) {
  ProbeReport report;
  const cudaError_t status = cudaGetDeviceCount(&report.count);
  report.status = static_cast<int>(status);
  if (status != cudaSuccess) {
    report.count = 0;  // cudaGetDeviceCount leaves it unset on failure
    std::snprintf(report.message, sizeof report.message, "%s (%s, error %d)", cudaGetErrorString(status),
                  cudaGetErrorName(status), static_cast<int>(status));
  }
  cudaDeviceProp prop{};
  if (report.count > 0 && cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
    std::snprintf(report.model, sizeof report.model, "%s", prop.name);
  const ssize_t written = write(fd, &report, sizeof report);
  _exit(written == static_cast<ssize_t>(sizeof report) ? 0 : 1);
}

}  // namespace

CudaDevices probe_cuda_devices() {
  int fds[2];
  if (pipe(fds) != 0) return {0, "", std::string("cannot probe for CUDA devices: pipe failed: ") + std::strerror(errno)};
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return {0, "", std::string("cannot probe for CUDA devices: fork failed: ") + std::strerror(errno)};
  }
  if (pid == 0) {
    close(fds[0]);
    probe_in_child(fds[1]);
  }
  close(fds[1]);
  ProbeReport report;
  ssize_t got = 0;
  do {
    got = read(fds[0], &report, sizeof report);
  } while (got < 0 && errno == EINTR);
  close(fds[0]);
  int wait_status = 0;
  waitpid(pid, &wait_status, 0);
  if (got != static_cast<ssize_t>(sizeof report))
    return {0, "", "the CUDA probe process died before it could count devices (a broken driver install?)"};
  if (report.status != 0) return {0, "", std::string("cudaGetDeviceCount failed: ") + report.message};
  return {report.count, report.model, report.count == 0 ? "cudaGetDeviceCount found 0 devices" : ""};
}

int check_gpus_for(int world, bool local) {
  const CudaDevices devices = probe_cuda_devices();
  if (devices.count == 0)
    throw Error("no CUDA device: " + devices.error +
                "; --backend nccl needs one GPU per rank (use --backend gloo on a machine without GPUs)");
  if (local && world > devices.count)
    throw Error("--world " + std::to_string(world) + " local ranks need one GPU each but this host shows " +
                std::to_string(devices.count) +
                " CUDA devices; use at most that many, or start ranks on several hosts with an outside launcher "
                "and --rendezvous");
  return devices.count;
}

int run_nccl_ranks(const RankLaunch& launch, const std::function<int(NcclComm&)>& body, std::ostream& err) {
  const bool local = launch.rendezvous.empty();
  const int devices = check_gpus_for(launch.world, local);
  return run_ranks(
      launch,
      [&](Comm& host) {
        int local_rank = host.rank();
        if (!local) {
          const std::optional<LaunchEnv> env = launch_env_from_environment();
          if (env) local_rank = env->local_rank;
        }
        NcclCommOptions options;
        options.device = devices == 1 ? 0 : local_rank;
        options.timeout = launch.timeout;
        const std::unique_ptr<NcclComm> world = NcclComm::create(host, options);
        return body(*world);
      },
      err);
}

}  // namespace cptune::backends
