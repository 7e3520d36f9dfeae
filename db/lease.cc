#include "db/lease.h"

#include <pthread.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "db/schema.h"
#include "db/sqlite.h"
#include "db/store.h"

namespace cptune::db {
namespace {

// The lease's key: every field of the fingerprint, separated by a character none of them holds.
constexpr char kKeySeparator = '\x1f';

std::string lease_key(const Fingerprint& fp) {
  const char sep = kKeySeparator;
  return fp.backend + sep + fp.device_model + sep + std::to_string(fp.cluster.world) + sep +
         std::to_string(fp.cluster.ranks_per_node) + sep + fp.library_versions + sep + fp.cptune_version;
}

// describe() of the fingerprint a key was made from; the key itself when it is not one.
std::string describe_key(const std::string& key) {
  std::vector<std::string> fields(1);
  for (char c : key) {
    if (c == kKeySeparator) fields.emplace_back();
    else fields.back().push_back(c);
  }
  if (fields.size() != 6) return key;
  try {
    return describe(Fingerprint{fields[0], fields[1], Cluster{std::stoll(fields[2]), std::stoll(fields[3])}, fields[4],
                                fields[5]});
  } catch (const std::exception&) {
    return key;
  }
}

constexpr const char* kNow = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

// Seconds since the heartbeat by this machine's clock; a heartbeat that is no time reads as
// infinitely old (a hand-edited row holds nobody).
constexpr const char* kSelectLease =
    "SELECT host, pid, start_time, acquired_at, heartbeat_at, "
    "coalesce((julianday('now') - julianday(heartbeat_at)) * 86400.0, 1e18) AS heartbeat_age_s "
    "FROM tune_leases WHERE fingerprint = ?1";

LeaseRow read_lease_row(const Statement& st, std::string fingerprint) {
  LeaseRow row;
  row.fingerprint = std::move(fingerprint);
  row.holder = ProcessIdentity{st.text("host"), st.integer("pid"), st.integer("start_time")};
  row.acquired_at = st.text("acquired_at");
  row.heartbeat_at = st.text("heartbeat_at");
  row.heartbeat_age_s = st.real("heartbeat_age_s");
  return row;
}

// A fork waits for a heartbeat in progress: the child then inherits no SQLite mutex held by
// the heartbeat thread (a forked rank opens the store itself).
std::mutex fork_guard;
void register_fork_guard() {
  static const int registered = pthread_atfork([] { fork_guard.lock(); }, [] { fork_guard.unlock(); },
                                               [] { fork_guard.unlock(); });
  (void)registered;
}

// What a waiter saw of one holder: the same heartbeat since `since` (its own clock).
struct Sighting {
  ProcessIdentity holder;
  std::string heartbeat_at;
  std::chrono::steady_clock::time_point since;
};

bool dead(const LeaseRow& row, const LeaseTiming& timing, std::optional<Sighting>& seen) {
  if (!process_alive(row.holder)) return true;
  if (row.heartbeat_age_s * 1000.0 > double(timing.expiry.count())) return true;
  const auto now = std::chrono::steady_clock::now();
  if (!seen || seen->holder != row.holder || seen->heartbeat_at != row.heartbeat_at)
    seen = Sighting{row.holder, row.heartbeat_at, now};
  return now - seen->since > timing.expiry;
}

// One write transaction: the lease taken for self when free, held by self already, or held by
// a dead holder; otherwise the live holder is returned and nothing changes.
std::optional<LeaseRow> take(const Connection& conn, const std::string& key, const ProcessIdentity& self,
                             const LeaseTiming& timing, std::optional<Sighting>& seen) {
  Transaction tx(conn, Transaction::Kind::write);
  Statement select(conn, kSelectLease);
  select.bind(1, key);
  if (select.step()) {
    LeaseRow holder = read_lease_row(select, describe_key(key));
    if (holder.holder != self && !dead(holder, timing, seen)) return holder;
  }
  const std::string sql = std::string("INSERT OR REPLACE INTO tune_leases "
                                      "(fingerprint, host, pid, start_time, acquired_at, heartbeat_at) "
                                      "VALUES (?1, ?2, ?3, ?4, ") + kNow + ", " + kNow + ")";
  Statement insert(conn, sql.c_str());
  insert.bind(1, key).bind(2, self.host).bind(3, self.pid).bind(4, self.start_time);
  insert.run();
  tx.commit();
  return std::nullopt;
}

}  // namespace

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

bool process_alive(const ProcessIdentity& holder) {
  if (holder.host != this_process().host) return true;
  const std::optional<int64_t> start = process_start_time(holder.pid);
  return start && *start == holder.start_time;
}

std::vector<LeaseRow> read_leases(const std::string& db_path) {
  Connection conn(db_path, OpenMode::read_only);
  check_for_reading(conn);
  const int64_t version = schema_version(conn);
  std::vector<LeaseRow> out;
  if (version < 2) return out;
  // Version 2 and 3 leases have no heartbeat: their acquisition is the last sign of life.
  const std::string heartbeat = version >= 4 ? "heartbeat_at" : "acquired_at";
  const std::string sql = "SELECT fingerprint, host, pid, start_time, acquired_at, " + heartbeat +
                          " AS heartbeat_at, coalesce((julianday('now') - julianday(" + heartbeat +
                          ")) * 86400.0, 1e18) AS heartbeat_age_s FROM tune_leases ORDER BY acquired_at";
  Statement st(conn, sql.c_str());
  while (st.step()) out.push_back(read_lease_row(st, describe_key(st.text("fingerprint"))));
  return out;
}

TuneLease::TuneLease(const std::string& db_path, const Fingerprint& fp, bool wait, LeaseTiming timing)
    : db_path_(db_path), key_(lease_key(fp)), self_(this_process()), timing_(timing) {
  {
    // The store's checks first: a lease is never written into a file the readers refuse.
    Store::open(db_path_);
    Connection conn(db_path_, OpenMode::read_write);
    std::optional<Sighting> seen;
    for (;;) {
      const std::optional<LeaseRow> holder = take(conn, key_, self_, timing_, seen);
      if (!holder) break;
      if (!wait)
        throw Error("another tune (pid " + std::to_string(holder->holder.pid) + " on " + holder->holder.host +
                    ", since " + holder->acquired_at + ", last heartbeat " +
                    std::to_string(int64_t(holder->heartbeat_age_s)) + " s ago) is measuring " + describe(fp) +
                    " into '" + db_path_ + "'; wait for it (--wait), or stop it; a lease whose holder has died, or " +
                    "whose heartbeat is older than " + std::to_string(timing_.expiry.count() / 1000) +
                    " s, is taken over");
      std::this_thread::sleep_for(timing_.poll);
    }
  }
  register_fork_guard();
  heartbeat_ = std::thread([this] {
    std::unique_lock lock(mutex_);
    parked_ = true;
    stop_cv_.notify_all();
    while (!stop_cv_.wait_for(lock, timing_.heartbeat, [this] { return stop_; })) beat();
  });
  // Returns once the thread waits on stop_cv_ (the wait has released mutex_). A thread still
  // starting holds locks no fork handler covers: under ASan, the allocator's, which a rank
  // forked right after this constructor inherited locked and hung on (1 tune in 12, CI).
  std::unique_lock lock(mutex_);
  stop_cv_.wait(lock, [this] { return parked_; });
}

void TuneLease::beat() {
  std::lock_guard guard(fork_guard);
  try {
    Connection conn(db_path_, OpenMode::read_write);
    const std::string sql = std::string("UPDATE tune_leases SET heartbeat_at = ") + kNow +
                            " WHERE fingerprint = ?1 AND host = ?2 AND pid = ?3 AND start_time = ?4";
    Statement refresh(conn, sql.c_str());
    refresh.bind(1, key_).bind(2, self_.host).bind(3, self_.pid).bind(4, self_.start_time);
    refresh.run();
    if (conn.changes() == 0 && held_.exchange(false))
      std::cerr << "warning: another tune took over the lease on '" + db_path_ +
                       "' (this tune's heartbeat stopped for longer than the expiry); shapes may be measured twice\n";
  } catch (const std::exception&) {
    // Locked past the busy timeout or gone for a moment: the next beat tries again.
  }
}

TuneLease::~TuneLease() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  try {
    Connection conn(db_path_, OpenMode::read_write);
    Statement drop(conn, "DELETE FROM tune_leases WHERE fingerprint = ?1 AND host = ?2 AND pid = ?3 AND start_time = ?4");
    drop.bind(1, key_).bind(2, self_.host).bind(3, self_.pid).bind(4, self_.start_time);
    drop.run();
  } catch (const std::exception&) {
    // The database went away or is locked: the lease stays, and its heartbeat stops ageing it out.
  }
}

}  // namespace cptune::db
