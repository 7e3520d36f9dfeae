// cptune tune: measure the promising candidates of every shape on this cluster and store them.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <iostream>

#include <fmt/format.h>

#include "backends/comm/comm.h"
#include "backends/comm/rendezvous.h"
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

// "42s", "12m05s", "3h07m": an ETA short enough for the progress line.
std::string eta_text(double seconds) {
  if (!(seconds >= 0) || seconds > 360000) return "?";
  const auto s = int64_t(seconds + 0.5);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
}

// A progress line on a terminal, redrawn after every measuring round with an ETA from the rounds
// measured so far (it fits 80 columns); plain lines in a log, one per shape.
class ProgressReport {
 public:
  static constexpr size_t kColumns = 79;  // the cursor stays on an 80-column line

  ProgressReport() : tty_(isatty(STDERR_FILENO) != 0), start_(clock::now()) {}

  void measuring(size_t index, size_t shapes, const AttentionShape& shape, const std::vector<LayoutChoice>& candidates,
                 size_t done, size_t total) {
    index_ = index;
    shapes_ = shapes;
    shape_ = to_string(shape);
    pending_ = candidates.size();
    first_round_ = true;
    if (tty_) {
      draw(done, total);
      return;
    }
    std::string names;
    for (const LayoutChoice& c : candidates) names += (names.empty() ? "" : ", ") + to_string(c);
    std::cerr << fmt::format("[{}/{} shapes, {}/{} candidates, ETA {}] {}: measuring {}", index + 1, shapes, done,
                             total, eta_, shape_, names)
              << std::endl;
  }

  // Candidate runs (one candidate once) done and in all.
  void round(size_t done, size_t total) {
    measured_runs_ += first_round_ ? pending_ : done - last_done_;
    first_round_ = false;
    last_done_ = done;
    const double elapsed = std::chrono::duration<double>(clock::now() - start_).count();
    eta_ = eta_text(elapsed / double(measured_runs_) * double(total - done));
    if (tty_) draw(done, total);
  }

  void finished(const tuner::ShapeOutcome& outcome) {
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

  // "[#####...........] 37% 12/40 ETA 1m05s 4097 x 25/5 ...", cut to kColumns.
  static std::string line(double fraction, size_t index, size_t shapes, const std::string& eta, const std::string& shape) {
    constexpr int kBar = 16;
    const int filled = std::clamp(int(fraction * kBar), 0, kBar);
    std::string out = "[" + std::string(size_t(filled), '#') + std::string(size_t(kBar - filled), '.') + "] " +
                      fmt::format("{:>3}% {}/{} ETA {} {}", int(fraction * 100), index + 1, shapes, eta, shape);
    if (out.size() > kColumns) out.resize(kColumns);
    return out;
  }

 private:
  void draw(size_t done, size_t total) {
    const double fraction = total ? double(done) / double(total) : 0;
    std::cerr << "\r\033[K" << line(fraction, index_, shapes_, eta_, shape_) << std::flush;
  }

  using clock = std::chrono::steady_clock;
  bool tty_;
  clock::time_point start_;
  size_t index_ = 0, shapes_ = 0, pending_ = 0, measured_runs_ = 0, last_done_ = 0;
  bool first_round_ = true;
  std::string shape_, eta_ = "?";
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

// The shapes of --shapes FILE, or the one the shape flags name.
std::vector<AttentionShape> shapes_to_tune(const ShapeArgs& shape, const std::string& shapes_path) {
  if (shapes_path.empty()) return {to_shape(shape)};
  if (!shape.seq.empty() || !shape.seq_list.empty())
    throw Error("give either --shapes FILE or the shape flags (--seq ...), not both");
  return read_shapes_file(shapes_path);
}

// Refuses, before any rank starts, a shape that cannot run on this world at all (ring lays out
// any head count, so its refusal is the shape's fault), of which no candidate fits the
// hardware's device memory, or whose candidates, measured together, do not fit this machine.
void check_shapes_fit(const std::vector<AttentionShape>& shapes, const Cluster& cluster,
                      const tuner::TuneOptions& options, const RunArgs& run, const std::string& shapes_path,
                      const std::string& hardware) {
  for (size_t i = 0; i < shapes.size(); ++i) {
    try {
      Layout::build({shapes[i], cluster, {Strategy::ring}});
      const sim::Ranking ranking =
          sim::rank_candidates(shapes[i], cluster, options.hardware, options.predict, options.constraints);
      std::vector<Layout> measured;
      for (size_t c : tuner::select_candidates(ranking, options.top_k, options.exhaustive))
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
}

}  // namespace

int cmd_tune(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  RunArgs run;
  ConstraintArgs constraint;
  std::string db_path, shapes_path, hardware = "cpu-gloo";
  int top_k = 3;
  double lease_expiry_s = 60;
  bool exhaustive = false, no_verify = false, wait = false;
  po::options_description desc("tune options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  add_run_options(desc, run);
  add_pass_option(desc, run);
  add_constraint_options(desc, constraint);
  desc.add_options()("db", po::value(&db_path), "SQLite database to store measurements in (created if missing)")(
      "shapes", po::value(&shapes_path), "CSV of shapes (header: seq,heads,kv_heads,head_dim,v_head_dim,dtype,mask,batch)")(
      "hardware", po::value(&hardware)->default_value("cpu-gloo"),
      "hardware profile that ranks candidates: a preset name or a JSON file (e.g. from cptune calibrate)")(
      "top", po::value(&top_k)->default_value(3), "measure the N fastest predicted candidates (+ best of each strategy)")(
      "exhaustive", po::bool_switch(&exhaustive), "measure every feasible candidate")(
      "no-verify", po::bool_switch(&no_verify), "skip checking each candidate's output against one device")(
      "wait", po::bool_switch(&wait), "wait for another tune on the same database and cluster to finish, instead of refusing")(
      "lease-expiry", po::value(&lease_expiry_s)->default_value(60),
      "seconds after which another tune's lease whose heartbeat stopped is taken over (any host)");
  if (!parse_args(args, desc,
                  "usage: cptune tune --db tune.db --world P (--shapes shapes.csv | --seq S --heads H ...) [options]"))
    return 0;
  if (db_path.empty()) throw Error("--db is required: the SQLite file to store measurements in");
  if (no_verify && run.verify) throw Error("--verify and --no-verify both given; tune verifies unless --no-verify");
  join_outside_launch(mesh.world, &mesh.ranks_per_node, run);
  const Cluster cluster = to_cluster(mesh);
  const std::vector<AttentionShape> shapes = shapes_to_tune(shape, shapes_path);
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
  options.predict.pass = options.executor.pass;          // and the pass they are timed on
  options.fingerprint = tuner::local_fingerprint(run.backend, cluster.world, cluster.ranks_per_node);
  options.constraints = to_constraints(constraint, mesh);
  options.constraints.backward = has_backward(options.executor.pass);  // an engine's forward-only layouts: not measured
  check_shapes_fit(shapes, cluster, options, run, shapes_path, hardware);
  // A bad path or file fails here, before any rank starts. One tuner per database and cluster:
  // a second would measure every missing shape again. Under an outside launcher every process
  // runs this command: rank 0, the one that writes the store, holds the lease.
  const std::optional<backends::LaunchEnv> launch = backends::launch_env_from_environment();
  if (!(lease_expiry_s >= 1 && lease_expiry_s <= 86400))
    throw Error(fmt::format("--lease-expiry {} must be between 1 and 86400 seconds", lease_expiry_s));
  db::LeaseTiming lease_timing;
  lease_timing.expiry = std::chrono::milliseconds(int64_t(lease_expiry_s * 1000));
  lease_timing.heartbeat = std::min(lease_timing.heartbeat, lease_timing.expiry / 4);
  std::optional<db::TuneLease> lease;
  if (!launch || launch->rank == 0) lease.emplace(db_path, options.fingerprint, wait, lease_timing);

  return run_ranks(run, cluster.world, [&](backends::Comm& world, backends::Device& device) {
    options.executor.device = &device;
    ProgressReport report;
    tuner::TuneProgress progress;
    progress.measuring = [&](size_t i, size_t n, const AttentionShape& s, const std::vector<LayoutChoice>& c, size_t d,
                             size_t t) { report.measuring(i, n, s, c, d, t); };
    progress.finished = [&](size_t, const tuner::ShapeOutcome& o) { report.finished(o); };
    progress.round = [&](size_t done, size_t total) { report.round(done, total); };
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
