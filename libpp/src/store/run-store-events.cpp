// RunStore: notable events (a stage lost, a preemption, an error), alone or in batches.
#include "pp/store/run-store.h"
#include "store/run-store-detail.h"

namespace pp {

namespace store_detail {

Result<int64_t> insert_event(sqlite::Database& db, const EventRecord& e) {
  PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                      db.prepare("INSERT INTO events (at_ms, run_id, kind, stage, request_id, "
                                 "message) VALUES (?, ?, ?, ?, ?, ?)"));
  st.bind(1, e.at_ms ? e.at_ms : unix_ms_now())
      .bind(2, e.run_id)
      .bind(3, e.kind)
      .bind(4, e.stage)
      .bind_text_or_null(5, e.request_id)
      .bind(6, e.message);
  Status s = st.run();
  if (!s.ok()) return s.with_context(fmt::format("recording event '{}'", e.kind));
  return db.last_insert_rowid();
}

}  // namespace store_detail

Result<int64_t> RunStore::record_event(const EventRecord& event) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  return store_detail::write_txn<int64_t>(
      *db_, [&](sqlite::Database& db) { return store_detail::insert_event(db, event); });
}

Status RunStore::record_events(std::span<const EventRecord> events) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  if (events.empty()) return ok_status();
  Result<bool> r = store_detail::write_txn<bool>(*db_, [&](sqlite::Database& db) -> Result<bool> {
    // One statement for the whole batch: preparing per row would dominate a large batch.
    PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                        db.prepare("INSERT INTO events (at_ms, run_id, kind, stage, request_id, "
                                   "message) VALUES (?, ?, ?, ?, ?, ?)"));
    const int64_t now = unix_ms_now();
    for (const EventRecord& e : events) {
      st.bind(1, e.at_ms ? e.at_ms : now)
          .bind(2, e.run_id)
          .bind(3, e.kind)
          .bind(4, e.stage)
          .bind_text_or_null(5, e.request_id)
          .bind(6, e.message);
      Status s = st.run();
      if (!s.ok()) return s.with_context(fmt::format("recording event '{}'", e.kind));
    }
    return true;
  });
  return r.status();
}

Result<std::vector<EventRecord>> RunStore::list_events(const EventFilter& filter) {
  std::lock_guard lock(mu_);
  using Events = std::vector<EventRecord>;
  return store_detail::read_retry<Events>(*db_, [&](sqlite::Database& db) -> Result<Events> {
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement st,
        db.prepare("SELECT * FROM (SELECT id, at_ms, run_id, kind, stage, request_id, message "
                   "FROM events WHERE (?1 IS NULL OR run_id = ?1) AND (?2 IS NULL OR kind = ?2) "
                   "AND at_ms >= ?3 AND (?4 = 0 OR at_ms < ?4) "
                   "ORDER BY at_ms DESC, id DESC LIMIT ?5) ORDER BY at_ms, id"));
    st.bind(1, filter.run_id)
        .bind(2, filter.kind)
        .bind(3, filter.since_ms)
        .bind(4, filter.until_ms)
        .bind(5, store_detail::sql_limit(filter.limit));
    Events out;
    for (;;) {
      PP_ASSIGN_OR_RETURN(bool row, st.step());
      if (!row) break;
      EventRecord e;
      e.id = st.int64(0);
      e.at_ms = st.int64(1);
      e.run_id = st.optional_int64(2);
      e.kind = st.text(3);
      if (!st.is_null(4)) e.stage = st.int32(4);
      e.request_id = st.text(5);
      e.message = st.text(6);
      out.push_back(std::move(e));
    }
    return out;
  });
}

Result<std::vector<EventRecord>> RunStore::list_events(int64_t run_id) {
  EventFilter f;
  f.run_id = run_id;
  return list_events(f);
}

}  // namespace pp
