#include "db/local_fingerprint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace cptune::db {

std::string local_device_model(std::string_view backend) {
  if (backend == "gloo") return std::string(kCpuDeviceModel);
  if (backend != "nccl")
    throw Error("backend '" + std::string(backend) + "' is not one; use gloo (CPU ranks) or nccl (GPU ranks)");
  std::error_code ec;
  std::vector<std::filesystem::path> gpus;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec))
    gpus.push_back(entry.path() / "information");
  std::sort(gpus.begin(), gpus.end());
  for (const auto& path : gpus) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("Model:", 0) != 0) continue;
      std::string model = line.substr(6);
      model.erase(0, model.find_first_not_of(" \t"));
      model.erase(model.find_last_not_of(" \t\r") + 1);
      if (!model.empty()) return model;
    }
  }
  return "gpu";
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    std::string name = line.substr(colon + 1);
    name.erase(0, name.find_first_not_of(" \t"));
    if (!name.empty()) return name;
  }
  return "cpu";
}

Cluster checked_cluster(int64_t world, int64_t ranks_per_node) {
  check_world_limit(world);
  if (ranks_per_node < 1 || ranks_per_node > kMaxWorld)
    throw Error("ranks per node " + std::to_string(ranks_per_node) + " is outside 1.." + std::to_string(kMaxWorld));
  return Cluster{world, ranks_per_node};
}

Fingerprint local_hardware_fingerprint(std::string_view backend, int64_t world, int64_t ranks_per_node) {
  Fingerprint fp;
  fp.backend = backend;
  fp.cluster = checked_cluster(world, ranks_per_node);
  fp.device_model = local_device_model(backend);
  return fp;
}

std::string describe_full(const Fingerprint& fp) {
  std::string out = describe(fp);
  if (!fp.library_versions.empty() || !fp.cptune_version.empty())
    out += " (" + fp.library_versions + (fp.cptune_version.empty() ? "" : "; cptune " + fp.cptune_version) + ")";
  return out;
}

int closest_fingerprint(const Fingerprint& fp, const std::vector<Fingerprint>& candidates) {
  int best = -1, best_score = -1;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Fingerprint& c = candidates[i];
    const int score = (c.backend == fp.backend) * 8 + (c.device_model == fp.device_model) * 4 +
                      (c.cluster.world == fp.cluster.world) * 2 + (c.cluster.ranks_per_node == fp.cluster.ranks_per_node);
    if (score >= best_score) {
      best_score = score;
      best = int(i);
    }
  }
  return best;
}

}  // namespace cptune::db
