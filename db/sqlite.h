#pragma once
// A thin RAII layer over the SQLite C API: one connection, prepared statements with bound
// parameters (values never become SQL text), and errors that name the database file.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace cptune::db {

enum class OpenMode {
  read_write,  // the tuner: creates a missing file
  read_only,   // readers and the lookup: the file must exist; SQLITE_OPEN_READONLY
};

// One thread at a time may use a Connection and its Statements.
class Connection {
 public:
  // Throws Error naming the path when it cannot be opened. Nothing is read or written yet.
  Connection(std::string path, OpenMode mode);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  sqlite3* handle() const { return db_; }
  const std::string& path() const { return path_; }
  OpenMode mode() const { return mode_; }

  // Runs SQL without parameters (schema, pragmas, BEGIN/COMMIT).
  void exec(const char* sql) const;
  // The same, but returns false instead of throwing when another connection holds a lock.
  bool try_exec(const char* sql) const;
  // Rows changed by the last INSERT, UPDATE or DELETE.
  int64_t changes() const;
  // Throws Error for SQLite result code rc: the path, what was being done, SQLite's message
  // and what the user can do about it.
  [[noreturn]] void fail(int rc, std::string_view doing) const;

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
  OpenMode mode_;
};

class Statement {
 public:
  Statement(const Connection& conn, const char* sql);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Parameters are 1-based, as in SQLite.
  Statement& bind(int index, int64_t value);
  Statement& bind(int index, double value);
  Statement& bind(int index, std::string_view value);
  Statement& bind(int index, std::optional<double> value);  // nullopt binds NULL

  bool step();   // true: a row is ready; false: done
  void reset();  // ready to bind and step again; keeps nothing bound from before
  void run();    // steps a statement that returns no rows

  enum class Type { integer, real, text, blob, null };
  Type column_type(int col) const;  // the stored value's type (SQLite columns are not typed)
  int64_t column_int(int col) const;
  double column_double(int col) const;
  std::string column_text(int col) const;
  std::optional<double> column_optional_double(int col) const;

  // Result columns by name (the select's AS name, else the column's): a reader names what it
  // reads, so reordering a select cannot shift its values. Throws Error for a name the
  // statement does not return (a cptune bug, named with the SQL).
  int column(std::string_view name) const;
  int64_t integer(std::string_view name) const { return column_int(column(name)); }
  double real(std::string_view name) const { return column_double(column(name)); }
  std::string text(std::string_view name) const { return column_text(column(name)); }

 private:
  void check_bind(int rc, int index) const;

  const Connection& conn_;
  sqlite3_stmt* stmt_ = nullptr;
  const char* sql_;
  std::vector<std::string> names_;  // result column names, by index
};

// A transaction that rolls back unless committed. A write transaction is BEGIN IMMEDIATE: it
// takes the write lock at once, so two writers queue on busy_timeout instead of failing when
// a read transaction would have to upgrade. A read transaction (BEGIN) gives several reads
// one snapshot.
class Transaction {
 public:
  enum class Kind { read, write };
  Transaction(const Connection& conn, Kind kind);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  const Connection& conn_;
  bool open_ = true;
};

}  // namespace cptune::db
