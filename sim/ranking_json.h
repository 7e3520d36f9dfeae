#pragma once
// Machine-readable form of predictions and rankings (the `cptune simulate --json` document;
// the tuner and the store reuse the per-candidate objects).
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/layout_json.h"
#include "sim/candidates.h"

namespace cptune::sim {

using cptune::to_json;  // LayoutChoice: strategy, ulysses, ring, order, head_policy

// {"time_s", "phases": {name: seconds}, "bytes": {"intra", "inter"}, "peak_bytes", "fits",
// "padding_waste_s", "levels": [{"name", "bytes", "time_s"}, ...innermost first]}; phases of the
// backward only for a forward + backward pass. Levels are named level_names[i] (or "level i").
nlohmann::json to_json(const Prediction& p, Pass pass, const std::vector<std::string>& level_names = {});
// The candidate's fields, its prediction's, and the two speed-ups (null without Ulysses).
nlohmann::json to_json(const RankedCandidate& rc, Pass pass, const std::vector<std::string>& level_names = {});
// {"candidates": [...fastest first], "refused": [{candidate fields, "reason"}]}
nlohmann::json to_json(const Ranking& ranking, Pass pass);

}  // namespace cptune::sim
