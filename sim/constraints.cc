#include "sim/constraints.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.h"
#include "core/strategy.h"
#include "sim/engines/engine.h"

namespace cptune::sim {

bool Constraints::selects(const LayoutChoice& c) const {
  return (strategies.empty() || std::find(strategies.begin(), strategies.end(), c.strategy) != strategies.end()) &&
         (!ulysses || c.ulysses == ulysses) && (!ring || c.ring == ring) && (!order || c.order == *order) &&
         (!head_policy || c.head_policy == *head_policy);
}

std::string Constraints::rule_refusal(const LayoutChoice& c, const ShapeView& shape) const {
  const std::string who = engine.empty() ? "" : "engine " + engine + ": ";
  for (const Rule& rule : rules)
    if (std::string why = rule(c, shape); !why.empty()) return who + why;
  if (backward && forward_only)
    if (std::string why = forward_only(c, shape); !why.empty()) return who + "forward only: " + why;
  return "";
}

std::string Constraints::refusal(const LayoutChoice& c, const ShapeView& shape) const {
  const std::string who = engine.empty() ? "" : "engine " + engine + ": ";
  if (!strategies.empty() && std::find(strategies.begin(), strategies.end(), c.strategy) == strategies.end())
    return who + "strategy " + std::string(to_string(c.strategy)) + " is not allowed";
  if (ulysses && c.ulysses != ulysses) return "--ulysses " + std::to_string(ulysses) + " asks for another U";
  if (ring && c.ring != ring) return "--ring " + std::to_string(ring) + " asks for another R";
  if (order && c.order != *order) return who + "rank order " + std::string(to_string(c.order)) + " is not allowed";
  if (head_policy && c.head_policy != *head_policy)
    return who + "head policy " + std::string(to_string(c.head_policy)) + " is not allowed";
  return rule_refusal(c, shape);
}

std::vector<Strategy> parse_strategy_list(std::string_view text) {
  std::vector<Strategy> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    out.push_back(parse_strategy(text.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

const std::vector<std::string_view>& engine_names() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> out;
    for (const engines::Profile* p : engines::profiles()) out.push_back(p->name);
    return out;
  }();
  return names;
}

void apply_engine(Constraints& c, std::string_view name) {
  const engines::Profile& e = engines::profile(name);
  if (c.strategies.empty()) {
    c.strategies = e.strategies;
  } else {
    std::vector<Strategy> both;
    for (Strategy s : c.strategies)
      if (std::find(e.strategies.begin(), e.strategies.end(), s) != e.strategies.end()) both.push_back(s);
    if (both.empty()) {
      std::string can;
      for (Strategy s : e.strategies) can += (can.empty() ? "" : ",") + std::string(to_string(s));
      throw Error("--engine " + std::string(name) + " runs none of the strategies given with --strategy; it runs " + can);
    }
    c.strategies = both;
  }
  if (!e.ring_inner) {
    if (c.order == RankOrder::ring_inner)
      throw Error("--engine " + std::string(name) + " puts Ulysses ranks innermost; drop --order ring-inner");
    c.order = RankOrder::ulysses_inner;
  }
  if (c.head_policy == HeadPolicy::kv_aligned)
    throw Error("--engine " + std::string(name) + " splits heads contiguously (balanced); drop --head-policy kv-aligned");
  c.head_policy = HeadPolicy::balanced;
  c.engine = e.name;
  c.rules.push_back(e.rule);
  c.forward_only = e.forward_only;
  c.wire = e.wire;
}

ConfigFormat parse_config_format(std::string_view text) {
  if (text == "args") return ConfigFormat::args;
  if (text == "json") return ConfigFormat::json;
  if (text == "python") return ConfigFormat::python;
  throw Error("--format " + std::string(text) + " is not one; use args, json or python");
}

std::string engine_config(std::string_view name, const LayoutChoice& c, const ShapeView& shape, ConfigFormat format) {
  const engines::Profile& e = engines::profile(name);
  // The C ABI passes U and R straight through: the rules divide by them.
  if (c.ulysses < 1 || c.ring < 1)
    throw Error("ulysses " + std::to_string(c.ulysses) + " and ring " + std::to_string(c.ring) + " must be at least 1");
  check_world_limit(c.ulysses > kMaxWorld / c.ring ? kMaxWorld + 1 : c.ulysses * c.ring);
  const int64_t world = c.ulysses * c.ring;
  if (!(resolve(c, Cluster{world, world}) == c))
    throw Error(to_string(c) + " is not a layout: its degrees contradict the strategy");
  Constraints only;
  apply_engine(only, name);
  if (std::string why = only.refusal(c, shape); !why.empty())
    throw Error(to_string(c) + " cannot be expressed for " + std::string(e.name) + ": " + why);
  return e.config(c, shape, format);
}

std::string engine_forward_only(std::string_view name, const LayoutChoice& c, const ShapeView& shape) {
  return engines::profile(name).forward_only(c, shape);
}

std::string_view engine_sources(std::string_view name) { return engines::profile(name).sources; }

}  // namespace cptune::sim
