#pragma once
// Machine-readable form of predictions and rankings (the `cptune simulate --json` document;
// the tuner and the store reuse the per-candidate objects).
#include <nlohmann/json.hpp>

#include "core/layout_json.h"
#include "sim/candidates.h"

namespace cptune::sim {

using cptune::to_json;  // LayoutChoice: strategy, ulysses, ring, order, head_policy

// {"time_s", "phases": {name: seconds}, "bytes": {"intra", "inter"}, "peak_bytes", "fits",
// "padding_waste_s"}; phases of the backward only for a forward + backward pass.
nlohmann::json to_json(const Prediction& p, Pass pass);
// The candidate's fields, its prediction's, and the two speed-ups (null without Ulysses).
nlohmann::json to_json(const RankedCandidate& rc, Pass pass);
// {"candidates": [...fastest first], "refused": [{candidate fields, "reason"}]}
nlohmann::json to_json(const Ranking& ranking, Pass pass);

}  // namespace cptune::sim
