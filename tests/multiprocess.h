#pragma once
// Runs a test body on `world` forked ranks and reports how each ended. A rank reports through
// its exit code and writes what went wrong to stderr; the parent asserts with GoogleTest. Never
// use GoogleTest assertions inside a rank: the parent would not see them.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "backends/comm/rendezvous.h"
#include "core/error.h"

namespace cptune::testing {

// Exit codes of a rank whose body threw (the body's own return value otherwise).
inline constexpr int kRankFailed = 1;     // a RankCheckFailed or any other exception escaped
inline constexpr int kRankUserError = 2;  // a cptune::Error escaped (the CLI's code for it)

// Thrown by check() inside a rank; run_ranks prints it and the rank exits kRankFailed.
class RankCheckFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The expectation of a rank body. `what` is only built by the caller, so keep it cheap or
// guard the call with an if.
inline void check(bool condition, const std::string& what) {
  if (!condition) throw RankCheckFailed(what);
}

struct RankOutcome {
  int rank = 0;
  int exit_code = -1;  // when the rank exited
  int signal = 0;      // the signal that ended it; 0 when it exited
  bool killed_on_timeout = false;

  bool ok() const { return !killed_on_timeout && signal == 0 && exit_code == 0; }
  std::string describe() const {
    const std::string who = "rank " + std::to_string(rank);
    if (killed_on_timeout) return who + ": killed, still running at the timeout";
    if (signal != 0) return who + ": killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
    return who + ": exit " + std::to_string(exit_code);
  }
};

struct RanksOutcome {
  std::vector<RankOutcome> ranks;
  std::chrono::milliseconds elapsed{0};

  bool all_ok() const {
    for (const RankOutcome& r : ranks)
      if (!r.ok()) return false;
    return true;
  }
  std::string describe() const {
    std::string out = std::to_string(ranks.size()) + " ranks in " + std::to_string(elapsed.count()) + " ms:";
    for (const RankOutcome& r : ranks) out += "\n  " + r.describe();
    return out + "\n(each rank's messages are on stderr above)";
  }
};

namespace detail {

[[noreturn]] inline void run_rank(int rank, const std::function<int(int rank)>& body) {
  // A rank must not outlive a parent that died or was killed by ctest's timeout.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  int code = kRankFailed;
  try {
    code = body(rank);
  } catch (const RankCheckFailed& e) {
    std::fprintf(stderr, "rank %d: check failed: %s\n", rank, e.what());
  } catch (const Error& e) {
    std::fprintf(stderr, "rank %d: cptune::Error: %s\n", rank, e.what());
    code = kRankUserError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: exception: %s\n", rank, e.what());
  } catch (...) {
    std::fprintf(stderr, "rank %d: unknown exception\n", rank);
  }
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  _exit(code);  // no atexit handlers, no GoogleTest report from the copy of the parent
}

inline void record(RankOutcome& outcome, int status) {
  if (WIFEXITED(status)) outcome.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) outcome.signal = WTERMSIG(status);
}

}  // namespace detail

// Forks `world` ranks; rank r runs body(r) and exits with its return value. Waits for all of
// them; a rank still running after `timeout` is killed and marked. Fork before anything in the
// parent starts a thread (a Gloo TCP device does): only the forking thread survives in a child.
inline RanksOutcome run_ranks(int world, const std::function<int(int rank)>& body,
                              std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);  // or buffered output would be printed once per child too
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      for (pid_t p : pids) kill(p, SIGKILL);
      for (pid_t p : pids) waitpid(p, nullptr, 0);
      throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
    }
    if (pid == 0) detail::run_rank(rank, body);
    pids.push_back(pid);
  }

  RanksOutcome out;
  out.ranks.resize(static_cast<size_t>(world));
  std::vector<bool> reaped(static_cast<size_t>(world), false);
  int running = world;
  while (running > 0 && clock::now() - start < timeout) {
    for (int r = 0; r < world; ++r) {
      int status = 0;
      if (reaped[r] || waitpid(pids[r], &status, WNOHANG) != pids[r]) continue;
      reaped[r] = true;
      --running;
      detail::record(out.ranks[r], status);
    }
    if (running > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (int r = 0; r < world; ++r) {
    out.ranks[r].rank = r;
    if (reaped[r]) continue;
    kill(pids[r], SIGKILL);
    waitpid(pids[r], nullptr, 0);
    out.ranks[r].killed_on_timeout = true;
  }
  out.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start);
  return out;
}

// A fresh private FileStore directory under /tmp for one run; removed when it goes. Create it
// in the parent before run_ranks; ranks use .spec() ("file:///tmp/cptune-rendezvous-...").
inline backends::TempRendezvousDir fresh_file_rendezvous() { return backends::TempRendezvousDir("/tmp"); }

}  // namespace cptune::testing
