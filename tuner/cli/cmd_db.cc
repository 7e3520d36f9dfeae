// cptune db: reads a tune database without SQL. list: the fingerprints and how much each
// holds; show: the best layout per shape; export: every measurement as CSV or JSON.
#include <algorithm>
#include <iostream>
#include <map>
#include <optional>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/layout_json.h"
#include "db/lease.h"
#include "db/store.h"
#include "tuner/cli/commands.h"
#include "core/format.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

constexpr const char* kUsage =
    "usage: cptune db list --db FILE\n"
    "       cptune db show --db FILE [--fingerprint ID]\n"
    "       cptune db export --db FILE (--csv | --json)\n"
    "       cptune db check --db FILE   (exit 0: sound; 2: damaged, the first problem named)";

// Column layouts of the list and show tables, shared by the header and the rows.
constexpr std::string_view kListRow = "{:>4}  {:<8} {:<24} {:>5} {:>5} {:>5} {:>7} {:>12}  {:<24}  {:<8} {}\n";
constexpr std::string_view kShowRow =
    "{:>3} {:>5} {:<24} {:>3} {:>4} {:>4} {:>4} {:>4} {:>14} {:<7}  {:<12} {:>4} {:>4} {:<13} {:<10} {:>12} {:>8}\n";

void list(const db::Store& store) {
  const auto fingerprints = store.fingerprints();
  if (fingerprints.empty()) {
    std::cout << fmt::format("{}: no measurements yet\n", store.path());
    return;
  }
  std::cout << fmt::format(kListRow, "id", "backend", "device", "world", "G", "nodes", "shapes", "measurements",
                           "last measured", "cptune", "libraries");
  for (const auto& s : fingerprints) {
    const db::Fingerprint& fp = s.fingerprint;
    std::cout << fmt::format(kListRow, s.id, fp.backend, fp.device_model, fp.cluster.world, fp.cluster.ranks_per_node, fp.cluster.nodes(),
                             s.shapes, s.measurements, s.last_measured_at, fp.cptune_version, fp.library_versions);
  }
}

// Shapes of one family together, shortest first: how a reader compares sequence lengths.
auto family_order(const db::BestRow& r) {
  const AttentionShape& s = r.shape;
  return std::make_tuple(r.fingerprint_id, int(s.dtype), int(s.mask.kind), s.mask.window,
                         s.mask.blocks ? s.mask.blocks->hash() : 0, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim,
                         s.batch, s.total_tokens(), s.seq_lens, int(r.pass));
}

// The mask as the table prints it: its text, or for an inline table too long for a column
// "blocks:N#HASH" (export prints the whole text, which reads back).
constexpr size_t kMaskColumn = 24;
std::string mask_cell(const Mask& mask) {
  const std::string text = to_string(mask);
  if (text.size() <= kMaskColumn || !mask.blocks) return text;
  return fmt::format("blocks:{}#{:08x}", mask.blocks->n(), mask.blocks->hash() & 0xffffffffu);
}

void show(const db::Store& store, std::optional<int64_t> fingerprint_id) {
  if (fingerprint_id) {
    const auto fingerprints = store.fingerprints();
    if (std::none_of(fingerprints.begin(), fingerprints.end(), [&](const auto& f) { return f.id == *fingerprint_id; }))
      throw Error(fmt::format("database '{}' has no fingerprint {}; 'cptune db list --db {}' shows the ids",
                              store.path(), *fingerprint_id, store.path()));
  }
  std::vector<db::BestRow> rows = store.best(fingerprint_id);
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return family_order(a) < family_order(b); });
  std::cout << fmt::format(kShowRow, "fp", "dtype", "mask", "B", "Hq", "Hkv", "D", "Dv", "seq", "pass", "strategy", "U", "R",
                           "order", "heads", "median", "measured");
  for (const db::BestRow& r : rows) {
    const AttentionShape& s = r.shape;
    const LayoutChoice& c = r.candidate;
    std::cout << fmt::format(kShowRow, r.fingerprint_id, to_string(s.dtype), mask_cell(s.mask), s.batch, s.q_heads,
                             s.kv_heads, s.head_dim, s.v_head_dim, seq_lens_text(s.seq_lens), to_string(r.pass), to_string(c.strategy),
                             c.ulysses, c.ring, to_string(c.order), to_string(c.head_policy), human_seconds(r.median_s),
                             r.measurements);
  }
  if (rows.empty()) std::cout << "(no measurements)\n";
  if (std::any_of(rows.begin(), rows.end(), [](const auto& r) { return mask_cell(r.shape.mask) != to_string(r.shape.mask); }))
    std::cout << "blocks:N#HASH: a block table too long for the column; `cptune db export` prints its text\n";
}

// One measurement as an ordered JSON object; the CSV columns are its keys, in this order.
nlohmann::ordered_json export_row(const db::StoredMeasurement& m, const db::Fingerprint& fp) {
  const AttentionShape& s = m.shape;
  const db::MeasurementRow& r = m.row;
  const auto optional = [](const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); };
  return nlohmann::ordered_json{
      {"measurement_id", m.id},         {"fingerprint_id", m.fingerprint_id},
      {"backend", fp.backend},          {"device_model", fp.device_model},
      {"world", fp.cluster.world},      {"ranks_per_node", fp.cluster.ranks_per_node},
      {"nodes", fp.cluster.nodes()},              {"library_versions", fp.library_versions},
      {"cptune_version", fp.cptune_version}, {"batch", s.batch},
      {"seq_lens", s.seq_lens},         {"q_heads", s.q_heads},
      {"kv_heads", s.kv_heads},         {"head_dim", s.head_dim},
      {"v_head_dim", s.v_head_dim},     {"dtype", to_string(s.dtype)},
      {"mask", to_string(s.mask)},      {"strategy", to_string(r.candidate.strategy)},
      {"ulysses", r.candidate.ulysses}, {"ring", r.candidate.ring},
      {"order", to_string(r.candidate.order)}, {"head_policy", to_string(r.candidate.head_policy)},
      {"pass", to_string(m.pass)},
      {"median_s", r.median_s},         {"min_s", r.min_s},
      {"max_s", r.max_s},               {"iterations", r.iterations},
      {"phase_medians_s", to_json(r.phase_medians_s)}, {"max_abs_err", optional(r.verify_max_abs_error)},
      {"predicted_s", optional(r.predicted_s)}, {"profile", r.profile},
      {"measured_at", r.measured_at},  {"schema", "cptune/measurement/1"}};
}

std::string csv_text(const nlohmann::ordered_json& value) {
  if (value.is_null()) return "";
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) return seq_lens_text(value.get<std::vector<int64_t>>());
  return value.dump();  // numbers round-trip; phase medians stay a JSON object
}

// RFC 4180: quote a field holding a comma, a quote or a line break; double inner quotes.
std::string csv_field(const nlohmann::ordered_json& value) {
  const std::string text = csv_text(value);
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char ch : text) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return quoted + "\"";
}

void export_measurements(const db::Store& store, bool csv) {
  std::map<int64_t, db::Fingerprint> fingerprints;
  for (const auto& s : store.fingerprints()) fingerprints[s.id] = s.fingerprint;
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const db::StoredMeasurement& m : store.measurements())
    rows.push_back(export_row(m, fingerprints[m.fingerprint_id]));
  if (!csv) {
    std::cout << rows.dump(2) << "\n";
    return;
  }
  const nlohmann::ordered_json header = export_row(db::StoredMeasurement{}, db::Fingerprint{});
  std::string line;
  for (const auto& item : header.items()) line += (line.empty() ? "" : ",") + item.key();
  std::cout << line << "\n";
  for (const auto& row : rows) {
    line.clear();
    bool first = true;
    for (const auto& item : row.items()) {
      line += (first ? "" : ",") + csv_field(item.value());
      first = false;
    }
    std::cout << line << "\n";
  }
}

// Every check a reader makes, on every row: the file's integrity, its schema, then each row of
// each table read and validated (db/store.cc RowReader) and every reference resolved. Damage
// throws Error (exit 2).
void check(const db::Store& store) {
  const std::vector<std::string> problems = store.integrity_problems();
  if (!problems.empty()) {
    std::string text;
    for (size_t i = 0; i < problems.size() && i < 10; ++i) text += "\n  " + problems[i];
    throw Error(fmt::format("database '{}' is damaged: integrity_check reports {} problem(s):{}", store.path(),
                            problems.size(), text));
  }
  const db::Store::RowCounts counts = store.check_rows();
  std::cout << fmt::format("{}: ok (integrity, schema, references and every row checked: {} fingerprint(s), {} "
                           "shape(s), {} measurement(s))\n",
                           store.path(), counts.fingerprints, counts.shapes, counts.measurements);
}

// The tune leases held on the database: who measures into it now, and how recently it said so.
void show_leases(const std::string& path) {
  for (const db::LeaseRow& l : db::read_leases(path))
    std::cout << fmt::format("lease: {} held by pid {} on {} since {}, heartbeat {:.0f} s ago\n", l.fingerprint,
                             l.holder.pid, l.holder.host, l.acquired_at, l.heartbeat_age_s);
}

}  // namespace

int cmd_db(const Args& args) {
  if (args.empty()) throw Error(std::string("cptune db needs an action: list, show, export or check\n") + kUsage);
  const std::string& action = args[0];
  std::string path;
  int64_t fingerprint_id = 0;
  bool csv = false, json = false;
  po::options_description desc("db options");
  desc.add_options()("db", po::value(&path)->required(), "database written by cptune tune")(
      "fingerprint", po::value(&fingerprint_id), "show: only this fingerprint (an id from cptune db list)")(
      "csv", po::bool_switch(&csv), "export: CSV, one measurement per line")(
      "json", po::bool_switch(&json), "export: a JSON array, one object per measurement");
  if (action == "--help" || action == "-h") {
    std::cout << kUsage << "\n\n" << desc << "\n";
    return 0;
  }
  const auto vm = parse_args(Args(args.begin() + 1, args.end()), desc, kUsage);
  if (!vm) return 0;
  if (action == "list") {
    list(db::Store::open_read_only(path));
  } else if (action == "show") {
    show(db::Store::open_read_only(path), vm->count("fingerprint") ? std::optional(fingerprint_id) : std::nullopt);
    show_leases(path);
  } else if (action == "check") {
    check(db::Store::open_read_only(path));
  } else if (action == "export") {
    if (csv == json) throw Error("cptune db export needs exactly one of --csv and --json");
    export_measurements(db::Store::open_read_only(path), csv);
  } else {
    throw Error("unknown db action '" + action + "'; choose list, show, export or check\n" + kUsage);
  }
  return 0;
}

}  // namespace cptune::cli
