#pragma once
// One spelling per concept across sub-commands. Flags renamed for that keep their old spelling
// for one release: the old one is rewritten to the new one before parsing, with one note on
// stderr naming both, so scripts keep working and their authors learn the new name.
#include <ostream>
#include <span>
#include <string_view>

#include "tuner/cli/commands.h"

namespace cptune::cli {

struct FlagRename {
  std::string_view command;   // the sub-command whose flag was renamed
  std::string_view old_flag;  // "--gpus-per-node"
  std::string_view new_flag;  // "--ranks-per-node"
};

// Every rename in force (the table docs/reliability.md lists).
std::span<const FlagRename> flag_renames();

// args with each old spelling of `command` (also written --old=value) replaced by its new one;
// one note per replaced flag goes to `notes`. A token is replaced only when its text (before any
// '=') is exactly an old flag of that command.
Args apply_flag_renames(std::string_view command, const Args& args, std::ostream& notes);

}  // namespace cptune::cli
