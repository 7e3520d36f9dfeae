#pragma once
// The cptune sub-commands. Each takes the arguments after its name and returns the exit code;
// user errors throw cptune::Error (main prints it and exits 2).
#include <string>
#include <vector>

#include "core/error.h"

namespace cptune::cli {

using Args = std::vector<std::string>;

// What a query asked for does not exist (lookup: no layout for the shape). A user error like
// Error, with its own exit code, so a script can tell "nothing stored" from "bad arguments".
class NotFound : public Error {
 public:
  using Error::Error;
};

// Exit codes of every command (docs/reliability.md): 128 + n when killed by signal n, as the
// shell reports it; the local launcher returns the same when a signal stopped its ranks.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;    // verification failed, a rank failed, an internal error
inline constexpr int kExitBadInput = 2;  // bad input: a flag, a file, a shape, a damaged store
inline constexpr int kExitNotFound = 3;  // lookup: no layout for this shape

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
