#pragma once
// db::Store: the tuner's SQLite database. Every measurement is kept, scoped by the fingerprint
// of the cluster it was taken on; the view `best` gives the winner per fingerprint and shape.
// One write transaction per finished shape: a killed tuner loses at most the shape in flight,
// and has_shape lets the rerun skip what is already stored.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "db/records.h"

namespace cptune::db {

class Connection;

struct FingerprintSummary {
  int64_t id = 0;
  Fingerprint fingerprint;
  int64_t shapes = 0;        // distinct shapes measured
  int64_t measurements = 0;
  std::string last_measured_at;
};

struct StoredMeasurement {
  int64_t id = 0;
  int64_t fingerprint_id = 0;
  AttentionShape shape;
  Pass pass = Pass::forward;
  MeasurementRow row;
};

class Store {
 public:
  // The tuner's handle: creates the file when missing, migrates an older schema, WAL mode, and
  // refuses a file any reader would refuse (check_rows): nothing is added to a damaged store.
  static Store open(const std::string& path);
  // Readers (cptune db, the lookup): SQLITE_OPEN_READONLY; the file must exist and be current.
  static Store open_read_only(const std::string& path);

  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;
  ~Store();

  const std::string& path() const;

  // Stores all candidates measured for one shape and pass in ONE write transaction (BEGIN
  // IMMEDIATE). An empty list records nothing, so has_shape stays false and a rerun measures
  // the shape. Each pass (fwd, bwd, fwd+bwd) is measured and answered on its own.
  void record_shape(const Fingerprint& fp, const AttentionShape& shape, const std::vector<MeasurementRow>& rows,
                    Pass pass = Pass::forward);
  bool has_shape(const Fingerprint& fp, const AttentionShape& shape, Pass pass = Pass::forward) const;

  // Lines of PRAGMA integrity_check that are not "ok" (none for a sound file).
  std::vector<std::string> integrity_problems() const;

  // Every row read and checked as the readers read it, and every reference resolved: a
  // measurement pointing at a missing fingerprint, shape or candidate (which the readers'
  // joins would silently drop) is damage. Throws Error naming the first damaged row.
  struct RowCounts {
    size_t fingerprints = 0, shapes = 0, measurements = 0;
  };
  RowCounts check_rows() const;

  std::vector<FingerprintSummary> fingerprints() const;
  // The fingerprint the lookup uses for fp: the hardware fields (backend, device model, world,
  // ranks per node, nodes) must be equal; library_versions and cptune_version must be equal
  // when given and match anything when empty, the fingerprint recorded last winning.
  std::optional<int64_t> match_fingerprint(const Fingerprint& fp) const;
  // Best rows of one fingerprint, or of all when none is given, of one pass or of every pass;
  // in no particular order (the lookup loads them into a hash table; a sort would only cost it
  // time).
  std::vector<BestRow> best(std::optional<int64_t> fingerprint_id = std::nullopt,
                            std::optional<Pass> pass = std::nullopt) const;
  // Every measurement, in the order stored.
  std::vector<StoredMeasurement> measurements() const;

 private:
  struct Writer;
  explicit Store(std::unique_ptr<Connection> conn);

  // The column naming a row's pass: measurements.pass from schema 4, the forward pass before.
  const char* pass_column(const char* table) const;

  std::unique_ptr<Connection> conn_;
  int64_t version_ = 0;  // the file's schema version when opened (a writer's is current)
  std::unique_ptr<Writer> writer_;  // prepared write statements, made on the first write
};

}  // namespace cptune::db
