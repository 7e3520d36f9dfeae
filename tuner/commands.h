#pragma once
// The cptune sub-commands. Each takes the arguments after its name and returns the exit code;
// user errors throw cptune::Error (main prints it and exits 2).
#include <string>
#include <vector>

namespace cptune::cli {

using Args = std::vector<std::string>;

int cmd_layout(const Args& args);

}  // namespace cptune::cli
