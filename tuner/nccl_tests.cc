#include "tuner/nccl_tests.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/read_file.h"
#include "sim/topology.h"

namespace cptune::tuner {
namespace {

// A line's words as views into the text: no copy of a line, however long.
std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    const size_t start = i;
    while (i < line.size() && !std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

bool parse_int(std::string_view s, int64_t& v) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && end == s.data() + s.size();
}

// A finite number (nccl-tests prints "%7.2f"); "nan", "inf" and overflow are not numbers here.
bool parse_double(std::string_view s, double& v) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && end == s.data() + s.size() && std::isfinite(v);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::optional<NcclTestKind> kind_in(std::string_view text) {
  const std::string s = lower(text);
  if (s.find("alltoall") != std::string::npos) return NcclTestKind::alltoall;
  if (s.find("sendrecv") != std::string::npos) return NcclTestKind::sendrecv;
  if (s.find("all_gather") != std::string::npos || s.find("allgather") != std::string::npos) return NcclTestKind::all_gather;
  return std::nullopt;
}

// The node level: the one holding ranks_per_node ranks (validate() guarantees one below the last).
size_t node_level(const sim::Hardware& hw) {
  for (size_t i = 0; i < hw.levels.size(); ++i)
    if (hw.levels[i].ranks == hw.ranks_per_node) return i;
  return 0;
}

}  // namespace

std::string_view to_string(NcclTestKind k) {
  switch (k) {
    case NcclTestKind::alltoall: return "alltoall";
    case NcclTestKind::sendrecv: return "sendrecv";
    case NcclTestKind::all_gather: return "all_gather";
  }
  return "?";
}

NcclTestKind parse_nccl_test_kind(std::string_view s) {
  const std::string name = lower(s);
  for (NcclTestKind k : {NcclTestKind::alltoall, NcclTestKind::sendrecv, NcclTestKind::all_gather})
    if (name == to_string(k) || name == std::string(to_string(k)) + "_perf") return k;
  if (name == "allgather" || name == "allgather_perf") return NcclTestKind::all_gather;
  throw Error(fmt::format("nccl-tests kind '{}' is not one; use alltoall, sendrecv or all_gather", s));
}

double NcclTestsRun::wire_fraction() const {
  return kind == NcclTestKind::sendrecv ? 1.0 : double(world - 1) / double(world);
}

int64_t NcclTestsRun::messages() const { return kind == NcclTestKind::sendrecv ? 1 : std::max<int64_t>(world - 1, 1); }

NcclTestsRun parse_nccl_tests(std::string_view text, const std::string& file, std::optional<NcclTestKind> kind) {
  NcclTestsRun run;
  run.file = file;
  std::set<std::string> hosts;
  std::map<int64_t, std::string> device_of_rank;
  std::optional<NcclTestKind> from_header;
  size_t time_column = 0;  // index of the out-of-place "time" among a row's words; 0: no header yet
  int number = 0;
  auto fail = [&](const std::string& what) { throw Error(fmt::format("nccl-tests file {} line {}: {}", file, number, what)); };
  for (size_t begin = 0; begin < text.size();) {
    const size_t newline = std::min(text.find('\n', begin), text.size());
    const std::string_view line = text.substr(begin, newline - begin);
    begin = newline + 1;
    ++number;
    if (line.size() > kMaxNcclTestsLineBytes)
      fail(fmt::format("{} bytes long; nccl-tests lines are a few hundred: is this nccl-tests output?", line.size()));
    const std::vector<std::string_view> w = words(line);
    if (w.empty()) continue;
    if (w[0] == "#") {
      // "#  Rank  0 Group  0 Pid 1234 on HOST device  0 [0x18] NVIDIA H100 80GB HBM3"
      if (w.size() >= 10 && w[1] == "Rank" && w[3] == "Group" && w[5] == "Pid" && w[7] == "on" && w[9] == "device") {
        int64_t rank = 0;
        if (!parse_int(w[2], rank) || rank < 0 || rank >= kMaxNcclTestsRanks)
          fail(fmt::format("rank '{}' is not a number in [0, {})", w[2], kMaxNcclTestsRanks));
        std::string device;
        const size_t name = w.size() > 11 && w[11].front() == '[' ? 12 : 11;
        for (size_t i = name; i < w.size(); ++i) device += fmt::format("{}{}", device.empty() ? "" : " ", w[i]);
        // Two logs pasted into one file, or a log cut and repeated, would count its ranks twice.
        if (!device_of_rank.emplace(rank, device).second)
          fail(fmt::format("rank {} is listed twice; give each run's log as its own file", rank));
        hosts.insert(std::string(w[8]));
      } else if (w.size() >= 5 && w[1] == "Collective" && w[2] == "test" && w[3] == "starting:") {
        from_header = kind_in(w[4]);
      } else if (time_column == 0 && std::find(w.begin(), w.end(), "size") != w.end()) {
        const auto t = std::find(w.begin(), w.end(), "time");
        if (t == w.end()) fail("column header names 'size' but no 'time' column");
        time_column = size_t(t - w.begin()) - 1;  // rows have no leading '#'
      }
      continue;
    }
    if (w[0].front() == '#') continue;  // "#wrong" style lines without a space
    int64_t size = 0;
    if (!parse_int(w[0], size)) continue;  // banner lines some launchers print around the output
    if (time_column == 0) fail("a data row before the column header ('#  size  count  type ... time algbw busbw #wrong')");
    if (w.size() < time_column + 4) fail(fmt::format("a row with {} columns; expected at least {}", w.size(), time_column + 4));
    if (size < 0) fail(fmt::format("size {} is negative", size));
    NcclTestsRow row;
    row.line = number;
    row.size_bytes = size;
    if (!parse_double(w[time_column], row.time_us) || !parse_double(w[time_column + 1], row.algbw_gbs) ||
        !parse_double(w[time_column + 2], row.busbw_gbs))
      fail(fmt::format("time/algbw/busbw '{} {} {}' are not finite numbers", w[time_column], w[time_column + 1],
                       w[time_column + 2]));
    int64_t wrong = 0;
    if (w[time_column + 3] != "N/A" && (!parse_int(w[time_column + 3], wrong) || wrong != 0))
      fail(fmt::format("#wrong is '{}': the run produced wrong results; its times are not evidence", w[time_column + 3]));
    if (!(row.time_us > 0)) fail(fmt::format("time {} us is not positive", w[time_column]));
    if (row.algbw_gbs < 0 || row.busbw_gbs < 0)
      fail(fmt::format("algbw {} or busbw {} GB/s is negative", w[time_column + 1], w[time_column + 2]));
    if (size > 0) run.rows.push_back(row);
  }
  for (const auto& [rank, device] : device_of_rank) run.devices.push_back(device);
  run.world = int64_t(run.devices.size());
  run.hosts = int64_t(hosts.size());
  if (run.world == 0)
    throw Error(fmt::format("nccl-tests file {}: no '#  Rank  N Group ... on HOST device ...' lines; is it nccl-tests output?", file));
  if (device_of_rank.rbegin()->first != run.world - 1)
    throw Error(fmt::format("nccl-tests file {}: {} rank lines but the highest rank is {}; a rank line is missing",
                            file, run.world, device_of_rank.rbegin()->first));
  if (run.world < 2) throw Error(fmt::format("nccl-tests file {}: one rank measures no link; run with 2 or more", file));
  if (run.world % run.hosts != 0)
    throw Error(fmt::format("nccl-tests file {}: {} ranks on {} hosts is not the same number per host", file, run.world, run.hosts));
  if (run.rows.empty()) throw Error(fmt::format("nccl-tests file {}: no data rows with size > 0", file));
  if (kind) run.kind = *kind;
  else if (from_header) run.kind = *from_header;
  else if (auto k = kind_in(std::filesystem::path(file).filename().string())) run.kind = *k;
  else
    throw Error(fmt::format("nccl-tests file {}: cannot tell alltoall, sendrecv or all_gather (no '# Collective test starting' "
                            "line, nor in the name); prefix it: --nccl-tests alltoall={}",
                            file, file));
  return run;
}

NcclTestsRun read_nccl_tests(const std::string& path, std::optional<NcclTestKind> kind) {
  return parse_nccl_tests(read_regular_file(path, "--nccl-tests file"), path, kind);
}

LinkFit fit_link(const NcclTestsRun& run) {
  // Weighted least squares of t = a + c x with weights 1/t^2 (relative residuals): the 2x2
  // normal equations, closed form. x in bytes on the wire, t in seconds.
  double s00 = 0, s01 = 0, s11 = 0, r0 = 0, r1 = 0;
  std::set<int64_t> sizes;
  for (const NcclTestsRow& row : run.rows) {
    const double x = double(row.size_bytes) * run.wire_fraction(), t = row.time_us * 1e-6, w = 1 / (t * t);
    s00 += w, s01 += w * x, s11 += w * x * x, r0 += w * t, r1 += w * x * t;
    sizes.insert(row.size_bytes);
  }
  if (sizes.size() < 2)
    throw Error(fmt::format("nccl-tests file {}: {} distinct size(s); a latency and a bandwidth need at least 2 "
                            "(run with -b 8 -e 8G -f 2)",
                            run.file, sizes.size()));
  const double det = s00 * s11 - s01 * s01;
  double a = (r0 * s11 - r1 * s01) / det, c = (s00 * r1 - s01 * r0) / det;
  if (a < 0) a = 0, c = r1 / s11;  // a negative latency is noise: refit through the origin
  const auto [smallest, largest] = std::minmax_element(
      run.rows.begin(), run.rows.end(), [](const NcclTestsRow& x, const NcclTestsRow& y) { return x.size_bytes < y.size_bytes; });
  const std::string ends = fmt::format("{} us at {} B (line {}), {} us at {} B (line {})", smallest->time_us,
                                       smallest->size_bytes, smallest->line, largest->time_us, largest->size_bytes,
                                       largest->line);
  if (!std::isfinite(det) || !(det > 0) || !std::isfinite(a) || !std::isfinite(c) || !(c > 0))
    throw Error(fmt::format("nccl-tests file {}: time does not grow with size ({}); no bandwidth to fit", run.file, ends));
  // A sweep that never leaves the latency regime fits any bandwidth (constant times: 1e20 GB/s):
  // at its largest size the bytes must be a real part of the measured time.
  const double bytes_share = c * double(largest->size_bytes) * run.wire_fraction() / (largest->time_us * 1e-6);
  if (bytes_share < kMinBandwidthShare)
    throw Error(fmt::format("nccl-tests file {}: the sweep never becomes bandwidth-bound ({}: the bytes are {:.2g}% of the "
                            "largest size's time, under {:.0f}%); no bandwidth to fit: rerun with larger sizes (-e 1G)",
                            run.file, ends, 100 * bytes_share, 100 * kMinBandwidthShare));
  LinkFit fit;
  fit.intercept_s = a;
  fit.alpha_s = a / double(run.messages());
  fit.bandwidth_bytes_per_s = 1 / c;
  fit.rows = run.rows.size();
  std::vector<double> residuals;
  for (const NcclTestsRow& row : run.rows) {
    const double t = row.time_us * 1e-6;
    residuals.push_back(std::fabs(a + c * double(row.size_bytes) * run.wire_fraction() - t) / t);
  }
  std::nth_element(residuals.begin(), residuals.begin() + residuals.size() / 2, residuals.end());
  fit.median_abs_residual = residuals[residuals.size() / 2];
  return fit;
}

size_t crossed_level(const sim::Hardware& hw, const NcclTestsRun& run) {
  if (hw.levels.empty()) return run.hosts > 1 ? 1 : 0;
  const size_t node = node_level(hw);
  if (run.hosts == 1) {
    for (size_t i = 0; i < node; ++i)
      if (hw.levels[i].ranks >= run.world) return i;
    return node;
  }
  // Levels above the node keep nodes per instance (levels_of): count in hosts.
  for (size_t i = node + 1; i + 1 < hw.levels.size(); ++i)
    if (hw.levels[i].ranks / hw.ranks_per_node >= run.hosts) return i;
  return hw.levels.size() - 1;
}

sim::Collective collective_of(NcclTestKind k) {
  switch (k) {
    case NcclTestKind::alltoall: return sim::Collective::alltoall;
    case NcclTestKind::sendrecv: return sim::Collective::sendrecv;
    case NcclTestKind::all_gather: return sim::Collective::all_gather;
  }
  return sim::Collective::alltoall;
}

sim::Hardware apply_nccl_tests(const sim::Hardware& base, std::span<const NcclTestsRun> runs) {
  if (runs.empty()) throw Error("no nccl-tests files given");
  struct Sum {
    double alpha = 0, bandwidth = 0;
    size_t rows = 0;
  };
  std::map<std::pair<size_t, sim::Collective>, Sum> per_entry;
  sim::Hardware hw = base;
  // A two-level file has no levels to hold per-collective rates: it becomes its two levels.
  if (hw.levels.empty()) hw.levels = sim::levels_of(base, base.ranks_per_node);
  std::string source = fmt::format("Per-collective rates fitted to nccl-tests logs by `cptune calibrate --nccl-tests` (time = "
                                   "latency + bytes/bandwidth, least squares on relative residuals, bytes = size x "
                                   "busbw/algbw), each written into its own entry of the level it crossed; everything "
                                   "else from {}.",
                                   base.name);
  for (const NcclTestsRun& run : runs) {
    const LinkFit fit = fit_link(run);
    const size_t level = crossed_level(hw, run);
    Sum& s = per_entry[{level, collective_of(run.kind)}];
    s.alpha += fit.alpha_s * double(fit.rows);
    s.bandwidth += fit.bandwidth_bytes_per_s * double(fit.rows);
    s.rows += fit.rows;
    source += fmt::format(
        "\n{}: {} on {} rank(s) x {} host(s) ({}), rows at lines {}-{} ({} sizes {}-{} B): intercept {:.2f} us = {} "
        "message(s) x {:.3g} us, bandwidth {:.4g} GB/s (busbw), median |residual| {:.1f}% -> level '{}'.",
        run.file, to_string(run.kind), run.ranks_per_host(), run.hosts, run.devices.front(), run.rows.front().line,
        run.rows.back().line, fit.rows, run.rows.front().size_bytes, run.rows.back().size_bytes, fit.intercept_s * 1e6,
        run.messages(), fit.alpha_s * 1e6, fit.bandwidth_bytes_per_s / 1e9, 100 * fit.median_abs_residual,
        sim::level_name(hw, level));
  }
  for (const auto& [key, s] : per_entry) {
    const auto [level, collective] = key;
    const sim::LinkClass link{s.alpha / double(s.rows), s.bandwidth / double(s.rows)};
    hw.levels[level].collective[size_t(collective)] = link;
    source += fmt::format("\nlevel '{}' {}: alpha_s {:.3g} us, bandwidth_bytes_per_s {:.4g} GB/s (row-weighted mean of its runs).",
                          sim::level_name(hw, level), sim::to_string(collective), link.alpha_s * 1e6,
                          link.bandwidth_bytes_per_s / 1e9);
  }
  hw.source = source + "\nFrom " + base.name + ":\n" + base.source;
  sim::validate(hw, "hardware fitted to nccl-tests");
  return hw;
}

}  // namespace cptune::tuner
