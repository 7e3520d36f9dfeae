#include "db/store.h"

#include <cmath>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/layout_json.h"
#include "db/schema.h"
#include "db/sqlite.h"

namespace cptune::db {
namespace {

// Parameter order shared by the insert and the select of each table, so one bind helper
// serves both: fingerprint ?1..?7, shape ?1..?8, candidate ?1..?5.
constexpr const char* kInsertFingerprint =
    "INSERT INTO fingerprints (backend, device_model, world, ranks_per_node, nodes, library_versions, cptune_version) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING";
constexpr const char* kSelectFingerprint =
    "SELECT id FROM fingerprints WHERE backend = ?1 AND device_model = ?2 AND world = ?3 AND ranks_per_node = ?4 "
    "AND nodes = ?5 AND library_versions = ?6 AND cptune_version = ?7";
constexpr const char* kInsertShape =
    "INSERT INTO shapes (batch, seq_lens, q_heads, kv_heads, head_dim, v_head_dim, dtype, mask, total_tokens) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING";
constexpr const char* kSelectShape =
    "SELECT id FROM shapes WHERE batch = ?1 AND seq_lens = ?2 AND q_heads = ?3 AND kv_heads = ?4 AND head_dim = ?5 "
    "AND v_head_dim = ?6 AND dtype = ?7 AND mask = ?8";
constexpr const char* kInsertCandidate =
    "INSERT INTO candidates (strategy, ulysses, ring, rank_order, head_policy) VALUES (?1, ?2, ?3, ?4, ?5) "
    "ON CONFLICT DO NOTHING";
constexpr const char* kSelectCandidate =
    "SELECT id FROM candidates WHERE strategy = ?1 AND ulysses = ?2 AND ring = ?3 AND rank_order = ?4 "
    "AND head_policy = ?5";
constexpr const char* kInsertMeasurement =
    "INSERT INTO measurements (fingerprint_id, shape_id, candidate_id, median_s, min_s, max_s, iterations, "
    "phase_medians_s, verify_max_abs_error, predicted_s, profile, measured_at, pass) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, "
    "coalesce(nullif(?12, ''), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), ?13)";

void bind_fingerprint(Statement& st, const Fingerprint& fp) {
  st.bind(1, fp.backend).bind(2, fp.device_model).bind(3, fp.cluster.world).bind(4, fp.cluster.ranks_per_node);
  st.bind(5, fp.cluster.nodes());
  st.bind(6, fp.library_versions).bind(7, fp.cptune_version);
}

// A shape as the shapes table keys it: the mask by its stored text (stored_mask_text).
struct ShapeKey {
  const AttentionShape& shape;
  std::string mask;
};

void bind_shape(Statement& st, const ShapeKey& k) {
  const AttentionShape& s = k.shape;
  st.bind(1, s.batch).bind(2, seq_lens_text(s.seq_lens)).bind(3, s.q_heads).bind(4, s.kv_heads);
  st.bind(5, s.head_dim).bind(6, s.v_head_dim).bind(7, to_string(s.dtype)).bind(8, k.mask);
}

// The stored row also carries the total, which identifies nothing (it follows from seq_lens).
void bind_shape_row(Statement& st, const ShapeKey& k) {
  bind_shape(st, k);
  st.bind(9, k.shape.total_tokens());
}

// A stored mask is self-contained text: a table is stored inline ("blocks:N:ROWS"), never as a
// file name, so reading a row never opens a file.
Mask parse_stored_mask(const std::string& text) {
  if (names_table_file(text))
    throw Error("mask '" + text.substr(0, 60) + "' names a table file; a stored table is inline (blocks:N:ROWS)");
  return parse_mask(text);
}

// The text a mask is stored under. Equal block tables are one mask (Mask::==) whatever their
// text ("star:4", a file with its cells): a table equal to one already stored takes that row's
// text, so has_shape finds it and the table holds one row per shape. Other masks: to_string.
std::string stored_mask_text(const Connection& conn, const Mask& mask) {
  std::string text = to_string(mask);
  if (mask.kind != MaskKind::blocks) return text;
  Statement st(conn, "SELECT DISTINCT mask FROM shapes WHERE mask GLOB '*:*' AND mask NOT GLOB 'sliding*'");
  while (st.step()) {
    const std::string stored = st.column_text(0);
    if (stored == text) return text;
    try {
      if (parse_stored_mask(stored) == mask) return stored;
    } catch (const Error&) {
      // a damaged row: readers name it; it is no match
    }
  }
  return text;
}

void bind_candidate(Statement& st, const LayoutChoice& c) {
  st.bind(1, to_string(c.strategy)).bind(2, c.ulysses).bind(3, c.ring).bind(4, to_string(c.order));
  st.bind(5, to_string(c.head_policy));
}

std::optional<int64_t> select_id(Statement& select) {
  std::optional<int64_t> id;
  if (select.step()) id = select.column_int(0);
  select.reset();
  return id;
}

// Insert-or-ignore, then read the id: the row may come from this call or another tuner.
template <typename Key, typename BindInsert, typename BindSelect>
int64_t upsert_id(Statement& insert, Statement& select, const Key& key, BindInsert bind_insert,
                  BindSelect bind_select) {
  bind_insert(insert, key);
  insert.run();
  insert.reset();
  bind_select(select, key);
  return *select_id(select);
}

// Phase medians as a JSON object keyed by core::Phase names ("qkv", "attention", ...).
std::string phases_json(const std::map<Phase, double>& phases) { return to_json(phases).dump(); }

// Rows written before the phase vocabulary was one (cptune 0.1) used the executor's own names.
Phase phase_of_stored_name(const std::string& name) {
  static const std::map<std::string, Phase, std::less<>> legacy{
      {"meta", Phase::gather}, {"qkv_a2a", Phase::qkv}, {"allgather_kv", Phase::allgather}, {"out_a2a", Phase::o}};
  const auto it = legacy.find(name);
  return it != legacy.end() ? it->second : parse_phase(name);
}

std::map<Phase, double> parse_phases(const std::string& text, int64_t measurement_id) {
  try {
    std::map<Phase, double> out;
    for (const auto& [name, seconds] : nlohmann::json::parse(text).get<std::map<std::string, double>>())
      out[phase_of_stored_name(name)] = seconds;
    return out;
  } catch (const std::exception& e) {
    throw Error("measurement " + std::to_string(measurement_id) + " has unreadable phase medians '" + text +
                "' (" + e.what() + "); the database was edited by hand");
  }
}

// Reads the columns of one stored row and refuses what cptune never writes: a value of the
// wrong SQL type (text in a number column reads as 0 otherwise), a count below 1, a time that
// is not finite and positive. A hand-edited or damaged row is named by table and id.
class RowReader {
 public:
  RowReader(const Statement& st, const std::string& path, const char* table, int64_t id)
      : st_(st), path_(path), table_(table), id_(id) {}

  int64_t count(const char* name, int64_t max = INT64_MAX) const {
    const int col = st_.column(name);
    if (st_.column_type(col) != Statement::Type::integer) fail(std::string("column ") + name + " is not an integer");
    const int64_t v = st_.column_int(col);
    if (v < 1 || v > max)
      fail(std::string("column ") + name + " is " + std::to_string(v) + ", outside 1.." + std::to_string(max));
    return v;
  }
  double seconds(const char* name) const {
    const int col = st_.column(name);
    const Statement::Type type = st_.column_type(col);
    if (type != Statement::Type::real && type != Statement::Type::integer)
      fail(std::string("column ") + name + " is not a number");
    const double v = st_.column_double(col);
    if (!std::isfinite(v) || v <= 0)
      fail(std::string("column ") + name + " is " + std::to_string(v) + ", not a positive time");
    return v;
  }
  std::optional<double> optional_number(const char* name) const {
    const int col = st_.column(name);
    const Statement::Type type = st_.column_type(col);
    if (type == Statement::Type::null) return std::nullopt;
    if (type != Statement::Type::real && type != Statement::Type::integer)
      fail(std::string("column ") + name + " is not a number");
    const double v = st_.column_double(col);
    if (!std::isfinite(v) || v < 0) fail(std::string("column ") + name + " is " + std::to_string(v));
    return v;
  }
  std::string text(const char* name) const {
    const int col = st_.column(name);
    if (st_.column_type(col) != Statement::Type::text) fail(std::string("column ") + name + " is not text");
    return st_.column_text(col);
  }
  // Runs parse (a core parser) on the column's text; its Error names the row.
  template <typename Parse>
  auto parsed(const char* name, Parse parse) const {
    const std::string value = text(name);
    try {
      return parse(value);
    } catch (const Error& e) {
      const std::string what = e.what();  // it may quote the whole value: a part is enough
      fail(std::string("column ") + name + ": " + (what.size() <= 300 ? what : what.substr(0, 300) + "..."));
    }
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw Error("database '" + path_ + "' is damaged: table " + table_ + " row " + std::to_string(id_) + ": " + why +
                "; restore it from a copy or tune again into a new file ('cptune db check' tests the whole file)");
  }

 private:
  const Statement& st_;
  const std::string& path_;
  const char* table_;
  int64_t id_;
};

// Masks read so far by their stored text: rows of one mask share one parse and one table.
using MaskCache = std::unordered_map<std::string, Mask>;

// Columns batch, seq_lens, q_heads, kv_heads, head_dim, v_head_dim, dtype and mask of the
// shapes row `row` reads.
AttentionShape read_shape(const RowReader& row, MaskCache& masks) {
  AttentionShape s;
  s.batch = row.count("batch", kMaxBatch);
  s.seq_lens = row.parsed("seq_lens", [](const std::string& t) { return parse_seq_lens(t); });
  s.q_heads = row.count("q_heads", kMaxHeads);
  s.kv_heads = row.count("kv_heads", kMaxHeads);
  s.head_dim = row.count("head_dim", kMaxHeadDim);
  s.v_head_dim = row.count("v_head_dim", kMaxHeadDim);
  s.dtype = row.parsed("dtype", [](const std::string& t) { return parse_dtype(t); });
  s.mask = row.parsed("mask", [&](const std::string& t) {
    const auto it = masks.find(t);
    return it != masks.end() ? it->second : masks.emplace(t, parse_stored_mask(t)).first->second;
  });
  try {
    check_limits(view_of(s));  // sizes and GQA
  } catch (const Error& e) {
    row.fail(e.what());
  }
  return s;
}

// Columns strategy, ulysses, ring, rank_order and head_policy of the candidates row `row`
// reads; U x R must be the world of the fingerprint it was measured on.
LayoutChoice read_candidate(const RowReader& row, int64_t world) {
  LayoutChoice c;
  c.strategy = row.parsed("strategy", [](const std::string& t) { return parse_strategy(t); });
  c.ulysses = row.count("ulysses", kMaxWorld);
  c.ring = row.count("ring", kMaxWorld);
  c.order = row.parsed("rank_order", [](const std::string& t) { return parse_rank_order(t); });
  c.head_policy = row.parsed("head_policy", [](const std::string& t) { return parse_head_policy(t); });
  if (c.ulysses * c.ring != world)
    row.fail("ulysses " + std::to_string(c.ulysses) + " x ring " + std::to_string(c.ring) + " is not the world " +
             std::to_string(world) + " it was measured on");
  return c;
}

}  // namespace

// Statements prepared once per Store: a tuner records thousands of rows.
struct Store::Writer {
  explicit Writer(const Connection& c)
      : insert_fingerprint(c, kInsertFingerprint),
        select_fingerprint(c, kSelectFingerprint),
        insert_shape(c, kInsertShape),
        select_shape(c, kSelectShape),
        insert_candidate(c, kInsertCandidate),
        select_candidate(c, kSelectCandidate),
        insert_measurement(c, kInsertMeasurement) {}

  Statement insert_fingerprint, select_fingerprint, insert_shape, select_shape, insert_candidate, select_candidate,
      insert_measurement;
};

Store::Store(std::unique_ptr<Connection> conn) : conn_(std::move(conn)) {}
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;
Store::~Store() = default;

Store Store::open(const std::string& path) {
  Store store(std::make_unique<Connection>(path, OpenMode::read_write));
  // The rows are checked as the file's own version reads them, before the migration.
  open_for_writing(*store.conn_, [&] {
    store.version_ = schema_version(*store.conn_);
    store.check_rows();
  });
  store.version_ = schema_version(*store.conn_);
  return store;
}

Store Store::open_read_only(const std::string& path) {
  auto conn = std::make_unique<Connection>(path, OpenMode::read_only);
  check_for_reading(*conn);
  Store store(std::move(conn));
  store.version_ = schema_version(*store.conn_);
  return store;
}

const std::string& Store::path() const { return conn_->path(); }

const char* Store::pass_column(const char* table) const {
  if (version_ < 4) return "'fwd'";
  return std::string_view(table) == "b" ? "b.pass" : "m.pass";
}

void Store::record_shape(const Fingerprint& fp, const AttentionShape& shape, const std::vector<MeasurementRow>& rows,
                         Pass pass) {
  if (rows.empty()) return;
  const auto positive = [](double s) { return std::isfinite(s) && s > 0; };
  const auto unset_or_finite = [](const std::optional<double>& v) { return !v || (std::isfinite(*v) && *v >= 0); };
  for (const MeasurementRow& row : rows)  // what readers refuse (RowReader) is never written
    if (row.candidate.ulysses < 1 || row.candidate.ring < 1 ||
        row.candidate.ulysses * row.candidate.ring != fp.cluster.world || !positive(row.median_s) ||
        !positive(row.min_s) || !positive(row.max_s) || row.iterations < 1 ||
        !unset_or_finite(row.verify_max_abs_error) || !unset_or_finite(row.predicted_s))
      throw Error("measurement of " + to_string(row.candidate) + " (median " + std::to_string(row.median_s) +
                  " s, min " + std::to_string(row.min_s) + " s, max " + std::to_string(row.max_s) + " s, " +
                  std::to_string(row.iterations) + " iterations) does not fit world " +
                  std::to_string(fp.cluster.world) + " or is not a positive time");
  if (!writer_) writer_ = std::make_unique<Writer>(*conn_);
  Writer& w = *writer_;
  Transaction tx(*conn_, Transaction::Kind::write);
  const int64_t fingerprint_id =
      upsert_id(w.insert_fingerprint, w.select_fingerprint, fp, bind_fingerprint, bind_fingerprint);
  const ShapeKey key{shape, stored_mask_text(*conn_, shape.mask)};
  const int64_t shape_id = upsert_id(w.insert_shape, w.select_shape, key, bind_shape_row, bind_shape);
  for (const MeasurementRow& row : rows) {
    const int64_t candidate_id =
        upsert_id(w.insert_candidate, w.select_candidate, row.candidate, bind_candidate, bind_candidate);
    Statement& m = w.insert_measurement;
    m.bind(1, fingerprint_id).bind(2, shape_id).bind(3, candidate_id);
    m.bind(4, row.median_s).bind(5, row.min_s).bind(6, row.max_s).bind(7, row.iterations);
    m.bind(8, phases_json(row.phase_medians_s)).bind(9, row.verify_max_abs_error).bind(10, row.predicted_s);
    m.bind(11, row.profile).bind(12, row.measured_at).bind(13, to_string(pass));
    m.run();
    m.reset();
  }
  tx.commit();
}

bool Store::has_shape(const Fingerprint& fp, const AttentionShape& shape, Pass pass) const {
  Statement select_fp(*conn_, kSelectFingerprint);
  bind_fingerprint(select_fp, fp);
  const std::optional<int64_t> fingerprint_id = select_id(select_fp);
  if (!fingerprint_id) return false;
  Statement select_shape(*conn_, kSelectShape);
  bind_shape(select_shape, ShapeKey{shape, stored_mask_text(*conn_, shape.mask)});
  const std::optional<int64_t> shape_id = select_id(select_shape);
  if (!shape_id) return false;
  Statement any(*conn_,
                "SELECT 1 FROM measurements WHERE fingerprint_id = ?1 AND shape_id = ?2 AND pass = ?3 LIMIT 1");
  any.bind(1, *fingerprint_id).bind(2, *shape_id).bind(3, to_string(pass));
  return any.step();
}

std::vector<std::string> Store::integrity_problems() const {
  Statement st(*conn_, "PRAGMA integrity_check");
  std::vector<std::string> problems;
  while (st.step())
    if (std::string line = st.column_text(0); line != "ok") problems.push_back(std::move(line));
  return problems;
}

Store::RowCounts Store::check_rows() const {
  {
    Statement dangling(*conn_, "PRAGMA foreign_key_check");
    if (dangling.step()) {
      const std::string table = dangling.column_text(0);
      RowReader(dangling, path(), table.c_str(), dangling.column_int(1))
          .fail("it refers to a row of " + dangling.column_text(2) + " that is missing");
    }
  }
  RowCounts counts;
  counts.fingerprints = fingerprints().size();
  counts.measurements = measurements().size();
  counts.shapes = best().size();
  return counts;
}

std::vector<FingerprintSummary> Store::fingerprints() const {
  Statement st(*conn_,
               "SELECT f.id AS id, f.backend AS backend, f.device_model AS device_model, f.world AS world, "
               "f.ranks_per_node AS ranks_per_node, f.library_versions AS library_versions, "
               "f.cptune_version AS cptune_version, count(DISTINCT m.shape_id) AS shapes, count(m.id) AS measurements, "
               "coalesce(max(m.measured_at), '') AS last_measured_at "
               "FROM fingerprints AS f LEFT JOIN measurements AS m ON m.fingerprint_id = f.id "
               "GROUP BY f.id ORDER BY f.id");
  std::vector<FingerprintSummary> out;
  while (st.step()) {
    FingerprintSummary s;
    s.id = st.integer("id");
    const RowReader row(st, path(), "fingerprints", s.id);
    // nodes is derived from world and ranks per node; the table keeps it for readers.
    s.fingerprint = Fingerprint{row.text("backend"), row.text("device_model"),
                                Cluster{row.count("world", kMaxWorld), row.count("ranks_per_node", kMaxWorld)},
                                row.text("library_versions"), row.text("cptune_version")};
    s.shapes = st.integer("shapes");
    s.measurements = st.integer("measurements");
    s.last_measured_at = st.text("last_measured_at");
    out.push_back(std::move(s));
  }
  return out;
}

std::optional<int64_t> Store::match_fingerprint(const Fingerprint& fp) const {
  Statement st(*conn_,
               "SELECT f.id FROM fingerprints AS f "
               "WHERE f.backend = ?1 AND f.device_model = ?2 AND f.world = ?3 AND f.ranks_per_node = ?4 "
               "AND f.nodes = ?5 AND (?6 = '' OR f.library_versions = ?6) AND (?7 = '' OR f.cptune_version = ?7) "
               "ORDER BY f.id DESC LIMIT 1");
  bind_fingerprint(st, fp);
  return select_id(st);
}

std::vector<BestRow> Store::best(std::optional<int64_t> fingerprint_id, std::optional<Pass> pass) const {
  if (pass && *pass != Pass::forward && version_ < 4) return {};  // an older file timed the forward only
  const std::string pass_of = pass_column("b");
  const std::string sql =
      "SELECT b.fingerprint_id AS fingerprint_id, batch, seq_lens, q_heads, kv_heads, head_dim, v_head_dim, dtype, "
      "mask, strategy, ulysses, ring, rank_order, head_policy, median_s, measurements, shape_id, candidate_id, "
      "measurement_id, f.world AS world, " + pass_of + " AS pass "
      "FROM best AS b JOIN fingerprints AS f ON f.id = b.fingerprint_id "
      "WHERE (?1 IS NULL OR b.fingerprint_id = ?1) AND (?2 IS NULL OR " + pass_of + " = ?2)";
  Statement st(*conn_, sql.c_str());
  if (fingerprint_id) st.bind(1, *fingerprint_id);
  if (pass) st.bind(2, to_string(*pass));
  std::vector<BestRow> out;
  MaskCache masks;
  while (st.step()) {
    const int64_t fp_id = st.integer("fingerprint_id");
    const int64_t world = RowReader(st, path(), "fingerprints", fp_id).count("world", kMaxWorld);
    const AttentionShape shape = read_shape(RowReader(st, path(), "shapes", st.integer("shape_id")), masks);
    const LayoutChoice candidate = read_candidate(RowReader(st, path(), "candidates", st.integer("candidate_id")), world);
    const RowReader measurement(st, path(), "measurements", st.integer("measurement_id"));
    const double median_s = measurement.seconds("median_s");
    const Pass row_pass = measurement.parsed("pass", [](const std::string& t) { return parse_pass(t); });
    out.push_back(BestRow{fp_id, shape, row_pass, candidate, median_s, st.integer("measurements")});
  }
  return out;
}

std::vector<StoredMeasurement> Store::measurements() const {
  const std::string sql =
               "SELECT m.id AS measurement_id, m.fingerprint_id AS fingerprint_id, s.batch AS batch, "
               "s.seq_lens AS seq_lens, s.q_heads AS q_heads, s.kv_heads AS kv_heads, s.head_dim AS head_dim, "
               "s.v_head_dim AS v_head_dim, s.dtype AS dtype, s.mask AS mask, c.strategy AS strategy, "
               "c.ulysses AS ulysses, c.ring AS ring, c.rank_order AS rank_order, c.head_policy AS head_policy, "
               "m.median_s AS median_s, m.min_s AS min_s, m.max_s AS max_s, m.iterations AS iterations, "
               "m.phase_medians_s AS phase_medians_s, m.verify_max_abs_error AS verify_max_abs_error, "
               "m.predicted_s AS predicted_s, m.profile AS profile, m.measured_at AS measured_at, "
               "s.id AS shape_id, c.id AS candidate_id, f.world AS world, " + std::string(pass_column("m")) + " AS pass "
               "FROM measurements AS m JOIN shapes AS s ON s.id = m.shape_id "
               "JOIN candidates AS c ON c.id = m.candidate_id JOIN fingerprints AS f ON f.id = m.fingerprint_id "
               "ORDER BY m.id";
  Statement st(*conn_, sql.c_str());
  std::vector<StoredMeasurement> out;
  MaskCache masks;
  while (st.step()) {
    StoredMeasurement sm;
    sm.id = st.integer("measurement_id");
    sm.fingerprint_id = st.integer("fingerprint_id");
    const RowReader row(st, path(), "measurements", sm.id);
    const int64_t world = RowReader(st, path(), "fingerprints", sm.fingerprint_id).count("world", kMaxWorld);
    sm.shape = read_shape(RowReader(st, path(), "shapes", st.integer("shape_id")), masks);
    MeasurementRow& r = sm.row;
    r.candidate = read_candidate(RowReader(st, path(), "candidates", st.integer("candidate_id")), world);
    r.median_s = row.seconds("median_s");
    r.min_s = row.seconds("min_s");
    r.max_s = row.seconds("max_s");
    r.iterations = row.count("iterations");
    r.phase_medians_s = parse_phases(row.text("phase_medians_s"), sm.id);
    r.verify_max_abs_error = row.optional_number("verify_max_abs_error");
    r.predicted_s = row.optional_number("predicted_s");
    r.profile = row.text("profile");
    r.measured_at = row.text("measured_at");
    sm.pass = row.parsed("pass", [](const std::string& t) { return parse_pass(t); });
    out.push_back(std::move(sm));
  }
  return out;
}

}  // namespace cptune::db
