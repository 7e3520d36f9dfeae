#pragma once
// Machine-readable forms of the core vocabulary: a Layout (the `cptune layout --json` document),
// a shape, a cluster and a layout choice (the keys every JSON output uses for them).
#include <map>

#include <nlohmann/json.hpp>

#include "core/layout.h"

namespace cptune {

nlohmann::json to_json(const AttentionShape& shape);
nlohmann::json to_json(const Layout& layout);
nlohmann::json to_json(const LayoutChoice& choice);  // strategy, ulysses, ring, order, head_policy
nlohmann::json to_json(const Cluster& cluster);      // world, ranks_per_node, nodes
nlohmann::json to_json(const std::map<Phase, double>& seconds);  // {"qkv": s, "attention": s, ...}
LayoutChoice layout_choice_from_json(const nlohmann::json& j);  // throws Error naming what is missing

}  // namespace cptune
