#include "db/lease.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "db/store.h"

namespace cptune::db {

ProcessIdentity this_process() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  ProcessIdentity self;
  self.host = host;
  self.pid = getpid();
  self.start_time = process_start_time(self.pid).value_or(0);
  return self;
}

std::optional<int64_t> process_start_time(int64_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return std::nullopt;
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are counted
  // after its last ')'; state is field 3, starttime field 22.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 1));
  std::string state, field;
  fields >> state;
  if (state == "Z" || state == "X") return std::nullopt;
  for (int f = 4; f < 22 && fields >> field; ++f) {
  }
  int64_t start = 0;
  if (!(fields >> start)) return std::nullopt;
  return start;
}

bool holder_alive(const ProcessIdentity& holder) {
  if (holder.host != this_process().host) return true;
  const std::optional<int64_t> start = process_start_time(holder.pid);
  return start && *start == holder.start_time;
}

TuneLease::TuneLease(const std::string& db_path, const Fingerprint& fp, bool wait, std::chrono::milliseconds poll)
    : db_path_(db_path), fp_(fp), self_(this_process()) {
  Store store = Store::open(db_path_);
  for (;;) {
    const std::optional<ProcessIdentity> holder = store.take_lease(fp_, self_);
    if (!holder) return;
    if (!wait)
      throw Error("another tune (pid " + std::to_string(holder->pid) + " on " + holder->host + ", since " +
                  holder->acquired_at + ") is measuring " + describe(fp_) + " into '" + db_path_ +
                  "'; wait for it (--wait), or stop it; a lease whose holder has died is taken over");
    std::this_thread::sleep_for(poll);
  }
}

TuneLease::~TuneLease() {
  try {
    Store::open(db_path_).release_lease(fp_, self_);
  } catch (const std::exception&) {
    // The database went away or is locked: the lease stays, and the next tuner finds its holder dead.
  }
}

}  // namespace cptune::db
