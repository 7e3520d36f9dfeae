#pragma once
// What a caller can run: flags (--strategy A,B, --ulysses, --ring, --order, --head-policy) and
// engine profiles (--engine NAME: the layouts an engine can express, with its rules; one profile
// per file in sim/engines/). The simulator, the tuner and the lookup enumerate, measure and answer
// only layouts a Constraints allows, and an engine gets its answer in its own terms (engine_config).
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/types.h"
#include "sim/engines/engine.h"

namespace cptune::sim {

struct Constraints {
  // Refusal of one candidate on one shape: why not, or "" when allowed.
  using Rule = std::function<std::string(const LayoutChoice&, const ShapeView&)>;

  std::vector<Strategy> strategies;        // empty: any
  int64_t ulysses = 0;                     // 0: any U
  int64_t ring = 0;                        // 0: any R
  std::optional<RankOrder> order;
  std::optional<HeadPolicy> head_policy;
  std::string engine;                      // the profile applied, "" for none
  std::vector<Rule> rules;                 // the engine's rules on the shape
  // A backward pass is asked for (fwd-bwd): layouts the engine runs forward only are refused.
  bool backward = false;
  Rule forward_only;  // the engine's: why a candidate has no backward pass, or ""
  // What the engine really moves for a candidate (e.g. padded heads): the shape the simulator prices.
  std::function<AttentionShape(const LayoutChoice&, const AttentionShape&)> wire;

  bool empty() const {
    return strategies.empty() && !ulysses && !ring && !order && !head_policy && rules.empty() && !backward;
  }
  // Whether the flags (strategies, U, R, order, head policy) select the candidate at all.
  bool selects(const LayoutChoice& c) const;
  // "" when the engine's rules allow the candidate on the shape; otherwise why not.
  std::string rule_refusal(const LayoutChoice& c, const ShapeView& shape) const;
  // "" when the candidate is allowed on the shape; otherwise which flag or rule refuses it.
  std::string refusal(const LayoutChoice& c, const ShapeView& shape) const;
  bool allows(const LayoutChoice& c, const ShapeView& shape) const { return refusal(c, shape).empty(); }
  // The shape the simulator prices for the candidate: the engine's wire shape, else `shape`.
  AttentionShape priced_shape(const LayoutChoice& c, const AttentionShape& shape) const {
    return wire ? wire(c, shape) : shape;
  }
};

// "ulysses,hybrid" -> strategies, in the order given. Throws Error naming the bad entry.
std::vector<Strategy> parse_strategy_list(std::string_view text);

// The engines with a profile, in the order docs/engines.md lists them (sim/engines/registry.cc).
const std::vector<std::string_view>& engine_names();
// Narrows `c` to what `engine` can run: its strategies intersected with any already given
// (an empty intersection is an Error naming both), its head policy and rank order, its rules.
// Throws Error naming the engines when `engine` is not one of them.
void apply_engine(Constraints& c, std::string_view engine);

ConfigFormat parse_config_format(std::string_view text);  // "args", "json", "python"

// The engine's own configuration for a layout it can run: command-line flags, a JSON object
// (one line), or the Python that builds it, e.g. "ContextParallelConfig(ulysses_degree=4)".
// allgather-kv is its own thing (Megatron cp_comm_type=all_gather, ring-flash-attn llama3),
// never a ring. Throws Error when U or R is below 1, when the degrees contradict the strategy,
// or when the engine cannot express the layout on this shape (naming the rule and its source).
std::string engine_config(std::string_view engine, const LayoutChoice& c, const ShapeView& shape, ConfigFormat format);
// "" when the engine runs the candidate's backward pass on the shape; otherwise why not.
std::string engine_forward_only(std::string_view engine, const LayoutChoice& c, const ShapeView& shape);
// "repository @commit: files" the engine's rules were read from.
std::string_view engine_sources(std::string_view engine);

}  // namespace cptune::sim
