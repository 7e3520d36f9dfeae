#include "db/sqlite.h"

#include <unistd.h>

#include <sqlite3.h>

#include <cstdio>
#include <filesystem>
#include <system_error>

#include "core/error.h"
#include "core/read_file.h"

namespace cptune::db {
namespace {

// Long enough for another tuner to commit a shape; short enough that a stuck lock is reported.
constexpr int kBusyTimeoutMs = 10'000;

std::string hint_for(int rc, OpenMode mode) {
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
      return "it is not an SQLite database; pass a file written by 'cptune tune --db'";
    case SQLITE_CORRUPT:
      return "the file is corrupt; restore it from a copy or tune again into a new file";
    case SQLITE_CANTOPEN:
      return mode == OpenMode::read_write ? "check that its folder exists and is writable"
                                          : "check that it exists and is readable";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "another process held it locked for longer than the 10 s busy timeout; try again";
    case SQLITE_READONLY:
    case SQLITE_PERM:
      return "it is read-only here; open it with write permission";
    case SQLITE_FULL:
      return "the disk is full";
    case SQLITE_IOERR:
      return "reading or writing the file failed; check the disk and the file";
    default:
      return "";
  }
}

// Whether this process may write the file and its folder (where SQLite puts -wal and -shm).
bool may_write(const std::string& path) {
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  return access(path.c_str(), W_OK) == 0 && access(folder.empty() ? "." : folder.c_str(), W_OK) == 0;
}

void require_existing_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status))
    throw Error("database '" + path + "' does not exist; run 'cptune tune --db " + path + "' first or check the path");
  if (std::filesystem::is_directory(status))
    throw Error("database '" + path + "' is a directory; pass the database file");
}

// An SQLite URI for path: '%', '?' and '#' are escaped, an absolute path gets an empty authority.
std::string uri_of(const std::string& path, const char* query) {
  std::string uri = path.front() == '/' ? "file://" : "file:";
  for (char c : path) {
    if (c == '%' || c == '?' || c == '#') {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", static_cast<unsigned char>(c));
      uri += hex;
    } else {
      uri += c;
    }
  }
  return uri + "?" + query;
}

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

}  // namespace

Connection::Connection(std::string path, OpenMode mode) : path_(std::move(path)), mode_(mode) {
  if (path_.empty()) throw Error("no database path given; pass --db FILE");
  if (mode == OpenMode::read_only) require_existing_file(path_);
  // A directory, FIFO or device is refused before SQLite opens it (a FIFO would block the open).
  refuse_special_file(path_, "database");
  // NOMUTEX: a Connection is used by one thread at a time, so SQLite's per-call mutex is waste.
  // A reader never creates a file. One that may write the file and its folder opens it
  // read-write with query_only set: it still cannot change the database, and, as the last
  // connection to close, it removes the -wal and -shm files that reading a WAL database
  // creates. One that may not (another account's file, a read-only folder or mount) would make
  // SQLite create -shm and -wal files it cannot remove, which then stop the owner's tuner, or
  // fail where it cannot: it reads with the writer's -wal and -shm when both exist (opening the
  // -shm read-only), and otherwise as an immutable file (no locks, no files; nothing writes it).
  const bool query_only = mode == OpenMode::read_only && may_write(path_);
  std::string name = path_;
  int flags = SQLITE_OPEN_NOMUTEX;
  if (mode == OpenMode::read_write) {
    flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
  } else if (query_only) {
    flags |= SQLITE_OPEN_READWRITE;
  } else {
    flags |= SQLITE_OPEN_READONLY | SQLITE_OPEN_URI;
    const bool writer_files = exists(path_ + "-wal") && exists(path_ + "-shm");
    name = uri_of(path_, writer_files ? "mode=ro&readonly_shm=1" : "mode=ro&immutable=1");
  }
  const int rc = sqlite3_open_v2(name.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close(db_);
    db_ = nullptr;
    const std::string hint = hint_for(rc, mode);
    throw Error("cannot open database '" + path_ + "': " + message + (hint.empty() ? "" : "; " + hint));
  }
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  if (query_only) exec("PRAGMA query_only = ON");
}

Connection::~Connection() { sqlite3_close_v2(db_); }

void Connection::exec(const char* sql) const {
  char* message = nullptr;
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &message);
  sqlite3_free(message);
  if (rc != SQLITE_OK) fail(rc, sql);
}

bool Connection::try_exec(const char* sql) const {
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) return false;
  if (rc != SQLITE_OK) fail(rc, sql);
  return true;
}

int64_t Connection::changes() const { return sqlite3_changes64(db_); }

void Connection::fail(int rc, std::string_view doing) const {
  const std::string hint = hint_for(rc, mode_);
  throw Error("database '" + path_ + "': " + sqlite3_errmsg(db_) + " (while " + std::string(doing) + ")" +
              (hint.empty() ? "" : "; " + hint));
}

Statement::Statement(const Connection& conn, const char* sql) : conn_(conn), sql_(sql) {
  const int rc = sqlite3_prepare_v3(conn.handle(), sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
  if (rc != SQLITE_OK) conn.fail(rc, std::string("preparing ") + sql);
  for (int i = 0, n = sqlite3_column_count(stmt_); i < n; ++i) names_.emplace_back(sqlite3_column_name(stmt_, i));
}

int Statement::column(std::string_view name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return int(i);
  throw Error("internal error: column '" + std::string(name) + "' is not a result of " + sql_);
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

void Statement::check_bind(int rc, int index) const {
  if (rc != SQLITE_OK) conn_.fail(rc, "binding parameter " + std::to_string(index) + " of " + sql_);
}

Statement& Statement::bind(int index, int64_t value) {
  check_bind(sqlite3_bind_int64(stmt_, index, value), index);
  return *this;
}

Statement& Statement::bind(int index, double value) {
  check_bind(sqlite3_bind_double(stmt_, index, value), index);
  return *this;
}

Statement& Statement::bind(int index, std::string_view value) {
  check_bind(sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8), index);
  return *this;
}

Statement& Statement::bind(int index, std::optional<double> value) {
  if (!value) {
    check_bind(sqlite3_bind_null(stmt_, index), index);
    return *this;
  }
  return bind(index, *value);
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  try {
    conn_.fail(rc, sql_);
  } catch (...) {
    sqlite3_reset(stmt_);  // after the message is taken: a failed statement must be reset before reuse
    throw;
  }
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

void Statement::run() {
  while (step()) {
  }
}

Statement::Type Statement::column_type(int col) const {
  switch (sqlite3_column_type(stmt_, col)) {
    case SQLITE_INTEGER:
      return Type::integer;
    case SQLITE_FLOAT:
      return Type::real;
    case SQLITE_TEXT:
      return Type::text;
    case SQLITE_BLOB:
      return Type::blob;
    default:
      return Type::null;
  }
}

int64_t Statement::column_int(int col) const { return sqlite3_column_int64(stmt_, col); }

double Statement::column_double(int col) const { return sqlite3_column_double(stmt_, col); }

std::string Statement::column_text(int col) const {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
  return text ? std::string(text, size_t(sqlite3_column_bytes(stmt_, col))) : std::string();
}

std::optional<double> Statement::column_optional_double(int col) const {
  if (sqlite3_column_type(stmt_, col) == SQLITE_NULL) return std::nullopt;
  return sqlite3_column_double(stmt_, col);
}

Transaction::Transaction(const Connection& conn, Kind kind) : conn_(conn) {
  conn_.exec(kind == Kind::write ? "BEGIN IMMEDIATE" : "BEGIN");
}

Transaction::~Transaction() {
  // A failed statement may already have ended the transaction; ROLLBACK then reports an
  // error we have nothing to add to, so its result is ignored.
  if (open_) sqlite3_exec(conn_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  conn_.exec("COMMIT");
  open_ = false;
}

}  // namespace cptune::db
