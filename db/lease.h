#pragma once
// The tune lease: one tuner at a time measures a (database, fingerprint). Two tuners on one
// database would otherwise both find a shape missing and both measure it. The lease is a row
// of the store (table tune_leases) naming its holder by host, pid and the pid's start time,
// with a heartbeat its holder refreshes. A lease is dead, and taken over, when its holder is a
// process of this host that is gone, or when its heartbeat is older than the expiry, whatever
// host wrote it (a tuner on another host that died never refreshes it again).
//
// lease.cc reads and writes the row itself (db/sqlite.h, db/schema.h): the store does not
// know about leases, so the two files do not call each other.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "db/records.h"

namespace cptune::db {

// A process, told apart from a later one that reuses its pid by its start time.
struct ProcessIdentity {
  std::string host;
  int64_t pid = 0;
  int64_t start_time = 0;  // field 22 of /proc/<pid>/stat (clock ticks after boot)

  bool operator==(const ProcessIdentity& o) const = default;
};

ProcessIdentity this_process();
// The start time of a live process, nullopt when there is none with this pid (or it is a zombie).
std::optional<int64_t> process_start_time(int64_t pid);
// False when the holder is certainly gone: on this host, its pid is not alive or belongs to a
// process started at another time. Another host's process cannot be seen: true.
bool process_alive(const ProcessIdentity& holder);

// One row of tune_leases, as `cptune db show` prints it.
struct LeaseRow {
  std::string fingerprint;  // describe() of the fingerprint leased
  ProcessIdentity holder;
  std::string acquired_at;   // ISO 8601 UTC
  std::string heartbeat_at;  // the holder's last refresh, ISO 8601 UTC
  double heartbeat_age_s = 0;  // seconds since then, by this machine's clock
};

// The leases of the database at db_path (read-only; none before schema version 2).
std::vector<LeaseRow> read_leases(const std::string& db_path);

struct LeaseTiming {
  // A heartbeat older than this is a dead holder's. Clocks of the hosts sharing a database
  // may differ by less than this; a waiter also declares a holder dead when it saw its
  // heartbeat unchanged for this long by its own clock.
  std::chrono::milliseconds expiry = std::chrono::seconds(60);
  std::chrono::milliseconds heartbeat = std::chrono::seconds(10);  // how often the holder refreshes
  std::chrono::milliseconds poll = std::chrono::milliseconds(200);  // how often a waiter looks
};

// Holds the lease for its lifetime and refreshes its heartbeat from a thread; released by the
// destructor (a clean exit or an error). No connection stays open between heartbeats; the
// constructor returns only once the heartbeat thread has started and waits, and a fork waits
// for a heartbeat in progress (pthread_atfork), so the tuner's forked ranks carry neither an
// open SQLite connection nor a lock held by the heartbeat thread (its start included).
class TuneLease {
 public:
  // Takes the lease on fp in the database at db_path, or takes over a dead holder's. A live
  // holder: throws Error naming it, or with `wait`, polls until it is released or dies.
  TuneLease(const std::string& db_path, const Fingerprint& fp, bool wait, LeaseTiming timing = {});
  ~TuneLease();
  TuneLease(const TuneLease&) = delete;
  TuneLease& operator=(const TuneLease&) = delete;

  // False once another tuner took the lease over (this one's heartbeat stopped for longer
  // than the expiry, e.g. the process was stopped): what it measures from then may be twice.
  bool held() const { return held_; }

 private:
  void beat();

  std::string db_path_;
  std::string key_;
  ProcessIdentity self_;
  LeaseTiming timing_;
  std::atomic<bool> held_{true};
  std::mutex mutex_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  bool parked_ = false;  // the heartbeat thread has started and waits on stop_cv_
  std::thread heartbeat_;
};

}  // namespace cptune::db
