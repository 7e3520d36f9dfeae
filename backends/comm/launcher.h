#pragma once
// Starts the ranks of one run as local processes (the default: P CPU ranks on this machine).
// Ranks started by an outside launcher (torchrun, srun, mpirun) do not come through here.
#include <chrono>
#include <functional>
#include <iosfwd>
#include <string>

namespace cptune::backends {

struct LocalLaunchOptions {
  int world = 1;
  // After the first rank fails, the others get this long to fail on their own (their Comm
  // timeout) before they are killed, so a dead rank never hangs the run.
  std::chrono::milliseconds grace{std::chrono::seconds(35)};
};

// Forks `world` processes; rank r runs body(r) and exits with its return value (an escaping
// cptune::Error exits 2, any other exception 1). Returns 0 when every rank exited 0; otherwise
// reports each failed rank on `err` and returns 2 if a rank reported a user error, else 1.
int launch_local(const LocalLaunchOptions& options, const std::function<int(int rank)>& body, std::ostream& err);

class Comm;

// How the ranks of a run find each other.
struct RankLaunch {
  int world = 1;
  // Empty: start `world` local ranks with a fresh private FileStore directory. Otherwise this
  // process is one rank started by an outside launcher (RANK / WORLD_SIZE / LOCAL_RANK or the
  // mpirun / srun equivalents) and meets the others through this store ("file:///shared/dir",
  // "redis://host:port").
  std::string rendezvous;
  std::string prefix = "cptune";                      // keys in the store (one per run)
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // every Comm operation
};

// Local ranks: at most kMaxLocalWorld, and fewer when `ulimit -n` leaves a rank too few file
// descriptors for a socket per peer plus kFilesPerRankBesidesPeers.
inline constexpr int kMaxLocalWorld = 512;
inline constexpr int kFilesPerRankBesidesPeers = 64;
int max_local_world();

// The loopback address (127.1.x.y) rank `rank` of a local run gives its Gloo device, unless
// CPTUNE_GLOO_IFACE or CPTUNE_GLOO_HOSTNAME say otherwise: one address per rank keeps the
// ranks' listening ports apart (Linux picks an ephemeral port per address).
std::string local_rank_address(int rank);

// Runs body on every rank with a world Comm over Gloo. Local: forks the ranks and returns
// launch_local's code; throws Error above max_local_world(). Outside launcher: runs this
// process's rank and returns body's code.
int run_ranks(const RankLaunch& launch, const std::function<int(Comm& world)>& body, std::ostream& err);

}  // namespace cptune::backends
