#include "db/schema.h"

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "core/error.h"
#include "db/sqlite.h"

namespace cptune::db {
namespace {

// kMigrations[v] takes a database from user_version v to v + 1. Append; never edit a shipped one.
constexpr const char* kMigrations[] = {
    // 0 -> 1: the whole first schema.
    R"sql(
CREATE TABLE fingerprints (
  id INTEGER PRIMARY KEY,
  backend TEXT NOT NULL,
  device_model TEXT NOT NULL,
  world INTEGER NOT NULL CHECK (world >= 1),
  ranks_per_node INTEGER NOT NULL CHECK (ranks_per_node >= 1),
  nodes INTEGER NOT NULL CHECK (nodes >= 1),
  library_versions TEXT NOT NULL,
  cptune_version TEXT NOT NULL,
  UNIQUE (backend, device_model, world, ranks_per_node, nodes, library_versions, cptune_version)
);
CREATE TABLE shapes (
  id INTEGER PRIMARY KEY,
  batch INTEGER NOT NULL CHECK (batch >= 1),
  seq_lens TEXT NOT NULL,          -- "77,4097": tokens of each packed sequence
  total_tokens INTEGER NOT NULL,   -- their sum, for the nearest-shape rule and sorting
  q_heads INTEGER NOT NULL,
  kv_heads INTEGER NOT NULL,
  head_dim INTEGER NOT NULL,
  v_head_dim INTEGER NOT NULL,
  dtype TEXT NOT NULL,             -- "bf16", "fp16", "fp32"
  mask TEXT NOT NULL,              -- "full", "causal", "sliding:4096" (version 3: block masks too)
  UNIQUE (batch, seq_lens, q_heads, kv_heads, head_dim, v_head_dim, dtype, mask)
);
CREATE TABLE candidates (
  id INTEGER PRIMARY KEY,
  strategy TEXT NOT NULL,
  ulysses INTEGER NOT NULL CHECK (ulysses >= 1),
  ring INTEGER NOT NULL CHECK (ring >= 1),
  rank_order TEXT NOT NULL,
  head_policy TEXT NOT NULL,
  UNIQUE (strategy, ulysses, ring, rank_order, head_policy)
);
CREATE TABLE measurements (
  id INTEGER PRIMARY KEY,
  fingerprint_id INTEGER NOT NULL REFERENCES fingerprints (id),
  shape_id INTEGER NOT NULL REFERENCES shapes (id),
  candidate_id INTEGER NOT NULL REFERENCES candidates (id),
  median_s REAL NOT NULL,           -- slowest rank, median over iterations
  min_s REAL NOT NULL,
  max_s REAL NOT NULL,
  iterations INTEGER NOT NULL,
  phase_medians_s TEXT NOT NULL,    -- JSON object: phase -> median seconds
  verify_max_abs_error REAL,        -- NULL: not verified
  predicted_s REAL,                 -- the simulator's time, NULL when it did not rank it
  profile TEXT NOT NULL,            -- hardware profile that ranked the candidate
  measured_at TEXT NOT NULL         -- ISO 8601 UTC
);
-- Serves the best view, has_shape and the lookup's load: one index range per fingerprint,
-- covering (candidate_id included), so the winners are found without reading the table.
CREATE INDEX measurements_by_shape ON measurements (fingerprint_id, shape_id, median_s, candidate_id);
-- The fastest candidate per (fingerprint, shape). SQLite takes the bare columns of a query
-- with a single min() from the row that holds the minimum.
CREATE VIEW best AS
SELECT w.fingerprint_id, w.shape_id, w.candidate_id, w.measurement_id, w.median_s, w.measurements,
       s.batch, s.seq_lens, s.total_tokens, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, s.dtype, s.mask,
       c.strategy, c.ulysses, c.ring, c.rank_order, c.head_policy
FROM (SELECT fingerprint_id, shape_id, candidate_id, id AS measurement_id, min(median_s) AS median_s,
             count(*) AS measurements
      FROM measurements GROUP BY fingerprint_id, shape_id) AS w
JOIN shapes AS s ON s.id = w.shape_id
JOIN candidates AS c ON c.id = w.candidate_id;
)sql",
    // 1 -> 2: one tuner per (database, fingerprint) at a time (db/lease.h).
    R"sql(
CREATE TABLE tune_leases (
  fingerprint TEXT PRIMARY KEY,   -- the fingerprint's fields, one key (db/store.cc lease_key)
  host TEXT NOT NULL,
  pid INTEGER NOT NULL,
  start_time INTEGER NOT NULL,    -- of pid, from /proc/<pid>/stat: a reused pid is another process
  acquired_at TEXT NOT NULL
);
)sql",
    // 2 -> 3: shapes.mask may hold a block mask: a pattern ("strided:16,4") or a table inline
    // ("blocks:4:C.../FC../F.C./F..C", up to ~66k characters), never a file name. A writer stores a
    // table under the text of an equal table already stored (db/store.cc stored_mask_text); this
    // index serves that search. Older readers would call such rows damaged: the version tells them.
    R"sql(
CREATE INDEX shapes_by_mask ON shapes (mask);
)sql",
    // 3 -> 4: a lease carries its holder's heartbeat (db/lease.h): a lease not refreshed within
    // the expiry is dead whatever host wrote it. An older lease's last sign of life is its taking.
    // Measurements are keyed by the pass they timed (core Pass: "fwd", "bwd", "fwd+bwd"); every
    // older row timed the forward pass. `best` is the winner per fingerprint, shape and pass.
    R"sql(
ALTER TABLE tune_leases ADD COLUMN heartbeat_at TEXT NOT NULL DEFAULT '';
UPDATE tune_leases SET heartbeat_at = acquired_at;
ALTER TABLE measurements ADD COLUMN pass TEXT NOT NULL DEFAULT 'fwd' CHECK (pass IN ('fwd', 'bwd', 'fwd+bwd'));
DROP VIEW best;
CREATE VIEW best AS
SELECT w.fingerprint_id, w.shape_id, w.pass, w.candidate_id, w.measurement_id, w.median_s, w.measurements,
       s.batch, s.seq_lens, s.total_tokens, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, s.dtype, s.mask,
       c.strategy, c.ulysses, c.ring, c.rank_order, c.head_policy
FROM (SELECT fingerprint_id, shape_id, pass, candidate_id, id AS measurement_id, min(median_s) AS median_s,
             count(*) AS measurements
      FROM measurements GROUP BY fingerprint_id, shape_id, pass) AS w
JOIN shapes AS s ON s.id = w.shape_id
JOIN candidates AS c ON c.id = w.candidate_id;
)sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion);

struct Header {
  int64_t application_id = 0;
  int64_t user_version = 0;
  int64_t schema_objects = 0;
};

int64_t pragma_int(const Connection& conn, const char* sql) {
  Statement st(conn, sql);
  return st.step() ? st.column_int(0) : 0;
}

// Reading sqlite_schema makes SQLite read the file header: this is where a file that is not
// a database, or is damaged at the start, is found, before anything is written. One read
// transaction, so the three values come from one snapshot even while another tuner migrates.
Header read_header(const Connection& conn) {
  Transaction snapshot(conn, Transaction::Kind::read);
  Header h;
  h.application_id = pragma_int(conn, "PRAGMA application_id");
  h.user_version = pragma_int(conn, "PRAGMA user_version");
  h.schema_objects = pragma_int(conn, "SELECT count(*) FROM sqlite_schema");
  snapshot.commit();
  return h;
}

void check_header(const Connection& conn, const Header& h) {
  const std::string& path = conn.path();
  if (h.application_id != 0 && h.application_id != kApplicationId)
    throw Error("database '" + path + "' belongs to another program (application id " +
                std::to_string(h.application_id) + "); pass a cptune database or a new file name");
  if (h.application_id == 0 && h.user_version == 0 && h.schema_objects > 0)
    throw Error("database '" + path + "' is an SQLite database of another program, not cptune's; " +
                "pass a cptune database or a new file name");
  if (h.user_version > kSchemaVersion)
    throw Error("database '" + path + "' was written by a newer cptune (schema version " +
                std::to_string(h.user_version) + "; this cptune knows up to " + std::to_string(kSchemaVersion) +
                "); use that cptune or a new file name");
}

// The tables and views a schema version has: one missing (dropped by hand, or a damaged file)
// would otherwise read as "no rows" and make a tuner skip or a reader answer nothing.
void check_schema_objects(const Connection& conn, int64_t version) {
  struct Object {
    const char* type;
    const char* name;
    int64_t since;  // the schema version that added it
  };
  constexpr Object kObjects[] = {{"table", "fingerprints", 1}, {"table", "shapes", 1},     {"table", "candidates", 1},
                                 {"table", "measurements", 1}, {"view", "best", 1},       {"table", "tune_leases", 2},
                                 {"index", "shapes_by_mask", 3}};
  Statement st(conn, "SELECT count(*) FROM sqlite_schema WHERE type = ?1 AND name = ?2");
  for (const Object& o : kObjects) {
    if (o.since > version) continue;
    st.bind(1, std::string_view(o.type)).bind(2, std::string_view(o.name));
    const bool present = st.step() && st.column_int(0) == 1;
    st.reset();
    if (!present)
      throw Error("database '" + conn.path() + "' is damaged: its " + o.type + " '" + o.name +
                  "' is missing; restore it from a copy or tune again into a new file");
  }
}

// Writers check every page once before they add to a file; readers find damage as they read.
void quick_check(const Connection& conn) {
  Statement st(conn, "PRAGMA quick_check");
  std::string problems;
  while (st.step()) {
    const std::string line = st.column_text(0);
    if (line != "ok") problems += (problems.empty() ? "" : "; ") + line;
  }
  if (!problems.empty())
    throw Error("database '" + conn.path() + "' is corrupt (" + problems +
                "); restore it from a copy or tune again into a new file");
}

void migrate(const Connection& conn, int64_t target = kSchemaVersion) {
  for (;;) {
    Transaction tx(conn, Transaction::Kind::write);
    // Read again under the write lock: another tuner may have migrated the file meanwhile.
    const int64_t version = pragma_int(conn, "PRAGMA user_version");
    if (version >= target) return;
    conn.exec(kMigrations[version]);
    conn.exec(("PRAGMA user_version = " + std::to_string(version + 1)).c_str());
    conn.exec(("PRAGMA application_id = " + std::to_string(kApplicationId)).c_str());
    tx.commit();
  }
}

// WAL lets readers (the lookup, cptune db) run while a tuner writes. Switching needs the file to
// itself, and SQLite answers BUSY at once instead of waiting, so two tuners starting on a new
// file retry here for as long as the busy timeout would have waited.
void enable_wal(const Connection& conn) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!conn.try_exec("PRAGMA journal_mode = WAL")) {
    if (std::chrono::steady_clock::now() > deadline)
      throw Error("database '" + conn.path() + "' stayed locked by another process for 10 s while switching to WAL; " +
                  "try again");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

void open_for_writing(const Connection& conn, const std::function<void()>& check_rows) {
  const Header h = read_header(conn);
  check_header(conn, h);
  quick_check(conn);
  if (h.user_version > 0) {  // a file with data: refused as the readers would refuse it, before any write
    check_schema_objects(conn, h.user_version);
    if (check_rows) check_rows();
  }
  migrate(conn);
  check_schema_objects(conn, kSchemaVersion);
  enable_wal(conn);
  // NORMAL in WAL keeps every committed shape when the process is killed (only a power cut
  // may lose the last commits), at a fraction of FULL's fsyncs.
  conn.exec("PRAGMA synchronous = NORMAL");
  conn.exec("PRAGMA foreign_keys = ON");
}

int64_t schema_version(const Connection& conn) { return pragma_int(conn, "PRAGMA user_version"); }

void create_at_version(const Connection& conn, int64_t version) {
  if (version < 1 || version > kSchemaVersion)
    throw Error("schema version " + std::to_string(version) + " is not between 1 and " + std::to_string(kSchemaVersion));
  if (pragma_int(conn, "PRAGMA user_version") != 0)
    throw Error("database '" + conn.path() + "' is not empty: only a new file is created at an older version");
  migrate(conn, version);
}

void check_for_reading(const Connection& conn) {
  const Header h = read_header(conn);
  check_header(conn, h);
  if (h.user_version == 0)
    throw Error("database '" + conn.path() + "' holds no cptune data yet; run 'cptune tune --db " + conn.path() +
                "' first");
  if (h.user_version < kOldestReadableVersion)
    throw Error("database '" + conn.path() + "' has the older schema version " + std::to_string(h.user_version) +
                "; run 'cptune tune --db " + conn.path() + "' once to migrate it");
  check_schema_objects(conn, h.user_version);
}

}  // namespace cptune::db
