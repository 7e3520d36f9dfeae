#include "backends/comm/launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
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

// The ranks' process group (0 until the first rank is forked), read by the signal handler.
volatile sig_atomic_t g_rank_group = 0;
volatile sig_atomic_t g_stop_signal = 0;

// SIGINT / SIGTERM to the parent stop its ranks: they run in their own process group (a
// terminal's Ctrl-C reaches only the parent), so the parent passes the signal on and then
// reaps them as usual. kill() is async-signal-safe.
void forward_to_ranks(int sig) {
  g_stop_signal = sig;
  if (g_rank_group > 0) kill(-pid_t(g_rank_group), sig);
}

// Ranks die with the parent, even with SIGKILL: PDEATHSIG covers a parent that dies after
// prctl, the getppid check one that died between fork and prctl. Then the signal dispositions
// and mask the parent set up for itself are undone.
void bind_to_parent(pid_t parent, const sigset_t& old_mask) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(1);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
  // A rank writes to its peers (Gloo, the store); a dead peer is an EPIPE to report, not a kill.
  signal(SIGPIPE, SIG_IGN);
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
}

// Installs forward_to_ranks for SIGINT and SIGTERM while the ranks run; restores the old ones.
class StopSignals {
 public:
  StopSignals() {
    struct sigaction forward {};
    forward.sa_handler = forward_to_ranks;
    sigemptyset(&forward.sa_mask);
    sigaction(SIGINT, &forward, &old_int_);
    sigaction(SIGTERM, &forward, &old_term_);
    sigaction(SIGHUP, &forward, &old_hup_);  // a closed terminal: stop, reap and clean up too
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGHUP, &old_hup_, nullptr);
    g_rank_group = 0;
    g_stop_signal = 0;
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {}, old_hup_ {};
};

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
  // SIGINT / SIGTERM stay blocked until every rank is in the group, so none escapes the forward.
  sigset_t stop_signals, old_mask;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  sigprocmask(SIG_BLOCK, &stop_signals, &old_mask);
  StopSignals forwarding;
  const pid_t parent = getpid();
  std::vector<Child> children(static_cast<size_t>(options.world));
  pid_t group = 0;
  for (int rank = 0; rank < options.world; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      const int fork_errno = errno;
      if (group > 0) kill(-group, SIGKILL);
      for (const Child& c : children)
        if (c.pid > 0) waitpid(c.pid, nullptr, 0);
      sigprocmask(SIG_SETMASK, &old_mask, nullptr);
      throw Error(std::string("cannot start local rank ") + std::to_string(rank) +
                  ": fork failed: " + std::strerror(fork_errno));
    }
    if (pid == 0) {
      setpgid(0, group);  // the first rank leads the group
      bind_to_parent(parent, old_mask);
      run_child(rank, body);
    }
    if (group == 0) group = pid;
    setpgid(pid, group);  // also here: whichever of parent and child runs first sets it
    children[static_cast<size_t>(rank)].pid = pid;
  }
  g_rank_group = group;
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);

  using clock = std::chrono::steady_clock;
  std::optional<clock::time_point> deadline, stop_deadline;
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
    // A rank that outlives a forwarded SIGINT / SIGTERM by a second (one that handles or
    // blocks it) is killed: stopping must not wait for a shape to finish.
    if (g_stop_signal != 0 && !stop_deadline) stop_deadline = clock::now() + std::chrono::seconds(1);
    if (stop_deadline && clock::now() > *stop_deadline) kill(-group, SIGKILL);
    if (!reaped) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  const int stop_signal = g_stop_signal;
  if (stop_signal != 0) {
    // Stopped from outside: every rank got the signal; report that once, not per rank. Any
    // rank left (the loop may have ended on the failure grace first) is killed, not waited for.
    if (std::any_of(children.begin(), children.end(), [](const Child& c) { return !c.status; })) kill(-group, SIGKILL);
    for (Child& c : children)
      if (!c.status) waitpid(c.pid, nullptr, 0);
    err << "stopped by signal " << stop_signal << " (" << strsignal(stop_signal) << "); the ranks were stopped too\n";
    return 128 + stop_signal;
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

std::string local_rank_address(int rank) {
  return "127.1." + std::to_string(rank / 250) + "." + std::to_string(rank % 250 + 1);
}

int max_local_world() {
  rlimit files{};
  const int by_files = getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY
                           ? int(std::min<rlim_t>(files.rlim_cur, 1 << 20)) - kFilesPerRankBesidesPeers
                           : kMaxLocalWorld;
  return std::max(1, std::min(kMaxLocalWorld, by_files));
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
  if (launch.world > max_local_world())
    throw Error("--world " + std::to_string(launch.world) + " is more local ranks than this host runs: at most " +
                std::to_string(max_local_world()) + (max_local_world() < kMaxLocalWorld ? " with ulimit -n of this shell" : "") +
                " (each rank holds a socket per peer); start ranks on several hosts with torchrun, srun or mpirun");
  // Each rank's Gloo device on its own loopback address: Gloo's TCP pairs each bind a listening
  // port of their own, so P ranks on 127.0.0.1 alone need P(P-1) ephemeral ports at once
  // (28232 in Linux's default range: --world 256 failed with "Address already in use").
  const bool own_addresses = !std::getenv("CPTUNE_GLOO_IFACE") && !std::getenv("CPTUNE_GLOO_HOSTNAME");
  TempRendezvousDir dir;
  LocalLaunchOptions local;
  local.world = launch.world;
  local.grace = launch.timeout + std::chrono::seconds(5);
  return launch_local(
      local,
      [&](int rank) {
        const std::string hostname = own_addresses ? local_rank_address(rank) : "";
        auto comm = GlooComm::create({rank, launch.world, dir.spec(), launch.prefix, launch.timeout, hostname, {}});
        return body(*comm);
      },
      err);
}

}  // namespace cptune::backends
