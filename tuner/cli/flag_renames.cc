#include "tuner/cli/flag_renames.h"

#include <fmt/format.h>

namespace cptune::cli {

namespace {

// Canonical spellings: --ranks-per-node (the mesh flag every other command takes), --top (simulate's
// table limit), --out FILE for a file a command writes (calibrate, topology import).
constexpr FlagRename kRenames[] = {
    {"simulate", "--gpus-per-node", "--ranks-per-node"},
    {"tune", "--top-k", "--top"},
    {"validate", "--top-k", "--top"},
    {"run", "--save-output", "--out"},
};

}  // namespace

std::span<const FlagRename> flag_renames() { return kRenames; }

Args apply_flag_renames(std::string_view command, const Args& args, std::ostream& notes) {
  Args out;
  out.reserve(args.size());
  for (const std::string& arg : args) {
    const std::string_view flag = std::string_view(arg).substr(0, arg.find('='));
    const FlagRename* hit = nullptr;
    for (const FlagRename& r : kRenames)
      if (r.command == command && r.old_flag == flag) hit = &r;
    if (!hit) {
      out.push_back(arg);
      continue;
    }
    notes << fmt::format("cptune {}: note: {} is deprecated and goes in the next release; use {}\n", command,
                         hit->old_flag, hit->new_flag);
    out.push_back(std::string(hit->new_flag) + arg.substr(flag.size()));
  }
  return out;
}

}  // namespace cptune::cli
