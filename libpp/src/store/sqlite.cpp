// The RAII layer over the SQLite C API (see sqlite.h): result codes become pp::Status, statements
// are finalized and transactions rolled back by their destructors.
#include "store/sqlite.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <thread>
#include <utility>

#include "pp/assert.h"

namespace pp::sqlite {

Status error_status(int rc, std::string_view message, std::string_view label,
                    std::string_view doing) {
  StatusCode code = StatusCode::kInternal;
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      code = StatusCode::kDataLoss;
      break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      code = StatusCode::kUnavailable;
      break;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
      code = StatusCode::kInvalidArgument;
      break;
    case SQLITE_FULL:
      code = StatusCode::kResourceExhausted;
      break;
    case SQLITE_READONLY:
      code = StatusCode::kFailedPrecondition;
      break;
    default:
      break;
  }
  if (message.empty()) message = sqlite3_errstr(rc);
  if (doing.empty()) return Status(code, fmt::format("{}: {}", label, message));
  return Status(code, fmt::format("{}: {}: {}", label, doing, message));
}

bool is_busy(const Status& s) { return s.code() == StatusCode::kUnavailable; }

// ---- Statement ----------------------------------------------------------------------------

Statement::~Statement() {
  if (stmt_) sqlite3_finalize(stmt_);
}

Statement::Statement(Statement&& o) noexcept : stmt_(std::exchange(o.stmt_, nullptr)), db_(o.db_) {}

Statement& Statement::operator=(Statement&& o) noexcept {
  if (this != &o) {
    if (stmt_) sqlite3_finalize(stmt_);
    stmt_ = std::exchange(o.stmt_, nullptr);
    db_ = o.db_;
  }
  return *this;
}

// A failing bind means a wrong index or an out-of-memory: a bug either way, or beyond recovery.
#define PP_SQLITE_BIND(call)                              \
  do {                                                    \
    int rc_ = (call);                                     \
    PP_ASSERT_MSG(rc_ == SQLITE_OK, sqlite3_errstr(rc_)); \
  } while (0)

Statement& Statement::bind(int i, int64_t v) {
  PP_SQLITE_BIND(sqlite3_bind_int64(stmt_, i, v));
  return *this;
}

Statement& Statement::bind(int i, double v) {
  if (std::isnan(v)) return bind_null(i);
  PP_SQLITE_BIND(sqlite3_bind_double(stmt_, i, v));
  return *this;
}

Statement& Statement::bind(int i, std::string_view v) {
  // A null data pointer would bind SQL NULL; an empty view is the empty string.
  if (v.data() == nullptr) v = "";
  PP_SQLITE_BIND(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
  return *this;
}

Statement& Statement::bind_null(int i) {
  PP_SQLITE_BIND(sqlite3_bind_null(stmt_, i));
  return *this;
}

#undef PP_SQLITE_BIND

Result<bool> Statement::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  // Read the message before reset, which may replace it.
  Status s = db_->error(rc, "");
  sqlite3_reset(stmt_);
  return s;
}

Status Statement::run() {
  for (;;) {
    PP_ASSIGN_OR_RETURN(bool row, step());
    if (!row) break;
  }
  reset();
  return ok_status();
}

void Statement::reset() { sqlite3_reset(stmt_); }

bool Statement::is_null(int c) const { return sqlite3_column_type(stmt_, c) == SQLITE_NULL; }

int64_t Statement::int64(int c) const { return sqlite3_column_int64(stmt_, c); }

double Statement::real(int c) const {
  if (is_null(c)) return std::numeric_limits<double>::quiet_NaN();
  return sqlite3_column_double(stmt_, c);
}

std::string Statement::text(int c) const {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, c));
  if (!p) return {};
  return std::string(p, size_t(sqlite3_column_bytes(stmt_, c)));
}

std::optional<int64_t> Statement::optional_int64(int c) const {
  if (is_null(c)) return std::nullopt;
  return int64(c);
}

// ---- Database -----------------------------------------------------------------------------

Result<std::unique_ptr<Database>> Database::open(const std::filesystem::path& path, int flags,
                                                 std::string label) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return error_status(rc, msg, label, "cannot open");
  }
  sqlite3_extended_result_codes(db, 1);
  return std::unique_ptr<Database>(new Database(db, std::move(label)));
}

Database::~Database() {
  // close_v2 defers the close until every statement is finalized; none outlive us by design.
  if (db_) sqlite3_close_v2(db_);
}

Status Database::error(int rc, std::string_view doing) const {
  return error_status(rc, sqlite3_errmsg(db_), label_, doing);
}

void Database::set_busy_timeout_ms(int ms) { sqlite3_busy_timeout(db_, ms); }

Status Database::exec(const char* sql, std::string_view doing) {
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return error(rc, doing);
  return ok_status();
}

Result<Statement> Database::prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db_, sql.data(), int(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) return error(rc, "");
  return Statement(stmt, this);
}

Result<int64_t> Database::query_int64(const char* sql) {
  PP_ASSIGN_OR_RETURN(Statement st, prepare(sql));
  PP_ASSIGN_OR_RETURN(bool row, st.step());
  if (!row) return internal_error("{}: '{}' returned no row", label_, sql);
  return st.int64(0);
}

Result<std::string> Database::query_text(const char* sql) {
  PP_ASSIGN_OR_RETURN(Statement st, prepare(sql));
  PP_ASSIGN_OR_RETURN(bool row, st.step());
  if (!row) return internal_error("{}: '{}' returned no row", label_, sql);
  return st.text(0);
}

// ---- Transaction --------------------------------------------------------------------------

Result<Transaction> Transaction::begin(Database& db) {
  // sqlite3's busy handler already waits up to the busy timeout inside each attempt; the loop
  // covers a writer that holds the lock longer than that, with a little jitter so that waiting
  // processes do not retry in lockstep.
  thread_local std::minstd_rand jitter(std::random_device{}());
  int rc = SQLITE_OK;
  for (int attempt = 0; attempt < kBeginAttempts; ++attempt) {
    rc = sqlite3_exec(db.handle(), "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) return Transaction(&db);
    if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1 + jitter() % 50));
  }
  return db.error(rc, "cannot begin a write transaction");
}

Transaction::~Transaction() { rollback(); }

Status Transaction::commit() {
  PP_ASSERT(db_ != nullptr);
  int rc = SQLITE_OK;
  // COMMIT can be refused with SQLITE_BUSY while readers hold locks (not in WAL mode, but a
  // store may be opened before WAL is set); the transaction stays open, so try again.
  for (int attempt = 0; attempt < kBeginAttempts; ++attempt) {
    rc = sqlite3_exec(db_->handle(), "COMMIT", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) {
      db_ = nullptr;
      return ok_status();
    }
    if ((rc & 0xff) != SQLITE_BUSY) break;
  }
  Status s = db_->error(rc, "cannot commit");
  rollback();
  return s;
}

void Transaction::rollback() {
  if (!db_) return;
  // After some errors SQLite has rolled back already; ROLLBACK then fails harmlessly.
  if (!sqlite3_get_autocommit(db_->handle())) {
    sqlite3_exec(db_->handle(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
  db_ = nullptr;
}

}  // namespace pp::sqlite
