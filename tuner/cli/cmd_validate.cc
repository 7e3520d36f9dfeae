// cptune validate: measure every feasible candidate of held-out shapes and report how far the
// simulator (with a preset or a calibrated hardware file) is from the measurements.
#include <cmath>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backends/comm/comm.h"
#include "core/error.h"
#include "db/records.h"
#include "sim/hardware.h"
#include "tuner/cli/commands.h"
#include "core/format.h"
#include "tuner/cli/output_file.h"
#include "tuner/cli/run_options.h"
#include "tuner/cli/shape_options.h"
#include "tuner/cli/shapes_file.h"
#include "tuner/validate.h"
#include "tuner/validation_stats.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

struct ValidateArgs {
  RunArgs run;
  int64_t world = 0;
  std::string hardware = "cpu-gloo", shapes;
  bool json_switch = false, csv_switch = false;
  std::string out;  // --out FILE: where --json or --csv goes (default: printed instead of tables)
  std::string json, csv;  // the resolved destinations ("-": standard output), empty: not written
  int top_k = 3;
  double tolerance = 0.05;
  std::string statistic = "median";
};

std::string percent(double fraction) { return std::isnan(fraction) ? "n/a" : fmt::format("{:.1f}%", 100 * fraction); }
std::string number(double v) { return std::isnan(v) ? "n/a" : fmt::format("{:.3f}", v); }
std::string share(size_t n, size_t of) { return fmt::format("{}/{} ({})", n, of, percent(of ? double(n) / double(of) : NAN)); }

void print_shape(size_t index, const tuner::ShapeValidation& s, const tuner::ShapeStats& st, std::ostream& out) {
  out << fmt::format("\nshape {}: {}  tau-b {}  predicted best is measured best: {} (its time / best {:.3f})\n", index + 1,
                     to_string(s.shape), number(st.tau), st.top_is_best ? "yes" : "no",
                     st.top_over_best);
  out << fmt::format("  {:<44} {:>12} {:>12} {:>25} {:>8}\n", "candidate (predicted order)", "predicted", "measured",
                     "measured min..max", "error");
  for (const tuner::CandidateMeasurement& c : s.candidates)
    out << fmt::format("  {:<44} {:>12} {:>12} {:>25} {:>7.1f}%\n", to_string(c.candidate), human_seconds(c.predicted_s),
                       human_seconds(c.measured_s), human_seconds(c.min_s) + ".." + human_seconds(c.max_s),
                       100 * (c.predicted_s - c.measured_s) / c.measured_s);
}

void print_report(const tuner::ValidationReport& r, size_t shapes, std::ostream& out) {
  out << "\nrelative error |predicted - measured| / measured:\n";
  for (const tuner::ErrorSummary& e : r.errors)
    out << fmt::format("  {:<14} {:>4} candidates  median {:>7}  worst {:>7}\n", e.group, e.count, percent(e.median),
                       percent(e.worst));
  out << fmt::format("Kendall tau-b of candidates within a shape: median {}, mean {}\n", number(r.median_tau),
                     number(r.mean_tau));
  out << fmt::format("  over pairs measured more than {} apart ({} of {} pairs): median {}\n", percent(r.tolerance),
                     r.resolved_pairs, r.pairs, number(r.median_resolved_tau));
  out << fmt::format("predicted best = measured best: {}; predicted best within {} of measured best: {}\n",
                     share(r.top_is_best, shapes), percent(r.tolerance), share(r.top_within, shapes));
  out << fmt::format("tuner (top {} by prediction + best of each strategy) within {} of the exhaustive best: {}; "
                     "measured {} of the candidates on average, {} at most\n",
                     r.top_k, percent(r.tolerance), share(r.tuner_within, shapes), percent(r.tuner_mean_fraction),
                     percent(r.tuner_max_fraction));
  out << fmt::format("plain top {} by prediction within {}: {}; measured {} on average, {} at most\n", r.top_k,
                     percent(r.tolerance), share(r.plain_within, shapes), percent(r.plain_mean_fraction),
                     percent(r.plain_max_fraction));
  out << "plain top k:";
  for (const tuner::TopKPoint& p : r.curve)
    out << fmt::format("  k={} {} within, {} measured;", p.k, share(p.within, shapes), percent(p.mean_fraction));
  out << "\n";
}

nlohmann::json nan_as_null(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

nlohmann::json selection_json(const tuner::SelectionOutcome& o) {
  return {{"measured", o.measured}, {"candidates", o.candidates}, {"found_s", o.found_s}, {"best_s", o.best_s}};
}

nlohmann::json report_json(const std::vector<tuner::ShapeValidation>& shapes, const tuner::ValidationReport& r,
                           const sim::Hardware& hw, const ValidateArgs& a) {
  nlohmann::json out_shapes = nlohmann::json::array(), errors = nlohmann::json::array(), curve = nlohmann::json::array();
  for (size_t i = 0; i < shapes.size(); ++i) {
    nlohmann::json candidates = nlohmann::json::array();
    for (const tuner::CandidateMeasurement& c : shapes[i].candidates)
      candidates.push_back({{"candidate", to_string(c.candidate)},
                            {"strategy", to_string(c.candidate.strategy)},
                            {"predicted_s", c.predicted_s},
                            {"measured_s", c.measured_s},
                            {"min_s", c.min_s},
                            {"max_s", c.max_s},
                            {"relative_error", c.relative_error()}});
    const tuner::ShapeStats& st = r.shapes[i];
    out_shapes.push_back({{"shape", to_string(shapes[i].shape)},
                          {"candidates", candidates},
                          {"tau", nan_as_null(st.tau)},
                          {"resolved_tau", nan_as_null(st.resolved_tau)},
                          {"top_is_best", st.top_is_best},
                          {"top_over_best", st.top_over_best},
                          {"tuner", selection_json(st.tuner)},
                          {"plain_top_k", selection_json(st.plain)}});
  }
  for (const tuner::ErrorSummary& e : r.errors)
    errors.push_back({{"group", e.group}, {"count", e.count}, {"median", e.median}, {"worst", e.worst}});
  for (const tuner::TopKPoint& p : r.curve)
    curve.push_back({{"k", p.k}, {"within", p.within}, {"mean_fraction", p.mean_fraction}});
  const double n = double(shapes.size());
  return {{"schema", "cptune/validate/1"},
          {"hardware", hw.name},
          {"hardware_file", a.hardware},
          {"world", a.world},
          {"iterations", a.run.iterations},
          {"warmups", a.run.warmups},
          {"statistic", a.statistic},
          {"top_k", r.top_k},
          {"tolerance", r.tolerance},
          {"errors", errors},
          {"median_tau", nan_as_null(r.median_tau)},
          {"mean_tau", nan_as_null(r.mean_tau)},
          {"median_resolved_tau", nan_as_null(r.median_resolved_tau)},
          {"resolved_pairs", r.resolved_pairs},
          {"pairs", r.pairs},
          {"top_is_best_fraction", double(r.top_is_best) / n},
          {"top_within_fraction", double(r.top_within) / n},
          {"tuner_within_fraction", double(r.tuner_within) / n},
          {"tuner_mean_measured_fraction", r.tuner_mean_fraction},
          {"tuner_max_measured_fraction", r.tuner_max_fraction},
          {"plain_within_fraction", double(r.plain_within) / n},
          {"plain_mean_measured_fraction", r.plain_mean_fraction},
          {"plain_max_measured_fraction", r.plain_max_fraction},
          {"top_k_curve", curve},
          {"shapes", out_shapes}};
}

// One row per candidate, for scripts/plot_validation.py.
void write_csv(const std::vector<tuner::ShapeValidation>& shapes, const std::string& path) {
  std::ofstream file;
  if (path != "-") file.open(path);
  std::ostream& out = path == "-" ? std::cout : file;
  out << "shape_index,shape,strategy,candidate,predicted_s,measured_s,min_s,max_s\n";
  for (size_t i = 0; i < shapes.size(); ++i)
    for (const tuner::CandidateMeasurement& c : shapes[i].candidates)
      out << fmt::format("{},\"{}\",{},\"{}\",{:.9g},{:.9g},{:.9g},{:.9g}\n", i + 1, to_string(shapes[i].shape),
                         to_string(c.candidate.strategy), to_string(c.candidate), c.predicted_s, c.measured_s, c.min_s,
                         c.max_s);
  if (!out) throw Error("writing --csv " + path + " failed");
}

void write_json(const nlohmann::json& doc, const std::string& path) {
  if (path == "-") {
    std::cout << doc.dump(2) << std::endl;
    return;
  }
  std::ofstream out(path);
  out << doc.dump(2) << "\n";
  if (!out) throw Error("writing --json " + path + " failed");
}

// Before the switches, --json FILE and --csv FILE took a file (and --json - printed). That spelling
// keeps working for one release: the file is taken from it, with a note.
Args take_old_output_files(const Args& args, ValidateArgs& a) {
  Args rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const bool json = arg == "--json" || arg.rfind("--json=", 0) == 0;
    const bool csv = arg == "--csv" || arg.rfind("--csv=", 0) == 0;
    const size_t eq = arg.find('=');
    const bool file_follows = i + 1 < args.size() && (args[i + 1] == "-" || args[i + 1].rfind("--", 0) != 0);
    if (!(json || csv) || (eq == std::string::npos && !file_follows)) {
      rest.push_back(arg);
      continue;
    }
    const std::string flag = json ? "--json" : "--csv";
    (json ? a.json : a.csv) = eq != std::string::npos ? arg.substr(eq + 1) : args[++i];
    std::cerr << fmt::format("cptune validate: note: {} FILE is deprecated and goes in the next release; use {} "
                             "--out FILE (or {} alone to print it)\n", flag, flag, flag);
  }
  return rest;
}

}  // namespace

int cmd_validate(const Args& given_args) {
  ValidateArgs a;
  const Args args = take_old_output_files(given_args, a);
  po::options_description desc("validate options");
  desc.add_options()("world", po::value(&a.world), "ranks P (local CPU ranks unless --rendezvous)")(
      "hardware", po::value(&a.hardware)->default_value("cpu-gloo"),
      "hardware that predicts: a preset or a file from cptune calibrate")(
      "shapes", po::value(&a.shapes), "CSV of held-out shapes (as for tune); never the shapes a fit used")(
      "top", po::value(&a.top_k)->default_value(3), "N of the top-N experiment (the tuner's --top)")(
      "tolerance", po::value(&a.tolerance)->default_value(0.05, "0.05"),
      "a pick within this fraction of the best time counts as found (0.05: within 5%)")(
      "json", po::bool_switch(&a.json_switch), "the report as JSON (printed instead of tables, or to --out)")(
      "csv", po::bool_switch(&a.csv_switch), "one row per candidate as CSV, for scripts/plot_validation.py (printed, or to --out)")(
      "out", po::value(&a.out), "write the --json or --csv output to this file; the tables are printed too");
  desc.add_options()("statistic", po::value(&a.statistic)->default_value("median"),
                     "time of a probe or candidate over its iterations: median, or min (the least disturbed run)");
  add_run_options(desc, a.run);
  add_pass_option(desc, a.run);
  if (!parse_args(args, desc,
                  "usage: cptune validate --hardware profile.json --world P --shapes held_out.csv [options]\n"
                  "Measures every feasible candidate of each shape (interleaved) and compares with the prediction."))
    return 0;
  join_outside_launch(a.world, nullptr, a.run);
  if (a.world < 2) throw Error(fmt::format("--world {} must be at least 2", a.world));
  if (a.statistic != "median" && a.statistic != "min")
    throw Error("--statistic " + a.statistic + " is not one; use median or min");
  if (a.shapes.empty()) throw Error("--shapes is required: a CSV of held-out shapes");
  if (a.json_switch && a.csv_switch && !a.out.empty())
    throw Error("--json and --csv both given with one --out " + a.out + "; choose one");
  if (!a.out.empty() && !a.json_switch && !a.csv_switch) throw Error("--out " + a.out + " needs --json or --csv: what to write");
  if (a.json_switch) a.json = a.out.empty() ? "-" : a.out;
  if (a.csv_switch) a.csv = a.out.empty() ? "-" : a.out;
  if (a.json == "-" && a.csv == "-") throw Error("--json and --csv both printed; choose one, or write one with --out");
  if (!a.json.empty() && a.json != "-") check_writable(a.json, "--json");
  if (!a.csv.empty() && a.csv != "-") check_writable(a.csv, "--csv");
  tuner::ValidateOptions options;
  options.hardware = sim::load_hardware(a.hardware);
  options.ranks_per_node = a.world;
  options.executor = executor_options(a.run);
  options.predict.metadata = parse_metadata_channel(a.run.metadata);
  options.predict.pass = options.executor.pass;  // predicted and measured: the same pass
  options.fastest = a.statistic == "min";
  const std::vector<AttentionShape> shapes = read_shapes_file(a.shapes);
  tuner::summarize_validation({}, a.top_k, a.tolerance);  // rejects a bad --top or --tolerance now
  options.measuring = [](size_t s, size_t n, size_t candidates) {
    std::cerr << fmt::format("[{}/{}] measuring {} candidates\n", s + 1, n, candidates);
  };

  return run_ranks(a.run, a.world, [&](backends::Comm& world, backends::Device& device) {
    options.executor.device = &device;
    const auto measured = tuner::measure_every_candidate(shapes, options, world);
    if (world.rank() != 0) return 0;
    const tuner::ValidationReport report = tuner::summarize_validation(measured, a.top_k, a.tolerance);
    if (!a.csv.empty()) write_csv(measured, a.csv);
    if (!a.json.empty()) write_json(report_json(measured, report, options.hardware, a), a.json);
    if (a.json == "-" || a.csv == "-") return 0;
    std::cout << fmt::format("validate: hardware {} ({}), world {}, {} shapes, every candidate {} iterations after {} "
                             "warm-up(s), interleaved; measured = {} of the slowest rank\n",
                             options.hardware.name, a.hardware, a.world, measured.size(), a.run.iterations,
                             a.run.warmups, a.statistic);
    for (size_t i = 0; i < measured.size(); ++i) print_shape(i, measured[i], report.shapes[i], std::cout);
    print_report(report, measured.size(), std::cout);
    return 0;
  }, std::cerr);
}

}  // namespace cptune::cli
