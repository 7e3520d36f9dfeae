#include "tuner/cli/run_options.h"

#include <unistd.h>

#include <cstdlib>

#include <fmt/format.h>

#include "backends/comm/rendezvous.h"
#include "core/error.h"
#include "core/layout.h"

#include "backends/exec/device.h"
#if CPTUNE_HAVE_CUDA
#include "backends/comm/cuda/nccl_comm.h"
#include "backends/comm/cuda/nccl_launch.h"
#include "backends/exec/cuda/cuda_device.h"
#endif

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

// The launch of these flags for any backend, after the checks every backend shares.
backends::RankLaunch launch_of(const RunArgs& a, int64_t world) {
  if (!(a.timeout_s > 0) || a.timeout_s > 86400)
    throw Error("--timeout " + std::to_string(a.timeout_s) + " must be between 0 and 86400 seconds");
  if (a.backend != "gloo" && a.backend != "nccl")
    throw Error("--backend " + a.backend + " is not a backend; use gloo (CPU ranks) or nccl (one GPU per rank)");
  if (world > 4096 && a.rendezvous.empty())
    throw Error("world " + std::to_string(world) + " is too many local ranks; start ranks with an outside launcher");
  backends::RankLaunch launch;
  launch.world = static_cast<int>(world);
  launch.rendezvous = a.rendezvous;
  launch.prefix = a.run_id;
  launch.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
  return launch;
}

// Throws Error unless this build and this machine can run NCCL ranks.
void check_nccl_available([[maybe_unused]] const RunArgs& a, [[maybe_unused]] int64_t world) {
#if CPTUNE_HAVE_CUDA
  backends::check_gpus_for(static_cast<int>(world), a.rendezvous.empty());
#else
  throw Error("--backend nccl: this cptune was built without CUDA and NCCL; rebuild where nvcc and nccl.h are found, "
              "or use --backend gloo");
#endif
}

}  // namespace

void join_outside_launch(int64_t& world, int64_t* ranks_per_node, RunArgs& a) {
  const std::optional<backends::LaunchEnv> env = backends::launch_env_from_environment();
  if (!env) return;
  const std::string who = env->launcher + " rank " + std::to_string(env->rank) + " of " + std::to_string(env->world);
  if (world == 0) world = env->world;
  if (world != env->world)
    throw Error("--world " + std::to_string(world) + " disagrees with the launcher's world size " +
                std::to_string(env->world) + " (" + who + "); drop --world, it defaults to the launcher's");
  if (ranks_per_node && *ranks_per_node == 0 && env->local_world > 0) *ranks_per_node = env->local_world;
  if (!a.rendezvous.empty()) return;
  const char* addr = std::getenv("MASTER_ADDR");
  const char* port = std::getenv("MASTER_PORT");
  if (addr && *addr && port && *port) {
    a.rendezvous = "env://";
    return;
  }
  throw Error("this process is " + who + " but has no way to meet the other ranks: pass --rendezvous "
              "file:///shared/fresh-dir or redis://host:port, or export MASTER_ADDR=<rank 0 host> and "
              "MASTER_PORT=<free port> on every rank (mpirun -x MASTER_ADDR -x MASTER_PORT) for env://");
}

void add_run_options(po::options_description& desc, RunArgs& a) {
  desc.add_options()
      ("warmups", po::value(&a.warmups)->default_value(1), "untimed iterations first")
      ("iterations", po::value(&a.iterations)->default_value(5), "timed iterations (median reported)")
      ("verify", po::bool_switch(&a.verify), "compare the output with an independent double-precision reference")
      ("verify-rows", po::value(&a.verify_rows)->default_value(0),
       "output rows (token x head) --verify checks: 0 = every row up to 2^25 visible (query, key, head) "
       "triples, else 4096 seeded samples over every rank and sequence; N = N samples")
      ("phase-barriers", po::bool_switch(&a.phase_barriers),
       "a barrier before each phase, so each is timed alone (clean per-phase attribution; adds the barriers' "
       "time to the iteration)")
      ("seed", po::value(&a.seed)->default_value(1), "seed of the generated Q, K, V")
      ("timeout", po::value(&a.timeout_s)->default_value(30), "seconds any communication may wait for a peer")
      ("rendezvous", po::value(&a.rendezvous),
       "store of an outside launch: env:// (MASTER_ADDR/MASTER_PORT; the default under a launcher when "
       "they are set), file:///shared/dir or redis://host:port (rank from RANK/WORLD_SIZE, "
       "OMPI_COMM_WORLD_*, SLURM_*)")
      ("run-id", po::value(&a.run_id)->default_value("cptune"), "key prefix in a shared rendezvous store")
      ("backend", po::value(&a.backend)->default_value("gloo"),
       "gloo (CPU ranks) or nccl (one GPU per rank, Gloo beside it for metadata)")
      ("metadata", po::value(&a.metadata)->default_value("cpu"),
       "how UAA's per-rank lengths travel: cpu (host channel, no device sync) or device (through GPU memory "
       "and the Comm, with a device-to-host sync)");
}

void add_pass_option(po::options_description& desc, RunArgs& a) {
  desc.add_options()("pass", po::value(&a.pass)->default_value("fwd"),
                     "what runs and is timed: fwd (the forward), bwd (the backward; its forward runs untimed "
                     "first) or fwd+bwd (a training step's attention)");
}

backends::ExecutorOptions executor_options(const RunArgs& a) {
  if (a.iterations < 1) throw Error("--iterations " + std::to_string(a.iterations) + " must be at least 1");
  if (a.warmups < 0) throw Error("--warmups " + std::to_string(a.warmups) + " must not be negative");
  backends::ExecutorOptions options;
  options.metadata = parse_metadata_channel(a.metadata);
  options.warmups = a.warmups;
  options.iterations = a.iterations;
  if (a.verify_rows < 0) throw Error("--verify-rows " + std::to_string(a.verify_rows) + " must not be negative");
  options.verify = a.verify;
  options.verify_rows = a.verify_rows;
  options.phase_barriers = a.phase_barriers;
  options.seed = a.seed;
  options.pass = parse_pass(a.pass);
  return options;
}

int run_ranks(const RunArgs& a, int64_t world,
              const std::function<int(backends::Comm&, backends::Device&)>& body, std::ostream& err) {
  const backends::RankLaunch launch = launch_of(a, world);
  if (a.backend == "gloo")
    return backends::run_ranks(
        launch,
        [&](backends::Comm& comm) {
          const std::unique_ptr<backends::Device> host = backends::make_host_device();
          return body(comm, *host);
        },
        err);
  check_nccl_available(a, world);
#if CPTUNE_HAVE_CUDA
  return backends::run_nccl_ranks(
      launch,
      [&](backends::NcclComm& comm) {
        const std::unique_ptr<backends::Device> gpu = backends::make_cuda_device(comm);
        return body(comm, *gpu);
      },
      err);
#else
  return 2;  // unreachable: check_nccl_available threw
#endif
}

void check_host_memory(const RunArgs& a, std::span<const Layout> layouts, bool verify) {
  if (a.backend != "gloo" || layouts.empty()) return;  // NCCL ranks hold their buffers on the GPUs
  const AttentionShape& s = layouts.front().shape();
  const bool local = a.rendezvous.empty();
  __int128 need = 0;
  for (const Layout& layout : layouts)
    for (const RankLayout& rank : layout.ranks()) {
      need += rank.peak_bytes;
      if (!local) break;  // an outside launcher's rank holds only its own
    }
  if (verify)  // the reference: Q, K, V and O of the whole shape in fp32
    need += static_cast<__int128>(s.batch) * s.total_tokens() *
            ((s.q_heads + s.kv_heads) * s.head_dim + (s.kv_heads + s.q_heads) * s.v_head_dim) * 4;
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return;  // unknown: let the allocation decide
  const double gib = double(1 << 30);
  const double have = double(pages) * double(page_size);
  std::string shape = to_string(s);  // a packed batch of many sequences is quoted in part
  if (shape.size() > 200) shape = shape.substr(0, 200) + "...";
  if (double(need) > have)
    throw Error(fmt::format("{} needs about {:.1f} GiB of host memory ({} layout(s) at once on {} rank(s) of this "
                            "machine{}), but this machine has {:.1f} GiB; use a shorter sequence, fewer heads, "
                            "fewer candidates (--top) or more machines",
                            shape, double(need) / gib, layouts.size(), local ? layouts.front().world() : 1,
                            verify ? ", plus the verification reference" : "", have / gib));
}

backends::RankLaunch rank_launch(const RunArgs& a, int64_t world) {
  const backends::RankLaunch launch = launch_of(a, world);
  if (a.backend == "nccl") {
    check_nccl_available(a, world);
    throw Error("--backend nccl: this command starts Gloo ranks only (it launches through rank_launch, not "
                "run_ranks); use --backend gloo");
  }
  return launch;
}

}  // namespace cptune::cli
