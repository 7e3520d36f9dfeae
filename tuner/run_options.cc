#include "tuner/run_options.h"

#include "core/error.h"

namespace po = boost::program_options;

namespace cptune::cli {

void add_run_options(po::options_description& desc, RunArgs& a) {
  desc.add_options()
      ("warmups", po::value(&a.warmups)->default_value(1), "untimed iterations first")
      ("iterations", po::value(&a.iterations)->default_value(5), "timed iterations (median reported)")
      ("verify", po::bool_switch(&a.verify), "compare every output row with a single-device reference")
      ("seed", po::value(&a.seed)->default_value(1), "seed of the generated Q, K, V")
      ("timeout", po::value(&a.timeout_s)->default_value(30), "seconds any communication may wait for a peer")
      ("rendezvous", po::value(&a.rendezvous),
       "store of an outside launch: file:///shared/dir or redis://host:port (rank from RANK/WORLD_SIZE, "
       "OMPI_COMM_WORLD_*, SLURM_*)")
      ("run-id", po::value(&a.run_id)->default_value("cptune"), "key prefix in a shared rendezvous store")
      ("backend", po::value(&a.backend)->default_value("gloo"), "gloo (CPU ranks)");
}

backends::ExecutorOptions executor_options(const RunArgs& a) {
  if (a.iterations < 1) throw Error("--iterations " + std::to_string(a.iterations) + " must be at least 1");
  if (a.warmups < 0) throw Error("--warmups " + std::to_string(a.warmups) + " must not be negative");
  return {a.warmups, a.iterations, a.verify, a.seed};
}

backends::RankLaunch rank_launch(const RunArgs& a, int64_t world) {
  if (!(a.timeout_s > 0) || a.timeout_s > 86400)
    throw Error("--timeout " + std::to_string(a.timeout_s) + " must be between 0 and 86400 seconds");
  if (a.backend != "gloo") throw Error("--backend " + a.backend + " is not available in this build; use gloo");
  if (world > 4096 && a.rendezvous.empty())
    throw Error("world " + std::to_string(world) + " is too many local ranks; start ranks with an outside launcher");
  backends::RankLaunch launch;
  launch.world = static_cast<int>(world);
  launch.rendezvous = a.rendezvous;
  launch.prefix = a.run_id;
  launch.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  return launch;
}

}  // namespace cptune::cli
