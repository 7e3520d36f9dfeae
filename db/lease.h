#pragma once
// The tune lease: one tuner at a time measures a (database, fingerprint). Two tuners on one
// database would otherwise both find a shape missing and both measure it. The lease is a row
// of the store (table tune_leases) naming its holder by host, pid and the pid's start time,
// so a lease left by a killed tuner is recognised as dead and taken over.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "db/records.h"

namespace cptune::db {

class Store;

// A process, told apart from a later one that reuses its pid by its start time.
struct ProcessIdentity {
  std::string host;
  int64_t pid = 0;
  int64_t start_time = 0;  // field 22 of /proc/<pid>/stat (clock ticks after boot)
  std::string acquired_at;  // when it took the lease (ISO 8601 UTC); empty for a process

  bool operator==(const ProcessIdentity& o) const {
    return host == o.host && pid == o.pid && start_time == o.start_time;
  }
};

ProcessIdentity this_process();
// The start time of a live process, nullopt when there is none with this pid (or it is a zombie).
std::optional<int64_t> process_start_time(int64_t pid);
// False only when the holder is certainly gone: on this host, its pid is not alive or belongs
// to a process started at another time. A holder on another host counts as alive.
bool holder_alive(const ProcessIdentity& holder);

// Holds the lease for its lifetime; released by the destructor (a clean exit or an error).
// The lease is a row, not a lock: no connection stays open while it is held, so the tuner can
// fork its ranks without carrying an open SQLite connection into them.
class TuneLease {
 public:
  // Takes the lease on fp in the database at db_path, or takes over a dead holder's. A live
  // holder: throws Error naming it, or with `wait`, polls until it is released or dies.
  TuneLease(const std::string& db_path, const Fingerprint& fp, bool wait,
            std::chrono::milliseconds poll = std::chrono::milliseconds(200));
  ~TuneLease();
  TuneLease(const TuneLease&) = delete;
  TuneLease& operator=(const TuneLease&) = delete;

 private:
  std::string db_path_;
  Fingerprint fp_;
  ProcessIdentity self_;
};

}  // namespace cptune::db
