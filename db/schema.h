#pragma once
// The versioned schema of the store. PRAGMA user_version holds the version; each migration
// takes the database one version up inside one write transaction. PRAGMA application_id
// marks the file as cptune's, so another program's SQLite database is refused, not altered.
#include <cstdint>
#include <functional>

namespace cptune::db {

class Connection;

inline constexpr int kSchemaVersion = 4;
// Readers need only the tables of version 1 (version 2 added the tuners' leases; version 3 block
// masks in shapes.mask and an index on it; version 4 the leases' heartbeat and
// measurements.pass; a reader of an older file reads every row as the forward pass).
inline constexpr int kOldestReadableVersion = 1;
inline constexpr int32_t kApplicationId = 0x43505455;  // "CPTU"

// Writers: checks the file, then brings it to kSchemaVersion (an empty or new file gets the
// whole schema), and switches it to WAL. Throws Error, with the file untouched, when it is not
// a database, is corrupt, belongs to another program, comes from a newer cptune, misses a
// table, or check_rows (the store's reading of every row) throws.
void open_for_writing(const Connection& conn, const std::function<void()>& check_rows = {});

// Readers: the same checks, read-only; the schema must be kOldestReadableVersion or newer.
void check_for_reading(const Connection& conn);

// PRAGMA user_version: the schema version of the file (0 for a new one).
int64_t schema_version(const Connection& conn);

// A new, empty file with the schema of an older cptune (1 .. kSchemaVersion): the files that
// release wrote, for the tests of migrations and of readers of old files.
void create_at_version(const Connection& conn, int64_t version);

}  // namespace cptune::db
