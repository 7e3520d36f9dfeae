#include "db/open_lookup.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "db/local_fingerprint.h"
#include "db/sim_fallback.h"

namespace cptune::db {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool gpu_question(const LookupRequest& r) { return r.fingerprint.backend == "nccl" || !r.constraints.engine.empty(); }

}  // namespace

std::string lookup_hardware(const LookupRequest& r) {
  if (r.hardware.empty() && !r.db_path.empty()) return "";  // measured answers only
  if (!r.hardware.empty() && r.hardware != kHardwareAuto) return r.hardware;
  const std::string& device = r.fingerprint.device_model;
  const std::string why = r.fingerprint.backend == "nccl" ? "backend nccl" : "engine " + r.constraints.engine;
  if (device == kCpuDeviceModel && gpu_question(r))
    throw Error("a GPU question (" + why + ") is not priced on the cpu-gloo preset: give --hardware NAME|FILE "
                "(a GPU preset such as h100-sxm, or a file from `cptune calibrate`), or a fingerprint naming the GPU");
  if (std::optional<std::string> preset = preset_for_device(device)) return *preset;
  throw Error("no hardware preset describes device '" + device + "': give --hardware NAME|FILE (presets: " +
              [] {
                std::string names;
                for (const std::string& n : sim::preset_names()) names += (names.empty() ? "" : ", ") + n;
                return names;
              }() +
              ")");
}

std::optional<std::string> preset_for_device(const std::string& device_model) {
  const std::string device = lower(device_model);
  std::optional<std::string> best;
  for (const std::string& name : sim::preset_names()) {
    const std::string chip = lower(name.substr(0, name.find('-')));  // "h100" of "h100-sxm"
    if (device.find(chip) == std::string::npos) continue;
    if (!best || name.size() < best->size()) best = name;  // the plain preset, not a variant
  }
  return best;
}

OpenedLookup open_lookup(const LookupRequest& r) {
  // With a database, a GPU question the fingerprint cannot price still gets its measured answers;
  // a miss then says why the simulator was not asked.
  std::string hardware;
  Explain explain;
  try {
    hardware = lookup_hardware(r);
  } catch (const Error& e) {
    if (r.db_path.empty()) throw;
    explain = [why = std::string(e.what())](const AttentionShape&) { return why; };
  }
  sim::Constraints constraints = r.constraints;
  constraints.backward = constraints.backward || has_backward(r.pass);  // forward-only layouts refused
  const sim::PredictOptions predict{.pass = r.pass};
  Fallback fallback;
  if (!hardware.empty()) {
    const sim::Hardware hw = sim::load_hardware(hardware);
    fallback = simulator_fallback(hw, r.fingerprint.cluster, predict, constraints);
    explain = simulator_refusal(hw, r.fingerprint.cluster, predict, constraints);
  }
  Filter filter;
  if (!constraints.empty())
    filter = [c = constraints](const LayoutChoice& k, const ShapeView& v) { return c.allows(k, v); };
  if (r.db_path.empty()) {
    Lookup lookup = Lookup::without_database(std::move(fallback), std::move(filter),
                                             "no database given (answers are the simulator's on " + hardware + ")");
    lookup.set_explain(std::move(explain));
    return {std::move(lookup), hardware};
  }
  Lookup lookup = Lookup::open(r.db_path, r.fingerprint, std::move(fallback), std::move(filter), r.pass);
  lookup.set_explain(std::move(explain));
  return {std::move(lookup), hardware};
}

}  // namespace cptune::db
