// RunStore: opening, validating and migrating the database, and the write/read helpers shared by
// the record methods (run-store-*.cpp).
//
// Opening checks the file before anything writes to it: the schema version (newer is refused),
// the application id (another program's database is refused) and SQLite's quick_check (a file
// that is not a database or is damaged is refused). Only then does a read-write open switch to WAL
// and migrate, so a bad file is never overwritten or recreated.
#include "pp/store/run-store.h"

#include <chrono>
#include <cstdlib>
#include <system_error>
#include <thread>

#include "store/migrations.h"
#include "store/run-store-detail.h"
#include "store/sqlite.h"

namespace pp {
namespace fs = std::filesystem;

namespace {

constexpr int kBusyTimeoutMs = 10'000;
// Tries of the whole set-up of a connection that meets a lock (see open()).
constexpr int kOpenAttempts = 8;
constexpr int kQuickCheckMaxErrors = 8;

// Reads only: schema version, application id, quick_check.
Status validate(sqlite::Database& db, RunStore::OpenMode mode) {
  // One statement reads one snapshot: read one by one, another process creating the file in
  // between could show a version of 0 beside its new tables, which looks like another program's
  // database (seen: six processes opening one fresh file).
  int64_t version = 0, app_id = 0, n_objects = 0;
  {
    PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                        db.prepare("SELECT (SELECT user_version FROM pragma_user_version), "
                                   "(SELECT application_id FROM pragma_application_id), "
                                   "(SELECT count(*) FROM sqlite_master)"));
    PP_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) return internal_error("{}: reading the schema version returned no row", db.label());
    version = st.int64(0);
    app_id = st.int64(1);
    n_objects = st.int64(2);
  }
  if (version > RunStore::kSchemaVersion) {
    return make_error(StatusCode::kFailedPrecondition,
                      "{} has schema version {}, newer than this pp ({})", db.label(), version,
                      RunStore::kSchemaVersion);
  }
  const bool ours = app_id == RunStore::kApplicationId;
  const bool blank = app_id == 0 && version == 0 && n_objects == 0;
  if (!ours && !blank) {
    return make_error(StatusCode::kFailedPrecondition,
                      "{} is a SQLite database of another program (application id {}, user "
                      "version {}), not a pp run store",
                      db.label(), app_id, version);
  }

  {
    PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                        db.prepare(fmt::format("PRAGMA quick_check({})", kQuickCheckMaxErrors)));
    std::string problems;
    for (;;) {
      PP_ASSIGN_OR_RETURN(bool row, st.step());
      if (!row) break;
      std::string line = st.text(0);
      if (line == "ok") continue;
      if (!problems.empty()) problems += "; ";
      problems += line;
    }
    if (!problems.empty()) return data_loss("{} is corrupt: {}", db.label(), problems);
  }

  if (mode == RunStore::OpenMode::kReadOnly && version < RunStore::kSchemaVersion) {
    return make_error(StatusCode::kFailedPrecondition,
                      "{} has schema version {}, older than this pp ({}); open it read-write "
                      "once to upgrade it",
                      db.label(), version, RunStore::kSchemaVersion);
  }
  return ok_status();
}

Status set_wal(sqlite::Database& db) {
  // Switching to WAL needs a moment of exclusive access; the busy handler waits for it, and the
  // loop covers a lock held beyond the busy timeout.
  Status last;
  for (int attempt = 0; attempt < sqlite::Transaction::kBeginAttempts; ++attempt) {
    Result<std::string> mode = db.query_text("PRAGMA journal_mode = WAL");
    if (mode.ok()) {
      if (*mode == "wal") return ok_status();
      return internal_error("{}: cannot switch to WAL mode (journal mode is '{}')", db.label(),
                            *mode);
    }
    last = mode.status();
    if (!sqlite::is_busy(last)) break;
  }
  return last;
}

// Everything opening does on a fresh connection: validation, then (read-write) WAL and the
// migrations.
Status set_up(sqlite::Database& db, RunStore::OpenMode mode) {
  PP_RETURN_IF_ERROR(validate(db, mode));
  // Per connection: foreign keys are off by default in SQLite.
  PP_RETURN_IF_ERROR(db.exec("PRAGMA foreign_keys = ON", "enabling foreign keys"));
  if (mode != RunStore::OpenMode::kReadWrite) return ok_status();
  PP_RETURN_IF_ERROR(set_wal(db));
  // In WAL mode NORMAL keeps the database consistent through any crash; only a power loss may
  // drop the last transactions.
  PP_RETURN_IF_ERROR(db.exec("PRAGMA synchronous = NORMAL", "setting synchronous mode"));
  PP_ASSIGN_OR_RETURN(int64_t version, db.query_int64("PRAGMA user_version"));
  if (version < RunStore::kSchemaVersion) {
    PP_RETURN_IF_ERROR(
        store_detail::migrate(db, store_detail::migrations(), RunStore::kApplicationId));
  }
  return ok_status();
}

}  // namespace

RunStore::RunStore(fs::path path, OpenMode mode, std::unique_ptr<sqlite::Database> db)
    : path_(std::move(path)), mode_(mode), db_(std::move(db)) {}

RunStore::~RunStore() = default;

fs::path RunStore::default_path() {
  // XDG Base Directory: a relative XDG_DATA_HOME is invalid and must be ignored.
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x && fs::path(x).is_absolute()) {
    return fs::path(x) / "pp" / "runs.db";
  }
  const char* home = std::getenv("HOME");
  fs::path base = home && *home ? fs::path(home) : fs::current_path();
  return base / ".local" / "share" / "pp" / "runs.db";
}

Result<std::unique_ptr<RunStore>> RunStore::open(const fs::path& db_path, OpenMode mode) {
  fs::path path = db_path.empty() ? default_path() : db_path;
  const std::string label = fmt::format("run store '{}'", path.string());

  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  const bool exists = fs::exists(st);
  if (exists && fs::is_directory(st)) return invalid_argument("{} is a folder", label);

  int flags = SQLITE_OPEN_NOMUTEX;
#ifdef SQLITE_OPEN_EXRESCODE
  flags |= SQLITE_OPEN_EXRESCODE;
#endif
  if (mode == OpenMode::kReadOnly) {
    if (!exists) return not_found("{} does not exist", label);
    flags |= SQLITE_OPEN_READONLY;
  } else {
    if (!exists && path.has_parent_path()) {
      fs::create_directories(path.parent_path(), ec);
      if (ec) {
        return internal_error("cannot create folder '{}': {}", path.parent_path().string(),
                              ec.message());
      }
    }
    flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
  }

  PP_ASSIGN_OR_RETURN(std::unique_ptr<sqlite::Database> db,
                      sqlite::Database::open(path, flags, label));
  db->set_busy_timeout_ms(kBusyTimeoutMs);
  // Other processes may be creating, switching to WAL or migrating the same file this moment,
  // and SQLite answers some statements then with SQLITE_BUSY at once, without its busy handler
  // (seen: several processes opening one fresh file). Setting up is idempotent: try again.
  Status s;
  for (int attempt = 0; attempt < kOpenAttempts; ++attempt) {
    s = set_up(*db, mode);
    if (s.ok() || !sqlite::is_busy(s)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50 * (attempt + 1)));
  }
  PP_RETURN_IF_ERROR(s);
  return std::unique_ptr<RunStore>(new RunStore(std::move(path), mode, std::move(db)));
}

Result<int> RunStore::schema_version() {
  std::lock_guard lock(mu_);
  PP_ASSIGN_OR_RETURN(int64_t v, db_->query_int64("PRAGMA user_version"));
  return int(v);
}

Status RunStore::check_integrity() {
  std::lock_guard lock(mu_);
  PP_ASSIGN_OR_RETURN(sqlite::Statement st, db_->prepare("PRAGMA integrity_check"));
  std::string problems;
  for (;;) {
    PP_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    std::string line = st.text(0);
    if (line == "ok") continue;
    if (!problems.empty()) problems += "; ";
    problems += line;
  }
  if (!problems.empty()) return data_loss("{} is corrupt: {}", db_->label(), problems);
  return ok_status();
}

}  // namespace pp

namespace pp::store_detail {

Status require_writable(const RunStore& store) {
  if (store.mode() == RunStore::OpenMode::kReadWrite) return ok_status();
  return make_error(StatusCode::kFailedPrecondition, "run store '{}' is open read-only",
                    store.path().string());
}

}  // namespace pp::store_detail
