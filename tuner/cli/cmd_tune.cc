// cptune tune: measure the promising candidates of every shape on this cluster and store them.
#include <unistd.h>

#include <chrono>
#include <iostream>

#include <fmt/format.h>

#include "backends/comm/comm.h"
#include "core/error.h"
#include "core/layout.h"
#include "db/lease.h"
#include "db/store.h"
#include "sim/candidates.h"
#include "sim/hardware.h"
#include "tuner/cli/commands.h"
#include "tuner/fingerprint.h"
#include "core/format.h"
#include "tuner/cli/run_options.h"
#include "tuner/cli/shape_options.h"
#include "tuner/cli/shapes_file.h"
#include "tuner/tuner.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

// A progress bar on a terminal; plain lines in a log.
class ProgressReport {
 public:
  ProgressReport() : tty_(isatty(STDERR_FILENO) != 0), start_(clock::now()) {}

  void measuring(size_t index, size_t shapes, const AttentionShape& shape, const std::vector<LayoutChoice>& candidates,
                 size_t done, size_t total) {
    std::string names;
    for (const LayoutChoice& c : candidates) names += (names.empty() ? "" : ", ") + to_string(c);
    const double elapsed = std::chrono::duration<double>(clock::now() - start_).count();
    const std::string eta =
        measured_ > 0 ? human_seconds(elapsed / double(measured_) * double(total - done)) : std::string("?");
    const std::string line = fmt::format("[{}/{} shapes, {}/{} candidates, ETA {}] {}: measuring {}", index + 1, shapes,
                                         done, total, eta, to_string(shape), names);
    if (tty_) {
      const int width = 30;
      const int filled = total ? int(double(done) / double(total) * width) : 0;
      std::cerr << "\r\033[K[" << std::string(size_t(filled), '#') << std::string(size_t(width - filled), '.') << "] "
                << line.substr(0, 160) << std::flush;
    } else {
      std::cerr << line << std::endl;
    }
    pending_ = candidates.size();
  }

  void finished(const tuner::ShapeOutcome& outcome) {
    measured_ += outcome.skipped ? 0 : pending_;
    pending_ = 0;
    if (tty_) std::cerr << "\r\033[K";
    if (outcome.skipped) {
      std::cerr << fmt::format("{}: already stored for this fingerprint, skipped\n", to_string(outcome.shape));
      return;
    }
    const db::MeasurementRow* best = nullptr;
    for (const auto& row : outcome.rows)
      if (!best || row.median_s < best->median_s) best = &row;
    if (best)
      std::cerr << fmt::format("{}: best {} {} ({} of {} feasible candidates measured)\n", to_string(outcome.shape),
                               to_string(best->candidate), human_seconds(best->median_s), outcome.rows.size(),
                               outcome.feasible);
  }

 private:
  using clock = std::chrono::steady_clock;
  bool tty_;
  clock::time_point start_;
  size_t measured_ = 0, pending_ = 0;
};

// Returns the number of shapes nothing was measured for (no candidate fits this cluster).
size_t print_summary(const std::vector<tuner::ShapeOutcome>& outcomes, const std::string& db_path) {
  size_t unmeasured = 0;
  std::cout << fmt::format("{:<50} {:<44} {:>12} {:>10} {:>10}\n", "shape", "best", "median", "vs worst",
                           "vs ulysses");
  for (const auto& o : outcomes) {
    if (o.skipped) {
      std::cout << fmt::format("{:<50} {:<44}\n", to_string(o.shape), "(already stored, skipped)");
      continue;
    }
    const db::MeasurementRow *best = nullptr, *worst = nullptr, *ulysses = nullptr;
    for (const auto& row : o.rows) {
      if (!best || row.median_s < best->median_s) best = &row;
      if (!worst || row.median_s > worst->median_s) worst = &row;
      if (row.candidate.strategy == Strategy::ulysses) ulysses = &row;
    }
    if (!best) {
      std::cout << fmt::format("{:<50} {:<44}\n", to_string(o.shape), "(no candidate fits: nothing measured)");
      ++unmeasured;
      continue;
    }
    std::cout << fmt::format("{:<50} {:<44} {:>12} {:>9.2f}x {:>10}\n", to_string(o.shape), to_string(best->candidate),
                             human_seconds(best->median_s), worst->median_s / best->median_s,
                             ulysses ? fmt::format("{:.2f}x", ulysses->median_s / best->median_s) : "n/a");
  }
  std::cout << "stored in " << db_path << "\n";
  return unmeasured;
}

}  // namespace

int cmd_tune(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  RunArgs run;
  std::string db_path, shapes_path, hardware = "cpu-gloo";
  int top_k = 3;
  bool exhaustive = false, no_verify = false, wait = false;
  po::options_description desc("tune options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  add_run_options(desc, run);
  desc.add_options()("db", po::value(&db_path), "SQLite database to store measurements in (created if missing)")(
      "shapes", po::value(&shapes_path), "CSV of shapes (header: seq,heads,kv_heads,head_dim,v_head_dim,dtype,mask,batch)")(
      "hardware", po::value(&hardware)->default_value("cpu-gloo"),
      "hardware profile that ranks candidates: a preset name or a JSON file (e.g. from cptune calibrate)")(
      "top-k", po::value(&top_k)->default_value(3), "measure the k fastest predicted candidates (+ best of each strategy)")(
      "exhaustive", po::bool_switch(&exhaustive), "measure every feasible candidate")(
      "no-verify", po::bool_switch(&no_verify), "skip checking each candidate's output against one device")(
      "wait", po::bool_switch(&wait), "wait for another tune on the same database and cluster to finish, instead of refusing");
  if (!parse_args(args, desc,
                  "usage: cptune tune --db tune.db --world P (--shapes shapes.csv | --seq S --heads H ...) [options]"))
    return 0;
  if (db_path.empty()) throw Error("--db is required: the SQLite file to store measurements in");
  std::vector<AttentionShape> shapes;
  if (!shapes_path.empty()) {
    if (!shape.seq.empty() || !shape.seq_list.empty())
      throw Error("give either --shapes FILE or the shape flags (--seq ...), not both");
    shapes = read_shapes_file(shapes_path);
  } else {
    shapes.push_back(to_shape(shape));
  }
  reject_layout_flags(mesh, "tune");
  const Cluster cluster = to_cluster(mesh);
  tuner::TuneOptions options;
  options.db_path = db_path;
  options.hardware = sim::load_hardware(hardware);
  options.profile = sim::profile_label(options.hardware, hardware);
  options.ranks_per_node = cluster.ranks_per_node;
  options.top_k = top_k;
  options.exhaustive = exhaustive;
  options.executor = executor_options(run);
  options.executor.verify = !no_verify;
  options.predict.metadata = options.executor.metadata;  // rank candidates with the channel they run with
  options.fingerprint = local_fingerprint(run.backend, cluster.world, cluster.ranks_per_node);
  // Refuse a shape that cannot run on this world at all before starting any rank (ring lays
  // out any head count, so its refusal is the shape's fault), or whose candidates, measured
  // together, do not fit this machine's memory.
  for (size_t i = 0; i < shapes.size(); ++i) {
    try {
      Layout::build({shapes[i], cluster, resolve({Strategy::ring}, cluster)});
      const sim::Ranking ranking = sim::rank_candidates(shapes[i], cluster, options.hardware, options.predict);
      std::vector<Layout> measured;
      for (size_t c : tuner::select_candidates(ranking, top_k, exhaustive))
        measured.push_back(Layout::build({shapes[i], cluster, ranking.candidates[c].candidate}));
      if (measured.empty())
        throw Error(fmt::format("no candidate layout fits: the simulator predicts each one exceeds the {:.1f} GiB "
                                "per rank of --hardware {}; use a shorter sequence, fewer heads or more ranks",
                                double(options.hardware.device_memory_bytes) / double(1 << 30), hardware));
      check_host_memory(run, measured, options.executor.verify);
    } catch (const Error& e) {
      throw Error((shapes_path.empty() ? std::string("shape") : "shape " + std::to_string(i + 1) + " of " + shapes_path) +
                  ": " + e.what());
    }
  }
  // A bad path or file fails here, before any rank starts. One tuner per database and cluster:
  // a second would measure every missing shape again.
  const db::TuneLease lease(db_path, options.fingerprint, wait);

  return run_ranks(run, cluster.world, [&](backends::Comm& world, backends::Device& device) {
    options.executor.device = &device;
    ProgressReport report;
    tuner::TuneProgress progress;
    progress.measuring = [&](size_t i, size_t n, const AttentionShape& s, const std::vector<LayoutChoice>& c, size_t d,
                             size_t t) { report.measuring(i, n, s, c, d, t); };
    progress.finished = [&](size_t, const tuner::ShapeOutcome& o) { report.finished(o); };
    const auto outcomes = tuner::tune(shapes, options, world, progress);
    if (world.rank() != 0) return 0;
    if (const size_t unmeasured = print_summary(outcomes, db_path)) {
      std::cerr << fmt::format("error: {} shape(s) had no candidate that fits this cluster (the simulator predicts "
                               "none fits in device memory with --hardware {}); nothing was stored for them\n",
                               unmeasured, hardware);
      return 2;
    }
    return 0;
  }, std::cerr);
}

}  // namespace cptune::cli
