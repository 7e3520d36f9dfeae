// cptune calibrate: probe this cluster's links and kernels on P ranks, fit the hardware
// description to the probes, print the residuals, write a hardware file for --hardware.
#include <chrono>
#include <ctime>
#include <iostream>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backends/comm/comm.h"
#include "core/error.h"
#include "sim/hardware.h"
#include "sim/topology.h"
#include "tuner/calibrate.h"
#include "tuner/cli/commands.h"
#include "db/local_fingerprint.h"
#include "tuner/nccl_tests.h"
#include "tuner/attention_points.h"
#include "core/read_file.h"
#include "core/format.h"
#include "tuner/cli/output_file.h"
#include "tuner/cli/run_options.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

struct CalibrateArgs {
  RunArgs run;
  int64_t world = 0;
  std::string out, base = "cpu-gloo", name;
  double scale = 1;
  bool json = false;
  std::string statistic = "median";
  std::vector<std::string> nccl_tests;  // [KIND=]FILE
  std::string attention_points, device, kernel;
  int64_t units = 0;
  double call_s = -1;  // --call-s: fixed, not fitted
};

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return text;
}

std::string joined(const std::vector<std::string>& list) {
  std::string out;
  for (const std::string& n : list) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "none" : out;
}

// The calibrated file says where its numbers come from, as the presets do.
sim::Hardware described(const tuner::FitResult& fit, const sim::Hardware& base, const CalibrateArgs& a) {
  sim::Hardware hw = fit.hardware;
  hw.name = a.name.empty() ? fmt::format("{}-p{}-calibrated", a.run.backend, a.world) : a.name;
  hw.nodes = 1;
  hw.ranks_per_node = a.world;
  std::string source = fmt::format(
      "Calibrated by `cptune calibrate --backend {} --world {}` on {} ({} hardware threads) at {}: "
      "{} probes, each the {} of {} iterations (7 of 10 back-to-back operations for messages and copies) from "
      "the first rank's start to the last rank's end, after {} warm-up(s), interleaved.",
      a.run.backend, a.world, db::cpu_model_name(), std::thread::hardware_concurrency(), utc_now(), fit.residuals.size(),
      a.statistic, a.run.iterations, a.run.warmups);
  source += "\nFitted by least squares on relative residuals: " + joined(fit.fitted) + ".";
  source += "\nKept from " + base.name + " (no probe exercises them on one host): " + joined(fit.kept) + ".";
  for (const tuner::ResidualSummary& s : tuner::summarize(fit.residuals))
    source += fmt::format("\nResidual |predicted - measured| / measured, {} ({} probes): median {:.1f}%, worst {:.1f}%.",
                          s.kind, s.probes, 100 * s.median_abs, 100 * s.max_abs);
  hw.source = source;
  return hw;
}

void print_fit(const tuner::FitResult& fit, const sim::Hardware& base, std::ostream& out) {
  out << fmt::format("{:<64} {:>12} {:>12} {:>8}\n", "probe (first rank's start to last rank's end)", "measured",
                     "predicted", "error");
  for (const tuner::Residual& r : fit.residuals)
    out << fmt::format("{:<64} {:>12} {:>12} {:>7.1f}%\n", r.probe.label, human_seconds(r.probe.measured_s),
                       human_seconds(r.predicted_s), 100 * r.relative());
  out << "\nresiduals |predicted - measured| / measured:\n";
  for (const tuner::ResidualSummary& s : tuner::summarize(fit.residuals))
    out << fmt::format("  {:<13} {:>3} probes  median {:>5.1f}%  worst {:>5.1f}%\n", s.kind, s.probes,
                       100 * s.median_abs, 100 * s.max_abs);
  const Eigen::VectorXd before = sim::to_vector(base), after = sim::to_vector(fit.hardware);
  out << fmt::format("\n{:<32} {:>12} {:>12}  ({} Levenberg-Marquardt steps)\n", "parameter", base.name, "fitted",
                     fit.iterations);
  for (size_t i = 0; i < sim::kFitParameterNames.size(); ++i) {
    const std::string name(sim::kFitParameterNames[i]);
    const bool kept = std::find(fit.kept.begin(), fit.kept.end(), name) != fit.kept.end();
    out << fmt::format("{:<32} {:>12.4g} {:>12.4g}{}\n", name, before[Eigen::Index(i)], after[Eigen::Index(i)],
                       kept ? "  (kept: no probe exercises it)" : "");
  }
}

nlohmann::json fit_json(const tuner::FitResult& fit, const sim::Hardware& written, const std::string& path) {
  nlohmann::json probes = nlohmann::json::array(), summary = nlohmann::json::array();
  for (const tuner::Residual& r : fit.residuals)
    probes.push_back({{"kind", to_string(r.probe.kind)},
                      {"label", r.probe.label},
                      {"measured_s", r.probe.measured_s},
                      {"predicted_s", r.predicted_s},
                      {"relative_error", r.relative()}});
  for (const tuner::ResidualSummary& s : tuner::summarize(fit.residuals))
    summary.push_back({{"kind", s.kind}, {"probes", s.probes}, {"median_abs", s.median_abs}, {"max_abs", s.max_abs}});
  return {{"schema", "cptune/calibrate/1"}, {"out", path},         {"hardware", sim::to_json(written)}, {"fitted", fit.fitted},
          {"kept", fit.kept},    {"iterations", fit.iterations},      {"probes", probes},
          {"residuals", summary}};
}

// Rejects what would otherwise fail after a minute of measuring.
void check_arguments(CalibrateArgs& a) {
  join_outside_launch(a.world, nullptr, a.run);
  if (a.world < 2) throw Error(fmt::format("--world {} must be at least 2: calibration measures communication", a.world));
  if (a.out.empty()) throw Error("--out is required: the hardware file to write (then pass it as --hardware)");
  if (a.statistic != "median" && a.statistic != "min")
    throw Error("--statistic " + a.statistic + " is not one; use median or min");
  if (!(a.scale > 0) || a.scale > 16) throw Error(fmt::format("--scale {} must be in (0, 16]", a.scale));
  // The probes move host buffers and run the CPU kernel: what Gloo ranks run.
  if (a.run.backend != "gloo")
    throw Error("--backend " + a.run.backend + " cannot be calibrated: the probes run CPU ranks over Gloo; use --backend gloo");
  check_writable(a.out, "--out");
}

// --nccl-tests: no probes; each log's size sweep fitted, the levels it crossed replaced.
int calibrate_from_nccl_tests(const CalibrateArgs& a) {
  if (a.out.empty()) throw Error("--out is required: the hardware file to write (then pass it as --hardware)");
  check_writable(a.out, "--out");
  const sim::Hardware base = sim::load_hardware(a.base);
  std::vector<tuner::NcclTestsRun> runs;
  for (const std::string& item : a.nccl_tests) {
    const size_t eq = item.find('=');
    std::optional<tuner::NcclTestKind> kind;
    std::string file = item;
    if (eq != std::string::npos && eq > 0 && item.find('/') > eq) {
      kind = tuner::parse_nccl_test_kind(item.substr(0, eq));
      file = item.substr(eq + 1);
    }
    runs.push_back(tuner::read_nccl_tests(file, kind));
  }
  sim::Hardware hw = tuner::apply_nccl_tests(base, runs);
  hw.name = a.name.empty() ? base.name + "-nccl-tests" : a.name;
  sim::save_hardware(hw, a.out);
  std::cout << fmt::format("{:<40} {:>10} {:>6} {:>12} {:>12} {:>14} {:>8}  {}\n", "file", "kind", "ranks", "intercept",
                           "alpha/msg", "bandwidth", "resid", "level");
  for (const tuner::NcclTestsRun& run : runs) {
    const tuner::LinkFit fit = tuner::fit_link(run);
    std::cout << fmt::format("{:<40} {:>10} {:>3}x{:<2} {:>12} {:>12} {:>9.4g} GB/s {:>7.1f}%  {}\n", run.file,
                             tuner::to_string(run.kind), run.ranks_per_host(), run.hosts, human_seconds(fit.intercept_s),
                             human_seconds(fit.alpha_s), fit.bandwidth_bytes_per_s / 1e9, 100 * fit.median_abs_residual,
                             sim::level_name(base, tuner::crossed_level(base, run)));
  }
  std::cout << "\nwrote " << a.out << " (" << hw.name << "); use it as --hardware " << a.out << "\n";
  return 0;
}

// --attention-points: the attention kernel's shape model fitted to measured or published
// points of one device (sim/attention_rate.h); everything else kept from --base.
int calibrate_attention(const CalibrateArgs& a) {
  if (a.out.empty()) throw Error("--out is required: the hardware file to write (then pass it as --hardware)");
  if (a.device.empty()) throw Error("--device is required with --attention-points: the device column to fit (e.g. h100-sxm)");
  check_writable(a.out, "--out");
  const sim::Hardware base = sim::load_hardware(a.base);
  sim::AttentionKernel start = base.attention_kernel;
  if (a.units > 0) start.units = a.units;
  if (a.call_s >= 0) start.call_s = a.call_s;
  if (!start.modelled())
    throw Error(fmt::format("--units is required: {} has no attention_kernel.units (the device's SM count)", base.name));
  const std::vector<tuner::AttentionPointRow> rows =
      tuner::parse_attention_points(read_regular_file(a.attention_points, "--attention-points file"), a.attention_points);
  const std::vector<sim::AttentionPoint> points = tuner::attention_points_of(
      rows, a.device, a.kernel.empty() ? std::nullopt : std::optional<std::string>(a.kernel));
  if (!(a.call_s < 1)) throw Error(fmt::format("--call-s {} must be under 1 second", a.call_s));
  const sim::AttentionFit fit = sim::fit_attention_kernel(points, start, a.call_s >= 0);
  sim::Hardware hw = base;
  hw.name = a.name.empty() ? base.name : a.name;
  hw.attention_kernel = fit.kernel;
  for (DType d : {DType::bf16, DType::fp16}) {
    hw.attention_flops_per_s.at(d) = fit.flops_per_s;
    hw.peak_flops_per_s.at(d) = std::max(hw.peak_flops_per_s.of(d), fit.flops_per_s);
  }
  std::string source = fmt::format(
      "attention_kernel and attention_flops_per_s bf16/fp16 fitted by `cptune calibrate --attention-points {} --device {}{}` "
      "to {} points (units {}, tile_rows {}{} given): long-sequence rate {:.4g} TFLOP/s, tile_keys_overhead {:.4g} keys, "
      "head_dim_overhead {:.4g}, call_s {:.3g} us; |residual| median {:.1f}%, worst {:.1f}%. Points:",
      a.attention_points, a.device, a.kernel.empty() ? "" : " --kernel " + a.kernel, points.size(), fit.kernel.units,
      fit.kernel.tile_rows, a.call_s >= 0 ? " and call_s" : "", fit.flops_per_s / 1e12, fit.kernel.tile_keys_overhead, fit.kernel.head_dim_overhead,
      fit.kernel.call_s * 1e6, 100 * fit.median_abs_residual, 100 * fit.max_abs_residual);
  std::set<std::string> sources;
  for (const tuner::AttentionPointRow& r : rows)
    if (r.device == a.device && (a.kernel.empty() || r.kernel == a.kernel)) sources.insert(r.source);
  for (const std::string& s : sources) source += "\n  " + s;
  // Replace an earlier fit's lines, keep every other line of the base.
  std::string kept;
  for (size_t begin = 0; begin <= base.source.size();) {
    const size_t end = std::min(base.source.find('\n', begin), base.source.size());
    const std::string line = base.source.substr(begin, end - begin);
    const bool earlier_fit = line.rfind("attention_kernel and attention_flops_per_s", 0) == 0 || line.rfind("  ", 0) == 0;
    if (!earlier_fit && !line.empty()) kept += (kept.empty() ? "" : "\n") + line;
    begin = end + 1;
  }
  hw.source = kept + "\n" + source;
  sim::save_hardware(hw, a.out);
  std::cout << fmt::format("{:>8} {:>6} {:>6} {:>5} {:>11} {:>11} {:>7}\n", "rows", "BxH", "D", "waves", "measured", "predicted",
                           "error");
  for (const sim::AttentionPoint& p : points) {
    const double predicted = sim::attention_call_s(p.call, fit.kernel, fit.flops_per_s);
    std::cout << fmt::format("{:>8} {:>6} {:>6} {:>5} {:>11} {:>11} {:>6.1f}%\n", p.call.query_rows, p.call.batch_heads,
                             p.call.head_dim, sim::attention_waves(p.call, fit.kernel), human_seconds(p.seconds),
                             human_seconds(predicted), 100 * (predicted - p.seconds) / p.seconds);
  }
  std::cout << fmt::format("\nrate {:.4g} TFLOP/s, tile_keys_overhead {:.4g}, head_dim_overhead {:.4g}, call_s {:.3g} us; median "
                           "|error| {:.1f}%\nwrote {} ({})\n",
                           fit.flops_per_s / 1e12, fit.kernel.tile_keys_overhead, fit.kernel.head_dim_overhead,
                           fit.kernel.call_s * 1e6, 100 * fit.median_abs_residual, a.out, hw.name);
  return 0;
}

}  // namespace

int cmd_calibrate(const Args& args) {
  CalibrateArgs a;
  po::options_description desc("calibrate options");
  desc.add_options()("world", po::value(&a.world), "ranks P to probe with (local CPU ranks unless --rendezvous)")(
      "out", po::value(&a.out), "hardware JSON file to write (for simulate, tune, validate --hardware)")(
      "base", po::value(&a.base)->default_value("cpu-gloo"),
      "hardware the fit starts from; parameters no probe exercises are kept from it")(
      "name", po::value(&a.name), "name field of the written file (default: BACKEND-pP-calibrated)")(
      "scale", po::value(&a.scale)->default_value(1.0), "multiply every probe size (tokens, bytes) by this")(
      "json", po::bool_switch(&a.json), "print the fit as JSON instead of tables")(
      "nccl-tests", po::value(&a.nccl_tests)->multitoken(),
      "[KIND=]FILE...: fit the levels to nccl-tests logs (alltoall_perf, sendrecv_perf, all_gather_perf) instead of "
      "probing; give --base the GPU preset");
  desc.add_options()("attention-points", po::value(&a.attention_points),
                     "CSV of attention calls (device,kernel,pass,mask,seqlen,batch,heads,head_dim,tflops,source): fit "
                     "the attention kernel's shape model to those of --device instead of probing")(
      "device", po::value(&a.device), "with --attention-points: the device column to fit")(
      "kernel", po::value(&a.kernel), "with --attention-points: only this kernel column (default: every kernel of the device)")(
      "units", po::value(&a.units), "with --attention-points: the device's SM count (default: --base's attention_kernel.units)")(
      "call-s", po::value(&a.call_s),
      "with --attention-points: keep a call's fixed cost at this many seconds instead of fitting it (for curves that "
      "hold batch x seqlen constant and cannot separate it from a tile's)");
  desc.add_options()("statistic", po::value(&a.statistic)->default_value("median"),
                     "time of a probe or candidate over its iterations: median, or min (the least disturbed run)");
  add_run_options(desc, a.run);
  if (!parse_args(args, desc,
                  "usage: cptune calibrate --backend gloo --world P --out profile.json [options]\n"
                  "       cptune calibrate --nccl-tests [KIND=]FILE... --base PRESET --out hw.json\n"
                  "       cptune calibrate --attention-points FILE --device NAME --base PRESET --out hw.json\n"
                  "Measures all-to-all-v, ring hops, pack copies, attention and the gather of sequence lengths on P\n"
                  "ranks, fits the cost model's latencies, bandwidths and throughputs by least squares, prints the\n"
                  "residuals and writes a hardware file."))
    return 0;
  if (!a.nccl_tests.empty()) return calibrate_from_nccl_tests(a);
  if (!a.attention_points.empty()) return calibrate_attention(a);
  check_arguments(a);
  const sim::Hardware base = sim::load_hardware(a.base);
  tuner::ProbePlan plan = tuner::ProbePlan{}.scaled(a.scale);
  const backends::ExecutorOptions counts = executor_options(a.run);
  plan.warmups = counts.warmups;
  plan.iterations = counts.iterations;
  plan.seed = counts.seed;
  plan.fastest = a.statistic == "min";

  return run_ranks(a.run, a.world, [&](backends::Comm& world, backends::Device&) {  // probes run on the host
    const std::vector<tuner::Probe> probes = tuner::measure_probes(world, plan);
    if (world.rank() != 0) return 0;
    const tuner::FitResult fit = tuner::fit_hardware(probes, base);
    const sim::Hardware written = described(fit, base, a);
    sim::save_hardware(written, a.out);
    if (a.json) {
      std::cout << fit_json(fit, written, a.out).dump(2) << std::endl;
    } else {
      print_fit(fit, base, std::cout);
      std::cout << "\nwrote " << a.out << " (" << written.name << "); use it as --hardware " << a.out << "\n";
    }
    return 0;
  }, std::cerr);
}

}  // namespace cptune::cli
