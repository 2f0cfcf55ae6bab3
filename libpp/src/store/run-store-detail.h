// Shared by the run store's source files. How the run store runs a write: the whole body inside one
// BEGIN IMMEDIATE transaction, retried from the start when SQLite reports the database busy (the
// body must then have had no effect outside the database, which is why bodies only run statements).
// And a read: retried the same way, without a transaction.
#pragma once

#include <utility>

#include "pp/status.h"
#include "pp/store/records.h"
#include "pp/store/run-store.h"
#include "store/sqlite.h"

namespace pp::store_detail {

inline constexpr int kWriteAttempts = 3;

// body: Result<T>(sqlite::Database&). Returns the body's result once committed.
template <typename T, typename Body>
Result<T> write_txn(sqlite::Database& db, Body&& body) {
  for (int attempt = 1;; ++attempt) {
    PP_ASSIGN_OR_RETURN(sqlite::Transaction txn, sqlite::Transaction::begin(db));
    Result<T> r = body(db);
    if (r.ok()) {
      Status c = txn.commit();
      if (c.ok()) return r;
      if (sqlite::is_busy(c) && attempt < kWriteAttempts) continue;
      return c;
    }
    txn.rollback();
    if (sqlite::is_busy(r.status()) && attempt < kWriteAttempts) continue;
    return r;
  }
}

// body: Result<T>(sqlite::Database&).
template <typename T, typename Body>
Result<T> read_retry(sqlite::Database& db, Body&& body) {
  for (int attempt = 1;; ++attempt) {
    Result<T> r = body(db);
    if (r.ok() || !sqlite::is_busy(r.status()) || attempt >= kWriteAttempts) return r;
  }
}

// kFailedPrecondition when `store` was opened read-only.
Status require_writable(const RunStore& store);

// Inserts one event (inside the caller's transaction); at_ms 0 means now. Returns its id.
Result<int64_t> insert_event(sqlite::Database& db, const EventRecord& e);

// SQLite's LIMIT for a filter's limit: -1 (none) for 0.
inline int64_t sql_limit(size_t limit) { return limit == 0 ? -1 : int64_t(limit); }

}  // namespace pp::store_detail
