#pragma once
// The cptune sub-commands. Each takes the arguments after its name and returns the exit code;
// user errors throw cptune::Error (main prints it and exits 2).
#include <string>
#include <vector>

namespace cptune::cli {

using Args = std::vector<std::string>;

int cmd_layout(const Args& args);
int cmd_simulate(const Args& args);
int cmd_run(const Args& args);
int cmd_tune(const Args& args);
int cmd_lookup(const Args& args);
int cmd_db(const Args& args);
int cmd_calibrate(const Args& args);
int cmd_validate(const Args& args);
int cmd_topology(const Args& args);
int cmd_mask(const Args& args);

}  // namespace cptune::cli
