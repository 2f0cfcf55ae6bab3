// A small RAII layer over the SQLite C API for the run store: a connection, prepared statements
// with bound parameters (values never go into SQL text), and BEGIN IMMEDIATE transactions that
// retry while another process holds the write lock.
//
// Every failing SQLite call becomes a pp::Status whose code says what kind of failure it is:
// SQLITE_NOTADB / SQLITE_CORRUPT -> kDataLoss, SQLITE_BUSY / SQLITE_LOCKED -> kUnavailable,
// SQLITE_CONSTRAINT / SQLITE_MISMATCH / SQLITE_TOOBIG -> kInvalidArgument, SQLITE_FULL ->
// kResourceExhausted, SQLITE_READONLY -> kFailedPrecondition, anything else -> kInternal.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <sqlite3.h>

#include "pp/status.h"

namespace pp::sqlite {

// The pp::Status for SQLite result code `rc` (primary or extended): "<label>: <doing>: <message>".
Status error_status(int rc, std::string_view message, std::string_view label,
                    std::string_view doing);

// True when `s` came from SQLITE_BUSY or SQLITE_LOCKED (another connection holds a lock).
bool is_busy(const Status& s);

class Database;

class Statement {
 public:
  Statement() = default;
  Statement(sqlite3_stmt* stmt, const Database* db) : stmt_(stmt), db_(db) {}
  ~Statement();
  Statement(Statement&& o) noexcept;
  Statement& operator=(Statement&& o) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Parameters are numbered from 1, as in SQLite. A bad index is a bug (asserted).
  Statement& bind(int i, int64_t v);
  Statement& bind(int i, int v) { return bind(i, int64_t(v)); }
  Statement& bind(int i, bool v) { return bind(i, int64_t(v ? 1 : 0)); }
  Statement& bind(int i, double v);  // NaN is stored as NULL (SQLite has no NaN)
  Statement& bind(int i, std::string_view v);
  Statement& bind(int i, const std::string& v) { return bind(i, std::string_view(v)); }
  Statement& bind(int i, const char* v) { return bind(i, std::string_view(v)); }
  Statement& bind_null(int i);
  template <typename T>
  Statement& bind(int i, const std::optional<T>& v) {
    return v ? bind(i, *v) : bind_null(i);
  }
  // Binds NULL for an empty string.
  Statement& bind_text_or_null(int i, std::string_view v) {
    return v.empty() ? bind_null(i) : bind(i, v);
  }

  // Runs one step: true when a row is ready, false when the statement is done.
  Result<bool> step();
  // Steps to the end, ignoring rows; then resets the statement for the next run.
  Status run();
  // Makes the statement ready to run again (bindings are kept).
  void reset();

  // Columns are numbered from 0.
  bool is_null(int c) const;
  int64_t int64(int c) const;
  int int32(int c) const { return int(int64(c)); }
  double real(int c) const;       // NULL reads as NaN
  std::string text(int c) const;  // NULL reads as ""
  std::optional<int64_t> optional_int64(int c) const;

 private:
  sqlite3_stmt* stmt_ = nullptr;
  const Database* db_ = nullptr;
};

// One connection. `label` names the database in messages ("run store '/x/runs.db'").
class Database {
 public:
  static Result<std::unique_ptr<Database>> open(const std::filesystem::path& path, int flags,
                                                std::string label);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  sqlite3* handle() const { return db_; }
  const std::string& label() const { return label_; }

  // The Status for a failure `rc` of the last call on this connection.
  Status error(int rc, std::string_view doing) const;

  void set_busy_timeout_ms(int ms);
  // Runs SQL text without parameters (schema, pragmas): never put values in it.
  Status exec(const char* sql, std::string_view doing);
  Result<Statement> prepare(std::string_view sql);
  // The first column of the first row of a parameterless query (a pragma); kInternal when the
  // query returns no row.
  Result<int64_t> query_int64(const char* sql);
  Result<std::string> query_text(const char* sql);

  int64_t last_insert_rowid() const { return sqlite3_last_insert_rowid(db_); }
  int64_t changes() const { return sqlite3_changes64(db_); }

 private:
  Database(sqlite3* db, std::string label) : db_(db), label_(std::move(label)) {}
  sqlite3* db_ = nullptr;
  std::string label_;
};

// BEGIN IMMEDIATE ... COMMIT. Taking the write lock at BEGIN means a transaction never has to
// upgrade a read lock (which fails at once with SQLITE_BUSY in WAL mode instead of waiting).
// BEGIN is retried while another connection holds the lock, each attempt waiting up to the busy
// timeout. Rolls back when destroyed without commit().
class Transaction {
 public:
  static constexpr int kBeginAttempts = 4;

  static Result<Transaction> begin(Database& db);
  ~Transaction();
  Transaction(Transaction&& o) noexcept : db_(o.db_) { o.db_ = nullptr; }
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;

  Status commit();
  void rollback();

 private:
  explicit Transaction(Database* db) : db_(db) {}
  Database* db_ = nullptr;  // null once committed or rolled back
};

}  // namespace pp::sqlite
