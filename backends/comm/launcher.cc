#include "backends/comm/launcher.h"

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <ostream>
#include <thread>
#include <vector>

#include "backends/comm/gloo_comm.h"
#include "backends/comm/rendezvous.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

[[noreturn]] void run_child(int rank, const std::function<int(int)>& body) {
  int code = 1;
  try {
    code = body(rank);
  } catch (const Error& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    code = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: internal error: %s\n", rank, e.what());
    code = 1;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(code);
}

struct Child {
  pid_t pid = -1;
  std::optional<int> status;  // waitpid status once reaped
};

}  // namespace

int launch_local(const LocalLaunchOptions& options, const std::function<int(int)>& body, std::ostream& err) {
  if (options.world < 1) throw Error("world " + std::to_string(options.world) + " must be at least 1");
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<Child> children(static_cast<size_t>(options.world));
  for (int rank = 0; rank < options.world; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      for (const Child& c : children)
        if (c.pid > 0) kill(c.pid, SIGKILL);
      throw Error(std::string("cannot start local rank ") + std::to_string(rank) + ": fork failed: " + std::strerror(errno));
    }
    if (pid == 0) run_child(rank, body);
    children[static_cast<size_t>(rank)].pid = pid;
  }

  using clock = std::chrono::steady_clock;
  std::optional<clock::time_point> deadline;
  int running = options.world;
  while (running > 0) {
    bool reaped = false;
    for (Child& c : children) {
      if (c.status) continue;
      int status = 0;
      if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
        c.status = status;
        --running;
        reaped = true;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && !deadline) deadline = clock::now() + options.grace;
      }
    }
    if (deadline && clock::now() > *deadline) break;
    if (!reaped) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  int result = 0;
  for (size_t rank = 0; rank < children.size(); ++rank) {
    Child& c = children[rank];
    if (!c.status) {
      kill(c.pid, SIGKILL);
      waitpid(c.pid, nullptr, 0);
      err << "rank " << rank << " was still running " << options.grace.count()
          << " ms after another rank failed; killed it\n";
      result = result == 2 ? 2 : 1;
      continue;
    }
    const int status = *c.status;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    if (WIFEXITED(status)) {
      err << "rank " << rank << " failed with exit code " << WEXITSTATUS(status) << "\n";
      if (WEXITSTATUS(status) == 2) result = 2;
    } else if (WIFSIGNALED(status)) {
      err << "rank " << rank << " was killed by signal " << WTERMSIG(status) << " (" << strsignal(WTERMSIG(status))
          << ")\n";
    }
    if (result == 0) result = 1;
  }
  return result;
}

int run_ranks(const RankLaunch& launch, const std::function<int(Comm&)>& body, std::ostream& err) {
  if (!launch.rendezvous.empty()) {
    const std::optional<LaunchEnv> env = launch_env_from_environment();
    if (!env)
      throw Error("--rendezvous " + launch.rendezvous +
                  " is for ranks started by an outside launcher, but none of RANK/WORLD_SIZE (torchrun), "
                  "OMPI_COMM_WORLD_RANK/_SIZE (mpirun) or SLURM_PROCID/SLURM_NTASKS (srun) is set");
    if (env->world != launch.world)
      throw Error("--world " + std::to_string(launch.world) + " disagrees with the launcher's world size " +
                  std::to_string(env->world) + " (" + env->launcher + ")");
    auto comm = GlooComm::create({env->rank, env->world, launch.rendezvous, launch.prefix, launch.timeout, {}, {}});
    return body(*comm);
  }
  TempRendezvousDir dir;
  LocalLaunchOptions local;
  local.world = launch.world;
  local.grace = launch.timeout + std::chrono::seconds(5);
  return launch_local(
      local,
      [&](int rank) {
        auto comm = GlooComm::create({rank, launch.world, dir.spec(), launch.prefix, launch.timeout, {}, {}});
        return body(*comm);
      },
      err);
}

}  // namespace cptune::backends
