#include "sim/ranking_json.h"

namespace cptune::sim {

using nlohmann::json;

json to_json(const Prediction& p, Pass pass, const std::vector<std::string>& level_names) {
  json levels = json::array();
  for (size_t i = 0; i < p.levels; ++i)
    levels.push_back({{"name", i < level_names.size() ? level_names[i] : "level " + std::to_string(i)},
                      {"bytes", p.level_bytes[i]},
                      {"time_s", p.level_s[i]}});
  json phases = json::object();
  for (Phase ph : kAllPhases) {
    if (is_backward(ph) ? has_backward(pass) : has_forward(pass)) phases[std::string(to_string(ph))] = p.phase(ph);
  }
  return {{"time_s", p.total_s},
          {"phases", phases},
          {"bytes", {{"intra", p.bytes_intra}, {"inter", p.bytes_inter}}},
          {"peak_bytes", p.peak_bytes},
          {"fits", p.fits},
          {"padding_waste_s", p.padding_waste_s},
          {"levels", levels}};
}

json to_json(const RankedCandidate& rc, Pass pass, const std::vector<std::string>& level_names) {
  json out = to_json(rc.candidate);
  out.update(to_json(rc.prediction, pass, level_names));
  out["speedup_over_worst"] = rc.speedup_over_worst;
  out["speedup_over_ulysses"] = rc.speedup_over_ulysses ? json(*rc.speedup_over_ulysses) : json(nullptr);
  return out;
}

json to_json(const Ranking& ranking, Pass pass) {
  json candidates = json::array(), refused = json::array();
  for (const RankedCandidate& rc : ranking.candidates) candidates.push_back(to_json(rc, pass, ranking.level_names));
  for (const Refusal& r : ranking.refused) {
    json item = to_json(r.candidate);
    item["reason"] = r.reason;
    refused.push_back(std::move(item));
  }
  return {{"candidates", candidates}, {"refused", refused}};
}

}  // namespace cptune::sim
