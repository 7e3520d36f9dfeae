#pragma once
// Flags shared by the sub-commands that run ranks (run, tune, calibrate, validate).
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <span>
#include <string>

#include <boost/program_options.hpp>

#include "backends/exec/executor.h"
#include "backends/comm/launcher.h"

namespace cptune {
class Layout;
}

namespace cptune::backends {
class Comm;
class Device;
}

namespace cptune::cli {

struct RunArgs {
  int warmups = 1;
  int iterations = 5;
  bool verify = false;
  int64_t verify_rows = 0;  // ExecutorOptions::verify_rows
  bool phase_barriers = false;  // ExecutorOptions::phase_barriers
  uint64_t seed = 1;
  double timeout_s = 30;
  std::string rendezvous;  // outside launcher: file:///shared/dir or redis://host:port
  std::string run_id = "cptune";
  std::string backend = "gloo";  // gloo (CPU ranks) or nccl (one GPU per rank)
  std::string metadata = "cpu";  // UAA's lengths: cpu (host channel) or device (through the GPU)
  std::string pass = "fwd";      // ExecutorOptions::pass: fwd, bwd or fwd+bwd (add_pass_option)
};

void add_run_options(boost::program_options::options_description& desc, RunArgs& args);
// --pass fwd|bwd|fwd+bwd, for the sub-commands that run or tune a backward (run, tune, validate).
void add_pass_option(boost::program_options::options_description& desc, RunArgs& args);

// Under an outside launcher (RANK/WORLD_SIZE, OMPI_COMM_WORLD_*, SLURM_*) this process is one
// rank of the launcher's world and never forks: `world` (0 = not given) becomes the launcher's
// world (a different one is an Error), `ranks_per_node` (when given a pointer to 0) its ranks
// per host, and --rendezvous defaults to env:// when MASTER_ADDR and MASTER_PORT are set. Without
// them and without --rendezvous it is an Error saying what to pass. No launcher: nothing changes.
void join_outside_launch(int64_t& world, int64_t* ranks_per_node, RunArgs& args);
backends::ExecutorOptions executor_options(const RunArgs& args);

// Starts the ranks on the backend --backend names and runs body on each with its world Comm and
// the device its buffers live on (pass it on in ExecutorOptions::device):
// gloo forks local CPU ranks (or joins an outside launch); nccl does the same with one GPU per
// rank and an NcclComm over the Gloo comm. Throws Error when the backend cannot run here
// ("no CUDA device: ..." without a GPU, or a build without CUDA and NCCL).
int run_ranks(const RunArgs& args, int64_t world,
              const std::function<int(backends::Comm& world, backends::Device& device)>& body, std::ostream& err);

// Throws Error, with the sizes, when the host buffers that this machine holds for layouts, all
// allocated at once (the tuner interleaves a shape's candidates), exceed its physical memory:
// every rank's when the ranks are local CPU ranks, this one rank's under an outside launcher,
// plus the single-device reference when verifying. Called before any rank starts, so an
// impossible shape is refused instead of failing with bad_alloc or the OOM killer.
void check_host_memory(const RunArgs& args, std::span<const Layout> layouts, bool verify);

// The Gloo launch of these flags. With --backend nccl it throws Error: NCCL ranks start
// through run_ranks() above, and a caller of this function would silently start Gloo ones.
backends::RankLaunch rank_launch(const RunArgs& args, int64_t world);

}  // namespace cptune::cli
