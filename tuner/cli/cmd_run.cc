// cptune run: one strategy for one shape, run for real across ranks, verified and timed.
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backends/comm/comm.h"
#include "backends/exec/executor.h"
#include "backends/kernels/cpu_isa.h"
#include "backends/comm/launcher.h"
#include "core/error.h"
#include "core/layout_json.h"
#include "core/layout.h"
#include "tuner/cli/commands.h"
#include "core/format.h"
#include "tuner/cli/run_options.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

nlohmann::json spread_json(const backends::Spread& s) {
  return {{"median", s.median_s}, {"min", s.min_s}, {"max", s.max_s}};
}

nlohmann::json result_json(const Layout& layout, const backends::RunResult& r, const std::string& backend) {
  nlohmann::json phases = nlohmann::json::object();
  for (const auto& p : r.phases) phases[std::string(to_string(p.phase))] = spread_json(p.time);
  nlohmann::json out = to_json(layout.choice());
  out.update({{"world", layout.world()},
              {"backend", backend},
              {"cpu_isa", std::string(backends::to_string(backends::active_cpu_isa()))},
              {"iterations", r.iterations},
              {"time_s", spread_json(r.time)},
              {"phases", phases},
              {"verified", r.max_abs_err ? nlohmann::json(r.verified()) : nlohmann::json(nullptr)},
              {"max_abs_err", r.max_abs_err ? nlohmann::json(*r.max_abs_err) : nlohmann::json(nullptr)},
              {"tolerance", r.max_abs_err ? nlohmann::json(r.tolerance) : nlohmann::json(nullptr)}});
  return out;
}

void print_result(const Layout& layout, const backends::RunResult& r, const std::string& backend, int warmups) {
  std::cout << fmt::format("cptune run: {}, world {}, {} ranks, dtype {}\n", to_string(layout.choice()), layout.world(),
                           backend, to_string(layout.shape().dtype));
  if (r.max_abs_err)
    std::cout << fmt::format("verify: max |O - O_ref| = {:.3e}, tolerance {:.3e}: {}\n", *r.max_abs_err, r.tolerance,
                             r.verified() ? "PASSED" : "FAILED");
  std::cout << fmt::format("time: slowest rank per iteration, {} iterations after {} warm-up(s)\n", r.iterations, warmups);
  std::cout << fmt::format("{:<14} {:>12} {:>12} {:>12}\n", "phase", "median", "min", "max");
  for (const auto& p : r.phases)
    std::cout << fmt::format("{:<14} {:>12} {:>12} {:>12}\n", to_string(p.phase), human_seconds(p.time.median_s),
                             human_seconds(p.time.min_s), human_seconds(p.time.max_s));
  std::cout << fmt::format("{:<14} {:>12} {:>12} {:>12}\n", "total", human_seconds(r.time.median_s),
                           human_seconds(r.time.min_s), human_seconds(r.time.max_s));
}

}  // namespace

int cmd_run(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  RunArgs run;
  StrategyArgs choice;
  po::options_description desc("run options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  add_run_options(desc, run);
  add_strategy_options(desc, choice);
  if (!parse_args(args, desc,
                  "usage: cptune run --world P --strategy NAME --seq S --heads H [--kv-heads K] [--verify] [options]\n"
                  "Starts P local CPU ranks over Gloo, or with --rendezvous runs the one rank an outside launcher\n"
                  "(torchrun, mpirun, srun) started."))
    return 0;
  const Layout layout = Layout::build(to_spec(shape, mesh, choice));
  backends::ExecutorOptions options = executor_options(run);
  check_host_memory(run, {&layout, 1}, run.verify);
  return run_ranks(run, layout.world(), [&](backends::Comm& world, backends::Device& device) {
    options.device = &device;
    const backends::RunResult result = backends::execute(layout, world, options);
    if (world.rank() == 0) {
      if (choice.json)
        std::cout << result_json(layout, result, world.backend()).dump(2) << std::endl;
      else
        print_result(layout, result, world.backend(), options.warmups);
    }
    return result.max_abs_err && !result.verified() ? 1 : 0;
  }, std::cerr);
}

}  // namespace cptune::cli
