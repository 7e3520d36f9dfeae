#include "sim/hardware.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/read_file.h"

namespace cptune::sim {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A numeric field with the rule it must satisfy; validate() and from_vector() share these.
struct Field {
  std::string_view name;
  double value;
  bool zero_allowed;  // latencies may be 0; rates, sizes and counts may not
};

std::vector<Field> numeric_fields(const Hardware& hw) {
  return {
      {"nodes", double(hw.nodes), false},
      {"ranks_per_node", double(hw.ranks_per_node), false},
      {"intra.alpha_s", hw.intra.alpha_s, true},
      {"intra.bandwidth_bytes_per_s", hw.intra.bandwidth_bytes_per_s, false},
      {"inter.alpha_s", hw.inter.alpha_s, true},
      {"inter.bandwidth_bytes_per_s", hw.inter.bandwidth_bytes_per_s, false},
      {"attention_flops_per_s.bf16", hw.attention_flops_per_s.bf16, false},
      {"attention_flops_per_s.fp16", hw.attention_flops_per_s.fp16, false},
      {"attention_flops_per_s.fp32", hw.attention_flops_per_s.fp32, false},
      {"peak_flops_per_s.bf16", hw.peak_flops_per_s.bf16, false},
      {"peak_flops_per_s.fp16", hw.peak_flops_per_s.fp16, false},
      {"peak_flops_per_s.fp32", hw.peak_flops_per_s.fp32, false},
      {"memory_bandwidth_bytes_per_s", hw.memory_bandwidth_bytes_per_s, false},
      {"device_memory_bytes", double(hw.device_memory_bytes), false},
      {"device_sync_s", hw.device_sync_s, true},
      {"host_gather_alpha_s", hw.host_gather_alpha_s, true},
      {"compute_units_per_node", hw.compute_units_per_node, true},
      {"operation_latency_s", hw.operation_latency_s, true},
      {"overlap_exposed_fraction", hw.overlap_exposed_fraction, true},
      {"backward_compute_factor", hw.backward_compute_factor, false},
      {"injection_bytes_per_s", hw.injection_bytes_per_s, true},
      {"kernel_launch_s", hw.kernel_launch_s, true},
      {"call_overhead_s", hw.call_overhead_s, true},
  };
}

// The fitted parameters, in kFitParameterNames order.
std::array<double*, kFitParameterNames.size()> fit_parameters(Hardware& hw) {
  return {&hw.intra.alpha_s,
          &hw.intra.bandwidth_bytes_per_s,
          &hw.inter.alpha_s,
          &hw.inter.bandwidth_bytes_per_s,
          &hw.attention_flops_per_s.bf16,
          &hw.attention_flops_per_s.fp16,
          &hw.attention_flops_per_s.fp32,
          &hw.memory_bandwidth_bytes_per_s,
          &hw.device_sync_s,
          &hw.host_gather_alpha_s,
          &hw.compute_units_per_node,
          &hw.operation_latency_s,
          &hw.overlap_exposed_fraction,
          &hw.backward_compute_factor};
}

// Reads one JSON object field by field and rejects keys it never read (typos such as
// "bandwith" would otherwise silently keep a default).
class ObjectReader {
 public:
  ObjectReader(const json& obj, std::string where, std::string prefix)
      : obj_(obj), where_(std::move(where)), prefix_(std::move(prefix)) {
    if (!obj_.is_object()) fail(prefix_.empty() ? "the document" : prefix_, "must be a JSON object");
  }

  // Fields added after the first presets are optional, so older files keep loading.
  double number_or(const char* key, double fallback) { return obj_.contains(key) ? number(key) : fallback; }
  bool boolean_or(const char* key, bool fallback) {
    if (!obj_.contains(key)) return fallback;
    const json& v = field(key);
    if (!v.is_boolean()) fail(path(key), "must be true or false, got " + v.dump());
    return v.get<bool>();
  }
  bool has(const char* key) const { return obj_.contains(key); }
  // The elements of an array field, each read by its own reader named key[i].
  std::vector<ObjectReader> array(const char* key) {
    const json& v = field(key);
    if (!v.is_array()) fail(path(key), "must be an array of objects");
    std::vector<ObjectReader> out;
    for (size_t i = 0; i < v.size(); ++i) out.emplace_back(v[i], where_, path(key) + "[" + std::to_string(i) + "]");
    return out;
  }
  double number(const char* key) {
    const json& v = field(key);
    if (!v.is_number()) fail(path(key), "must be a number, got " + v.dump());
    return v.get<double>();
  }
  int64_t integer(const char* key) {
    const double v = number(key);
    if (v != std::floor(v) || std::fabs(v) > 9e18) fail(path(key), fmt::format("must be a whole number, got {}", v));
    return static_cast<int64_t>(v);
  }
  // A string, or an array of strings joined by newlines (JSON has no multi-line strings).
  std::string text(const char* key, bool required) {
    if (!obj_.contains(key)) {
      if (required) fail(path(key), "is missing");
      return {};
    }
    const json& v = field(key);
    if (v.is_string()) return v.get<std::string>();
    std::string out;
    if (!v.is_array()) fail(path(key), "must be a string or an array of strings");
    for (const json& line : v) {
      if (!line.is_string()) fail(path(key), "must be a string or an array of strings");
      out += (out.empty() ? "" : "\n") + line.get<std::string>();
    }
    return out;
  }
  ObjectReader child(const char* key) { return ObjectReader(field(key), where_, path(key)); }
  void reject_unknown() const {
    for (const auto& item : obj_.items())
      if (!read_.count(item.key()))
        fail(path(item.key().c_str()), "is not a hardware field (misspelt?); see sim/hardware/h100-sxm.json");
  }

 private:
  const json& field(const char* key) {
    if (!obj_.contains(key)) fail(path(key), "is missing");
    read_.insert(key);
    return obj_.at(key);
  }
  std::string path(const char* key) const { return prefix_.empty() ? key : prefix_ + "." + key; }
  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw Error(fmt::format("{}: field '{}' {}", where_, field, what));
  }

  const json& obj_;
  std::string where_, prefix_;
  std::set<std::string> read_;
};

LinkClass read_link(ObjectReader r) {
  LinkClass link{r.number("alpha_s"), r.number("bandwidth_bytes_per_s")};
  r.reject_unknown();
  return link;
}

Level read_level(ObjectReader r, bool last) {
  Level level;
  level.name = r.text("name", true);
  level.ranks = last ? 0 : r.integer("ranks");
  level.link = {r.number("alpha_s"), r.number("bandwidth_bytes_per_s")};
  level.uplink_bytes_per_s = last ? 0 : r.number_or("uplink_bytes_per_s", 0);
  level.oversubscription = last ? 1 : r.number_or("oversubscription", 1);
  level.host_bounce = r.boolean_or("host_bounce", false);
  for (Collective c : kCollectives) {
    const std::string key(to_string(c));
    if (r.has(key.c_str())) level.collective[size_t(c)] = read_link(r.child(key.c_str()));
  }
  r.reject_unknown();
  return level;
}

AttentionKernel read_kernel(ObjectReader r) {
  AttentionKernel k;
  k.units = r.integer("units");
  k.tile_rows = r.integer("tile_rows");
  k.tile_keys_overhead = r.number_or("tile_keys_overhead", 0);
  k.head_dim_overhead = r.number_or("head_dim_overhead", 0);
  k.call_s = r.number_or("call_s", 0);
  r.reject_unknown();
  return k;
}

void validate_kernel(const AttentionKernel& k, const std::string& where) {
  auto fail = [&](const char* field, double v, const char* rule) {
    throw Error(fmt::format("{}: field 'attention_kernel.{}' must be {}, got {}", where, field, rule, v));
  };
  if (k.units < 0 || k.units > (int64_t(1) << 20)) fail("units", double(k.units), "0 (no shape model) to 2^20");
  if (k.tile_rows < 1 || k.tile_rows > (int64_t(1) << 20)) fail("tile_rows", double(k.tile_rows), "1 to 2^20");
  for (auto [field, v] : {std::pair{"tile_keys_overhead", k.tile_keys_overhead}, std::pair{"head_dim_overhead", k.head_dim_overhead},
                          std::pair{"call_s", k.call_s}})
    if (!std::isfinite(v) || v < 0) fail(field, v, "zero or more and finite");
}

// The node level: the one that holds ranks_per_node ranks (validate_levels checks there is one).
size_t node_level(const Hardware& hw) {
  for (size_t i = 0; i < hw.levels.size(); ++i)
    if (hw.levels[i].ranks == hw.ranks_per_node) return i;
  return hw.levels.size();
}

void validate_levels(const Hardware& hw, const std::string& where) {
  if (hw.levels.empty()) return;
  auto fail = [&](size_t i, const std::string& what) {
    throw Error(fmt::format("{}: level {} ('{}') {}", where, i, hw.levels[i].name, what));
  };
  if (hw.levels.size() < 2 || hw.levels.size() > kMaxLevels)
    throw Error(fmt::format("{}: field 'levels' has {} levels; give 2 to {} (the last holds the whole cluster)", where,
                            hw.levels.size(), kMaxLevels));
  for (size_t i = 0; i < hw.levels.size(); ++i) {
    const Level& l = hw.levels[i];
    const bool last = i + 1 == hw.levels.size();
    if (!last && l.ranks < 1) fail(i, fmt::format("must hold at least 1 rank, got {}", l.ranks));
    if (!last && i > 0 && l.ranks % hw.levels[i - 1].ranks != 0)
      fail(i, fmt::format("holds {} ranks, not a multiple of the {} of the level below", l.ranks, hw.levels[i - 1].ranks));
    if (!std::isfinite(l.link.alpha_s) || l.link.alpha_s < 0) fail(i, fmt::format("alpha_s must be zero or more, got {}", l.link.alpha_s));
    if (!std::isfinite(l.link.bandwidth_bytes_per_s) || l.link.bandwidth_bytes_per_s <= 0)
      fail(i, fmt::format("bandwidth_bytes_per_s must be positive, got {}", l.link.bandwidth_bytes_per_s));
    if (!std::isfinite(l.uplink_bytes_per_s) || l.uplink_bytes_per_s < 0)
      fail(i, fmt::format("uplink_bytes_per_s must be zero (none) or positive, got {}", l.uplink_bytes_per_s));
    if (!std::isfinite(l.oversubscription) || l.oversubscription < 1)
      fail(i, fmt::format("oversubscription must be at least 1, got {}", l.oversubscription));
    for (Collective c : kCollectives) {
      const LinkClass& rate = l.collective[size_t(c)];
      if (!std::isfinite(rate.alpha_s) || rate.alpha_s < 0 || !std::isfinite(rate.bandwidth_bytes_per_s) ||
          rate.bandwidth_bytes_per_s < 0 || (rate.bandwidth_bytes_per_s == 0 && rate.alpha_s != 0))
        fail(i, fmt::format("{} must have alpha_s zero or more and bandwidth_bytes_per_s positive, got {} and {}",
                            to_string(c), rate.alpha_s, rate.bandwidth_bytes_per_s));
    }
  }
  if (node_level(hw) + 1 >= hw.levels.size())
    throw Error(fmt::format("{}: no level below the last holds ranks_per_node ({}) ranks; one level must be the node, "
                            "with the network above it",
                            where, hw.ranks_per_node));
}

DTypeRates read_rates(ObjectReader r) {
  DTypeRates rates{r.number("bf16"), r.number("fp16"), r.number("fp32")};
  r.reject_unknown();
  return rates;
}

json source_lines(const std::string& text) {
  json lines = json::array();
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// share/cptune/hardware beside the bin/ or lib/ folder that holds `file`.
fs::path presets_beside(const fs::path& file) {
  std::error_code ec;
  const fs::path resolved = fs::canonical(file, ec);
  return ec ? fs::path() : resolved.parent_path().parent_path() / "share" / "cptune" / "hardware";
}

// Where presets are found, in order: $CPTUNE_HARDWARE_DIR; share/cptune/hardware beside the
// library or program this code is linked into (libcptune_lookup.so, found with dladdr, or the
// cptune program), which is the install prefix once installed and build/share/cptune/hardware
// in the build tree (sim/CMakeLists.txt copies them there); hardware/ beside the library itself;
// the configured install directory.
// Never the source tree: an installed cptune reads only what was installed.
std::vector<fs::path> preset_dirs() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("CPTUNE_HARDWARE_DIR"); env && *env) dirs.emplace_back(env);
  // dladdr names a library by the path it was loaded with (relative ones against the working
  // directory), and the main program by its argv[0]: that one is found through /proc instead.
  Dl_info info{};
  fs::path self = "/proc/self/exe";
  std::error_code ec;
  if (dladdr(reinterpret_cast<void*>(&presets_beside), &info) && info.dli_fname && *info.dli_fname &&
      fs::exists(info.dli_fname, ec) && !fs::equivalent(info.dli_fname, self, ec))
    self = info.dli_fname;
  dirs.push_back(presets_beside(self));
  // A bundle that keeps the library and its presets in one folder (the Python package:
  // site-packages/cptune/libcptune_lookup.so and site-packages/cptune/hardware/).
  if (const fs::path lib = fs::canonical(self, ec); !ec) dirs.push_back(lib.parent_path() / "hardware");
  dirs.emplace_back(CPTUNE_INSTALLED_HARDWARE_DIR);
  std::erase(dirs, fs::path());
  return dirs;
}

bool looks_like_path(const std::string& s) {
  return s.find('/') != std::string::npos || (s.size() > 5 && s.substr(s.size() - 5) == ".json");
}

Hardware load_file(const fs::path& path) {
  const std::string where = "hardware file " + path.string();
  const std::string text = read_regular_file(path.string(), "hardware file");
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(where + ": not valid JSON: " + e.what());
  }
  return hardware_from_json(doc, where);
}

}  // namespace

std::string_view to_string(Collective c) {
  switch (c) {
    case Collective::alltoall: return "alltoall";
    case Collective::sendrecv: return "sendrecv";
    case Collective::all_gather: return "all_gather";
  }
  return "?";
}

void validate(const Hardware& hw, const std::string& where) {
  validate_levels(hw, where);
  validate_kernel(hw.attention_kernel, where);
  if (!std::isfinite(hw.comm_compute_slowdown) || hw.comm_compute_slowdown < 1)
    throw Error(fmt::format("{}: field 'comm_compute_slowdown' must be at least 1 (no slowdown), got {}", where,
                            hw.comm_compute_slowdown));
  for (const Field& f : numeric_fields(hw)) {
    if (!std::isfinite(f.value) || f.value < 0 || (!f.zero_allowed && f.value == 0))
      throw Error(fmt::format("{}: field '{}' must be {} and finite, got {}", where, f.name,
                              f.zero_allowed ? "zero or more" : "positive", f.value));
  }
  for (DType d : {DType::bf16, DType::fp16, DType::fp32}) {
    if (hw.attention_flops_per_s.of(d) > hw.peak_flops_per_s.of(d))
      throw Error(fmt::format("{}: field 'attention_flops_per_s.{}' ({}) exceeds the device's peak_flops_per_s.{} ({}); "
                              "the achieved rate cannot beat the peak",
                              where, to_string(d), hw.attention_flops_per_s.of(d), to_string(d), hw.peak_flops_per_s.of(d)));
  }
}

Eigen::VectorXd to_vector(const Hardware& hw) {
  Hardware copy = hw;
  const auto params = fit_parameters(copy);
  Eigen::VectorXd v(static_cast<Eigen::Index>(params.size()));
  for (size_t i = 0; i < params.size(); ++i) v[static_cast<Eigen::Index>(i)] = *params[i];
  return v;
}

Hardware from_vector(Hardware base, const Eigen::VectorXd& params) {
  const auto fields = fit_parameters(base);
  if (params.size() != static_cast<Eigen::Index>(fields.size()))
    throw Error(fmt::format("hardware parameter vector has {} entries; expected {}", params.size(), fields.size()));
  for (size_t i = 0; i < fields.size(); ++i) *fields[i] = params[static_cast<Eigen::Index>(i)];
  // A fit may push a rate past the preset's peak; the peak then follows, the floor stays sound.
  for (DType d : {DType::bf16, DType::fp16, DType::fp32})
    base.peak_flops_per_s.at(d) = std::max(base.peak_flops_per_s.of(d), base.attention_flops_per_s.of(d));
  validate(base, "fitted hardware '" + base.name + "'");
  return base;
}

json to_json(const Hardware& hw) {
  auto rates = [](const DTypeRates& r) { return json{{"bf16", r.bf16}, {"fp16", r.fp16}, {"fp32", r.fp32}}; };
  auto link = [](const LinkClass& l) { return json{{"alpha_s", l.alpha_s}, {"bandwidth_bytes_per_s", l.bandwidth_bytes_per_s}}; };
  json doc = {{"name", hw.name},
          {"source", source_lines(hw.source)},
          {"nodes", hw.nodes},
          {"ranks_per_node", hw.ranks_per_node}};
  if (hw.levels.empty()) {
    doc["intra"] = link(hw.intra);
    doc["inter"] = link(hw.inter);
  } else {
    json levels = json::array();
    for (const Level& l : hw.levels) {
      json item = {{"name", l.name}};
      if (&l != &hw.levels.back()) item["ranks"] = l.ranks;
      item["alpha_s"] = l.link.alpha_s;
      item["bandwidth_bytes_per_s"] = l.link.bandwidth_bytes_per_s;
      if (l.uplink_bytes_per_s > 0) item["uplink_bytes_per_s"] = l.uplink_bytes_per_s;
      if (l.oversubscription != 1) item["oversubscription"] = l.oversubscription;
      if (l.host_bounce) item["host_bounce"] = true;
      for (Collective c : kCollectives)
        if (const LinkClass* rate = l.rate_of(c)) item[std::string(to_string(c))] = link(*rate);
      levels.push_back(item);
    }
    doc["levels"] = levels;
    if (hw.injection_bytes_per_s > 0) doc["injection_bytes_per_s"] = hw.injection_bytes_per_s;
  }
  doc.update(json{
          {"attention_flops_per_s", rates(hw.attention_flops_per_s)},
          {"peak_flops_per_s", rates(hw.peak_flops_per_s)},
          {"memory_bandwidth_bytes_per_s", hw.memory_bandwidth_bytes_per_s},
          {"device_memory_bytes", hw.device_memory_bytes},
          {"device_sync_s", hw.device_sync_s},
          {"host_gather_alpha_s", hw.host_gather_alpha_s},
          {"compute_units_per_node", hw.compute_units_per_node},
          {"operation_latency_s", hw.operation_latency_s},
          {"overlap_exposed_fraction", hw.overlap_exposed_fraction},
          {"backward_compute_factor", hw.backward_compute_factor},
          {"kernel_launch_s", hw.kernel_launch_s},
          {"call_overhead_s", hw.call_overhead_s}});
  if (hw.attention_kernel.modelled()) {
    const AttentionKernel& k = hw.attention_kernel;
    doc["attention_kernel"] = {{"units", k.units},
                               {"tile_rows", k.tile_rows},
                               {"tile_keys_overhead", k.tile_keys_overhead},
                               {"head_dim_overhead", k.head_dim_overhead},
                               {"call_s", k.call_s}};
  }
  if (hw.comm_compute_slowdown != 1) doc["comm_compute_slowdown"] = hw.comm_compute_slowdown;
  return doc;
}

Hardware hardware_from_json(const json& doc, const std::string& where) {
  ObjectReader r(doc, where, "");
  Hardware hw;
  hw.name = r.text("name", true);
  hw.source = r.text("source", true);
  hw.nodes = r.integer("nodes");
  hw.ranks_per_node = r.integer("ranks_per_node");
  if (r.has("levels")) {
    if (r.has("intra") || r.has("inter"))
      throw Error(where + ": give either 'levels' or 'intra' and 'inter', not both (the levels hold their links)");
    std::vector<ObjectReader> items = r.array("levels");
    for (size_t i = 0; i < items.size(); ++i) hw.levels.push_back(read_level(items[i], i + 1 == items.size()));
    hw.injection_bytes_per_s = r.number_or("injection_bytes_per_s", 0);
    validate_levels(hw, where);
    const size_t node = node_level(hw);
    hw.intra = hw.levels[node].link;
    hw.inter = hw.levels[node + 1].link;
  } else {
    hw.intra = read_link(r.child("intra"));
    hw.inter = read_link(r.child("inter"));
  }
  hw.attention_flops_per_s = read_rates(r.child("attention_flops_per_s"));
  hw.peak_flops_per_s = read_rates(r.child("peak_flops_per_s"));
  hw.memory_bandwidth_bytes_per_s = r.number("memory_bandwidth_bytes_per_s");
  hw.device_memory_bytes = r.integer("device_memory_bytes");
  hw.device_sync_s = r.number("device_sync_s");
  hw.host_gather_alpha_s = r.number("host_gather_alpha_s");
  hw.compute_units_per_node = r.number_or("compute_units_per_node", 0);
  hw.operation_latency_s = r.number_or("operation_latency_s", 0);
  hw.overlap_exposed_fraction = r.number_or("overlap_exposed_fraction", 0);
  hw.backward_compute_factor = r.number_or("backward_compute_factor", 2.5);
  hw.kernel_launch_s = r.number_or("kernel_launch_s", 0);
  hw.call_overhead_s = r.number_or("call_overhead_s", 0);
  if (r.has("attention_kernel")) hw.attention_kernel = read_kernel(r.child("attention_kernel"));
  hw.comm_compute_slowdown = r.number_or("comm_compute_slowdown", 1);
  r.reject_unknown();
  validate(hw, where);
  return hw;
}

std::vector<Level> levels_of(const Hardware& hw, int64_t ranks_per_node) {
  if (ranks_per_node < 1) throw Error(fmt::format("ranks per node {} must be at least 1", ranks_per_node));
  if (hw.levels.empty()) return {Level{"node", ranks_per_node, hw.intra}, Level{"network", 0, hw.inter}};
  std::vector<Level> out = hw.levels;
  const size_t node = node_level(hw);
  for (size_t i = 0; i + 1 < out.size(); ++i) {
    if (i < node && ranks_per_node % out[i].ranks != 0)
      throw Error(fmt::format("hardware '{}': level '{}' holds {} ranks, which does not divide {} ranks per node; "
                              "use a multiple of {} or a hardware file for that machine",
                              hw.name, out[i].name, out[i].ranks, ranks_per_node, out[i].ranks));
    if (i >= node) out[i].ranks = out[i].ranks / hw.ranks_per_node * ranks_per_node;
  }
  return out;
}

std::vector<std::string> preset_names() {
  std::set<std::string> names;
  for (const fs::path& dir : preset_dirs()) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().extension() == ".json") names.insert(entry.path().stem().string());
  }
  return {names.begin(), names.end()};
}

Hardware load_hardware(const std::string& name_or_path) {
  if (looks_like_path(name_or_path)) return load_file(name_or_path);
  std::error_code ec;  // a name too long for a path is simply not a preset
  for (const fs::path& dir : preset_dirs()) {
    const fs::path file = dir / (name_or_path + ".json");
    if (fs::exists(file, ec)) return load_file(file);
  }
  if (fs::exists(name_or_path, ec)) return load_file(name_or_path);
  std::string presets;
  for (const std::string& n : preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  throw Error(fmt::format("unknown hardware '{}'; use a preset ({}) or a path to a JSON file like sim/hardware/h100-sxm.json",
                          name_or_path, presets.empty() ? "none installed" : presets));
}

std::string profile_label(const Hardware& hw, const std::string& name_or_path) {
  if (name_or_path == hw.name) return hw.name;
  return hw.name + " (" + fs::path(name_or_path).filename().string() + ")";
}

void save_hardware(const Hardware& hw, const std::string& path) {
  validate(hw, "hardware '" + hw.name + "'");
  std::ofstream out(path);
  if (!out) throw Error("cannot write hardware file " + path + "; check the folder exists and is writable");
  out << to_json(hw).dump(2) << "\n";
  if (!out) throw Error("writing hardware file " + path + " failed");
}

}  // namespace cptune::sim
