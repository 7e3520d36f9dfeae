// cptune: layout, simulate, run, tune, lookup, db, calibrate, validate, topology, mask.
#include <csignal>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <boost/program_options/errors.hpp>

#include "core/error.h"
#include "cptune/version.h"
#include "tuner/cli/commands.h"
#include "tuner/cli/flag_renames.h"

namespace {

struct Command {
  std::string_view name;
  int (*run)(const cptune::cli::Args&);
  std::string_view help;
};

constexpr Command kCommands[] = {
    {"layout", cptune::cli::cmd_layout, "per-rank layout of one strategy for one shape"},
    {"simulate", cptune::cli::cmd_simulate, "predict and rank every candidate layout on a cluster (no hardware)"},
    {"run", cptune::cli::cmd_run, "run one strategy across ranks (Gloo CPU ranks, or --backend nccl), verify and time it"},
    {"tune", cptune::cli::cmd_tune, "measure the promising candidates per shape and store the best (SQLite)"},
    {"lookup", cptune::cli::cmd_lookup, "the best layout for a shape: measured, nearest measured, or simulated"},
    {"db", cptune::cli::cmd_db, "list, show or export a tuning database"},
    {"calibrate", cptune::cli::cmd_calibrate, "probe links and kernels on P ranks, fit a hardware file to them"},
    {"validate", cptune::cli::cmd_validate, "measure every candidate of held-out shapes, report the model's error"},
    {"topology", cptune::cli::cmd_topology, "import an NCCL topology dump (NCCL_TOPO_DUMP_FILE) as a hardware file's levels"},
    {"mask", cptune::cli::cmd_mask, "show a mask: its block table, cell counts, density and canonical text"},
};

void usage(FILE* out) {
  std::fprintf(out, "cptune %s: context-parallel attention layouts, simulation and tuning\n\n", CPTUNE_VERSION_STRING);
  std::fprintf(out, "usage: cptune <command> [options]   (cptune <command> --help for its options)\n\ncommands:\n");
  for (const auto& c : kCommands)
    std::fprintf(out, "  %-10.*s %.*s\n", int(c.name.size()), c.name.data(), int(c.help.size()), c.help.data());
}

}  // namespace

int main(int argc, char** argv) {
  // Over a file size limit (ulimit -f) a write fails with EFBIG and is reported, instead of
  // SIGXFSZ killing cptune silently (exit 153) in the middle of writing a database or a file.
  std::signal(SIGXFSZ, SIG_IGN);
  if (argc < 2) {
    usage(stderr);
    return cptune::cli::kExitBadInput;
  }
  std::string_view name = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (name == "help" && argc > 2) {  // cptune help CMD [ACTION]: that command's own --help
    name = argv[2];
    args.erase(args.begin());
    args.push_back("--help");
  } else if (name == "--help" || name == "-h" || name == "help") {
    usage(stdout);
    return 0;
  }
  if (name == "--version") {
    std::printf("cptune %s\n", CPTUNE_VERSION_STRING);
    return 0;
  }
  for (const auto& c : kCommands) {
    if (c.name != name) continue;
    try {
      return c.run(cptune::cli::apply_flag_renames(name, args, std::cerr));
    } catch (const cptune::cli::NotFound& e) {
      std::fprintf(stderr, "cptune %.*s: not found: %s\n", int(name.size()), name.data(), e.what());
      return cptune::cli::kExitNotFound;
    } catch (const cptune::Error& e) {
      std::fprintf(stderr, "cptune %.*s: error: %s\n", int(name.size()), name.data(), e.what());
      return cptune::cli::kExitBadInput;
    } catch (const boost::program_options::error& e) {
      std::fprintf(stderr, "cptune %.*s: error: %s\n", int(name.size()), name.data(), e.what());
      return cptune::cli::kExitBadInput;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cptune %.*s: internal error: %s\n", int(name.size()), name.data(), e.what());
      return cptune::cli::kExitFailed;
    }
  }
  std::fprintf(stderr, "cptune: error: unknown command '%.*s'\n\n", int(name.size()), name.data());
  usage(stderr);
  return cptune::cli::kExitBadInput;
}
