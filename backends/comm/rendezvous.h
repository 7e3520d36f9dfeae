#pragma once
// Where the ranks of one run find each other (docs/design.md "Executor"): a Gloo store named by a
// rendezvous spec, a private directory for local runs, and the rank / world / local rank an
// outside launcher (torchrun, mpirun, srun) put in the environment.
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace gloo::rendezvous {
class Store;
}

namespace cptune::backends {

// "file:///abs/dir": a gloo FileStore in that directory (local, or shared by every host);
// "redis://host:port" (port defaults to 6379): a gloo RedisStore for many hosts;
// "env://": MASTER_ADDR / MASTER_PORT, a TCP store rank 0 serves (tcp_store.h); under torchrun
// (TORCHELASTIC_USE_AGENT_STORE=True), whose agent serves its own store on MASTER_PORT, on
// MASTER_PORT + 1; CPTUNE_MASTER_PORT overrides the port. "env://host:port" names both.
struct RendezvousSpec {
  enum class Kind { file, redis, env };
  Kind kind = Kind::file;
  std::string directory;  // file: absolute path
  std::string host;       // redis, env
  int port = 0;           // redis, env
};

// Throws Error naming the spec and the accepted forms ("env://" also when MASTER_ADDR or
// MASTER_PORT is missing or bad).
RendezvousSpec parse_rendezvous(std::string_view spec);
std::string to_string(const RendezvousSpec& spec);

// Connects to the store. Every wait on it, the one inside get() included, gives up after
// `timeout` (Gloo's stores round it up to whole seconds): Gloo's get() alone would wait its
// own 30 s. Throws Error when the directory does not exist or Redis cannot be reached.
// A FileStore refuses keys an earlier run left behind, so a run needs a fresh directory or a
// prefix of its own (GlooCommOptions::prefix).
// env://: rank 0 (`rank`) serves the store as well as using it, on MASTER_ADDR's address
// (CPTUNE_STORE_BIND overrides it); every rank presents store_token_from_environment()
// (store_token.h) and throws Error when there is none. Other kinds ignore the rank.
std::shared_ptr<gloo::rendezvous::Store> open_store(const RendezvousSpec& spec, std::chrono::milliseconds timeout,
                                                    int rank = -1);

// A fresh directory only this user can read, for the FileStore of one local run; removed with
// everything in it when this object goes. Create it before forking the ranks and let only the
// creating process destroy it. It holds an "owner" file (pid and start time of its creator):
// creating one first removes this user's directories whose creator is gone (a killed launcher).
class TempRendezvousDir {
 public:
  // Under `parent`, or $TMPDIR, or /tmp when both are empty. Throws Error when it cannot.
  explicit TempRendezvousDir(std::string parent = {});
  ~TempRendezvousDir();
  TempRendezvousDir(TempRendezvousDir&& other) noexcept;
  TempRendezvousDir& operator=(TempRendezvousDir&& other) noexcept;
  TempRendezvousDir(const TempRendezvousDir&) = delete;
  TempRendezvousDir& operator=(const TempRendezvousDir&) = delete;

  const std::string& path() const { return path_; }
  std::string spec() const { return "file://" + path_; }

 private:
  std::string path_;  // empty once moved from
};

// This process's place in a run started by an outside launcher.
struct LaunchEnv {
  int rank = 0;
  int world = 1;
  int local_rank = 0;    // rank among the ranks on this host
  int local_world = 0;   // ranks on this host (LOCAL_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_SIZE,
                         // SLURM_NTASKS_PER_NODE); 0 when the launcher did not say
  std::string launcher;  // "torchrun", "mpirun" or "srun": which variables were read
};

// Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun), else OMPI_COMM_WORLD_RANK / _SIZE /
// _LOCAL_RANK (mpirun), else SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (srun); the first
// family with any variable set wins, since an inner launcher (torchrun under srun) knows best.
// nullopt when none is set. Throws Error when a family is incomplete, a value is not an
// integer, or the values contradict each other (rank >= world).
std::optional<LaunchEnv> launch_env_from_environment();

}  // namespace cptune::backends
