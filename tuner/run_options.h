#pragma once
// Flags shared by the sub-commands that run ranks (run, tune, calibrate, validate).
#include <string>

#include <boost/program_options.hpp>

#include "backends/executor.h"
#include "backends/launcher.h"

namespace cptune::cli {

struct RunArgs {
  int warmups = 1;
  int iterations = 5;
  bool verify = false;
  uint64_t seed = 1;
  double timeout_s = 30;
  std::string rendezvous;  // outside launcher: file:///shared/dir or redis://host:port
  std::string run_id = "cptune";
  std::string backend = "gloo";
};

void add_run_options(boost::program_options::options_description& desc, RunArgs& args);
backends::ExecutorOptions executor_options(const RunArgs& args);
backends::RankLaunch rank_launch(const RunArgs& args, int64_t world);

}  // namespace cptune::cli
