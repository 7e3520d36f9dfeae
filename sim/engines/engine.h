#pragma once
// One engine's context-parallel attention as its code runs it: the cptune strategies it runs
// (mapped to what the code does: all-gather or P2P ring, zigzag or basic, rank order), its rules
// on a shape (masks, GQA, heads, sequence lengths), whether it has a backward pass, how the user
// writes the configuration, and what it really puts on the wire. One profile per file in this
// folder; registry.cc lists them once. Every rule names the engine's source (repository @commit,
// file) in its refusal, so a user can check it.
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/types.h"

namespace cptune::sim {

enum class ConfigFormat { args, json, python };

namespace engines {

// Why the engine cannot run the candidate on the shape (the rule and its source), or "".
using Rule = std::function<std::string(const LayoutChoice&, const ShapeView&)>;
// The engine's own configuration for a candidate its rules allow.
using Config = std::function<std::string(const LayoutChoice&, const ShapeView&, ConfigFormat)>;
// The shape the engine's collectives and kernels really carry for a candidate (e.g. heads padded
// to a multiple of U); the simulator prices that shape.
using Wire = std::function<AttentionShape(const LayoutChoice&, const AttentionShape&)>;

struct Profile {
  std::string_view name;
  std::string_view sources;  // "repository @commit: files" the rules were read from
  std::vector<Strategy> strategies;
  bool ring_inner = false;  // can the engine put ring ranks innermost?
  Rule rule;
  Rule forward_only;  // why the candidate has no backward pass in the engine, or "" when it has one
  Config config;
  Wire wire;  // empty: the engine moves what cptune's layout moves
};

// Every profile, in the order docs/engines.md lists them.
const std::vector<const Profile*>& profiles();
// Throws Error naming the engines when `name` has no profile.
const Profile& profile(std::string_view name);

}  // namespace engines
}  // namespace cptune::sim
