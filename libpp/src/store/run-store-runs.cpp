// RunStore: serving runs, their stages, and finding runs whose process died without recording
// its end.
#include <unistd.h>

#include <unordered_map>

#include "pp/store/run-store.h"
#include "store/process-info.h"
#include "store/run-store-detail.h"

namespace pp {
namespace {

constexpr const char* kRunColumns =
    "id, started_at_ms, ended_at_ms, outcome, end_message, config_json, model, partition_id, "
    "pp, async_depth, host, pid";

Result<ServingRunRecord> read_run(const sqlite::Statement& st, const std::string& label) {
  ServingRunRecord r;
  r.id = st.int64(0);
  r.started_at_ms = st.int64(1);
  r.ended_at_ms = st.optional_int64(2);
  std::string outcome = st.text(3);
  auto o = parse_run_outcome(outcome);
  if (!o) return data_loss("{}: serving run {} has unknown outcome '{}'", label, r.id, outcome);
  r.outcome = *o;
  r.end_message = st.text(4);
  r.config_json = st.text(5);
  r.model = st.text(6);
  r.partition_id = st.optional_int64(7);
  r.pp = st.int32(8);
  r.async_depth = st.int32(9);
  r.host = st.text(10);
  r.pid = st.int64(11);
  return r;
}

Status read_run_stages(sqlite::Database& db, std::vector<ServingRunRecord>& runs,
                       std::optional<int64_t> only_id) {
  std::unordered_map<int64_t, ServingRunRecord*> by_id;
  for (auto& r : runs) by_id[r.id] = &r;
  // Reading every stage row and dropping unwanted ones is fine: a run has a handful of stages.
  PP_ASSIGN_OR_RETURN(
      sqlite::Statement st,
      db.prepare("SELECT run_id, stage, joined_at_ms, host, device, pid, layer_begin, layer_end "
                 "FROM run_stages WHERE (?1 IS NULL OR run_id = ?1) "
                 "ORDER BY run_id, joined_at_ms, id"));
  st.bind(1, only_id);
  for (;;) {
    PP_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    auto it = by_id.find(st.int64(0));
    if (it == by_id.end()) continue;
    RunStageRecord s;
    s.stage = st.int32(1);
    s.joined_at_ms = st.int64(2);
    s.host = st.text(3);
    s.device = st.text(4);
    s.pid = st.is_null(5) ? 0 : st.int64(5);
    s.layer_begin = st.int32(6);
    s.layer_end = st.int32(7);
    it->second->stages.push_back(std::move(s));
  }
  return ok_status();
}

Status insert_run_stage(sqlite::Database& db, int64_t run_id, const RunStageRecord& s) {
  PP_ASSIGN_OR_RETURN(
      sqlite::Statement st,
      db.prepare("INSERT INTO run_stages (run_id, stage, joined_at_ms, host, device, pid, "
                 "layer_begin, layer_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"));
  st.bind(1, run_id)
      .bind(2, s.stage)
      .bind(3, s.joined_at_ms ? s.joined_at_ms : unix_ms_now())
      .bind(4, s.host)
      .bind(5, s.device)
      .bind(6, s.pid ? std::optional<int64_t>(s.pid) : std::nullopt)
      .bind(7, s.layer_begin)
      .bind(8, s.layer_end);
  Status status = st.run();
  if (!status.ok()) {
    return status.with_context(
        fmt::format("recording stage {} of serving run {}", s.stage, run_id));
  }
  return ok_status();
}

// The outcome of run `id`, kNotFound when there is none.
Result<RunOutcome> run_outcome(sqlite::Database& db, int64_t id) {
  PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                      db.prepare("SELECT outcome FROM serving_runs WHERE id = ?"));
  st.bind(1, id);
  PP_ASSIGN_OR_RETURN(bool row, st.step());
  if (!row) return not_found("{} has no serving run {}", db.label(), id);
  std::string name = st.text(0);
  auto o = parse_run_outcome(name);
  if (!o) return data_loss("{}: serving run {} has unknown outcome '{}'", db.label(), id, name);
  return *o;
}

}  // namespace

Result<int64_t> RunStore::begin_serving_run(const ServingRunRecord& run) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  const std::string here = store_detail::this_host();
  const std::string host = run.host.empty() ? here : run.host;
  const int64_t pid = run.pid ? run.pid : int64_t(getpid());
  // Remember when the process started, to tell it from a later process given the same pid.
  std::optional<int64_t> pid_start;
  if (host == here) pid_start = store_detail::process_start_ticks(pid);
  return store_detail::write_txn<int64_t>(*db_, [&](sqlite::Database& db) -> Result<int64_t> {
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement st,
        db.prepare("INSERT INTO serving_runs (started_at_ms, outcome, config_json, model, "
                   "partition_id, pp, async_depth, host, pid, pid_start) "
                   "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)"));
    st.bind(1, run.started_at_ms ? run.started_at_ms : unix_ms_now())
        .bind(2, run.config_json)
        .bind(3, run.model)
        .bind(4, run.partition_id)
        .bind(5, run.pp)
        .bind(6, run.async_depth)
        .bind(7, host)
        .bind(8, pid)
        .bind(9, pid_start);
    Status s = st.run();
    if (!s.ok()) return s.with_context("recording a serving run");
    const int64_t id = db.last_insert_rowid();
    for (const RunStageRecord& stage : run.stages) {
      PP_RETURN_IF_ERROR(insert_run_stage(db, id, stage));
    }
    return id;
  });
}

Status RunStore::add_run_stage(int64_t run_id, const RunStageRecord& stage) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  Result<bool> r = store_detail::write_txn<bool>(*db_, [&](sqlite::Database& db) -> Result<bool> {
    PP_RETURN_IF_ERROR(run_outcome(db, run_id).status());
    PP_RETURN_IF_ERROR(insert_run_stage(db, run_id, stage));
    return true;
  });
  return r.status();
}

Status RunStore::end_serving_run(int64_t run_id, RunOutcome outcome, std::string_view message) {
  if (outcome == RunOutcome::kRunning) {
    return invalid_argument("cannot end serving run {} with outcome 'running'", run_id);
  }
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  Result<bool> r = store_detail::write_txn<bool>(*db_, [&](sqlite::Database& db) -> Result<bool> {
    PP_ASSIGN_OR_RETURN(RunOutcome now, run_outcome(db, run_id));
    if (now != RunOutcome::kRunning) {
      return make_error(StatusCode::kFailedPrecondition, "serving run {} has already ended ({})",
                        run_id, run_outcome_name(now));
    }
    PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                        db.prepare("UPDATE serving_runs SET outcome = ?, ended_at_ms = ?, "
                                   "end_message = ? WHERE id = ?"));
    st.bind(1, run_outcome_name(outcome)).bind(2, unix_ms_now()).bind(3, message).bind(4, run_id);
    PP_RETURN_IF_ERROR(st.run());
    return true;
  });
  return r.status();
}

Result<std::vector<int64_t>> RunStore::mark_abandoned_runs() {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  const std::string here = store_detail::this_host();
  using Ids = std::vector<int64_t>;
  return store_detail::write_txn<Ids>(*db_, [&](sqlite::Database& db) -> Result<Ids> {
    struct Running {
      int64_t id, pid;
      std::optional<int64_t> pid_start;
    };
    std::vector<Running> running;
    {
      PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                          db.prepare("SELECT id, pid, pid_start FROM serving_runs "
                                     "WHERE outcome = 'running' AND host = ? ORDER BY id"));
      st.bind(1, here);
      for (;;) {
        PP_ASSIGN_OR_RETURN(bool row, st.step());
        if (!row) break;
        running.push_back({st.int64(0), st.int64(1), st.optional_int64(2)});
      }
    }
    Ids marked;
    PP_ASSIGN_OR_RETURN(sqlite::Statement upd,
                        db.prepare("UPDATE serving_runs SET outcome = 'abnormal', "
                                   "ended_at_ms = ?, end_message = ? "
                                   "WHERE id = ? AND outcome = 'running'"));
    for (const Running& r : running) {
      if (store_detail::process_alive(r.pid, r.pid_start)) continue;
      const std::string why =
          fmt::format("process {} on '{}' ended without recording the end of its run", r.pid, here);
      upd.bind(1, unix_ms_now()).bind(2, why).bind(3, r.id);
      PP_RETURN_IF_ERROR(upd.run());
      EventRecord e;
      e.run_id = r.id;
      e.kind = "run_abandoned";
      e.message = why;
      PP_RETURN_IF_ERROR(store_detail::insert_event(db, e).status());
      marked.push_back(r.id);
    }
    return marked;
  });
}

Result<ServingRunRecord> RunStore::get_serving_run(int64_t id) {
  std::lock_guard lock(mu_);
  return store_detail::read_retry<ServingRunRecord>(
      *db_, [&](sqlite::Database& db) -> Result<ServingRunRecord> {
        PP_ASSIGN_OR_RETURN(
            sqlite::Statement st,
            db.prepare(fmt::format("SELECT {} FROM serving_runs WHERE id = ?", kRunColumns)));
        st.bind(1, id);
        PP_ASSIGN_OR_RETURN(bool row, st.step());
        if (!row) return not_found("{} has no serving run {}", db.label(), id);
        PP_ASSIGN_OR_RETURN(ServingRunRecord r, read_run(st, db.label()));
        std::vector<ServingRunRecord> runs{std::move(r)};
        PP_RETURN_IF_ERROR(read_run_stages(db, runs, id));
        return std::move(runs[0]);
      });
}

Result<std::vector<ServingRunRecord>> RunStore::list_serving_runs(const ServingRunFilter& filter) {
  std::lock_guard lock(mu_);
  using Runs = std::vector<ServingRunRecord>;
  return store_detail::read_retry<Runs>(*db_, [&](sqlite::Database& db) -> Result<Runs> {
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement st,
        db.prepare(
            fmt::format("SELECT * FROM (SELECT {} FROM serving_runs "
                        "WHERE (?1 IS NULL OR outcome = ?1) AND started_at_ms >= ?2 "
                        "AND (?3 = 0 OR started_at_ms < ?3) "
                        "ORDER BY started_at_ms DESC, id DESC LIMIT ?4) ORDER BY started_at_ms, id",
                        kRunColumns)));
    st.bind(1, filter.outcome ? std::optional<std::string>(run_outcome_name(*filter.outcome))
                              : std::nullopt)
        .bind(2, filter.since_ms)
        .bind(3, filter.until_ms)
        .bind(4, store_detail::sql_limit(filter.limit));
    Runs runs;
    for (;;) {
      PP_ASSIGN_OR_RETURN(bool row, st.step());
      if (!row) break;
      PP_ASSIGN_OR_RETURN(ServingRunRecord r, read_run(st, db.label()));
      runs.push_back(std::move(r));
    }
    PP_RETURN_IF_ERROR(read_run_stages(db, runs, std::nullopt));
    return runs;
  });
}

}  // namespace pp
