// RunStore: benchmark runs and their metrics.
#include "pp/store/run-store.h"
#include "store/run-store-detail.h"

namespace pp {
namespace {

constexpr const char* kBenchColumns =
    "id, created_at_ms, kind, label, params_json, server_url, serving_run_id, parent_id";

Result<BenchRecord> read_bench(const sqlite::Statement& st, const std::string& label) {
  BenchRecord b;
  b.id = st.int64(0);
  b.created_at_ms = st.int64(1);
  std::string kind = st.text(2);
  auto k = parse_bench_kind(kind);
  if (!k) return data_loss("{}: bench run {} has unknown kind '{}'", label, b.id, kind);
  b.kind = *k;
  b.label = st.text(3);
  b.params_json = st.text(4);
  b.server_url = st.text(5);
  b.serving_run_id = st.optional_int64(6);
  b.parent_id = st.optional_int64(7);
  return b;
}

Status read_metrics(sqlite::Database& db, BenchRecord& b) {
  PP_ASSIGN_OR_RETURN(
      sqlite::Statement st,
      db.prepare("SELECT name, value, unit FROM bench_metrics WHERE bench_id = ? ORDER BY name"));
  st.bind(1, b.id);
  for (;;) {
    PP_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    b.metrics[st.text(0)] = BenchMetric{st.real(1), st.text(2)};
  }
  return ok_status();
}

}  // namespace

Result<int64_t> RunStore::record_bench_run(const BenchRecord& bench) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  return store_detail::write_txn<int64_t>(*db_, [&](sqlite::Database& db) -> Result<int64_t> {
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement ins,
        db.prepare("INSERT INTO bench_runs (created_at_ms, kind, label, params_json, server_url, "
                   "serving_run_id, parent_id) VALUES (?, ?, ?, ?, ?, ?, ?)"));
    ins.bind(1, bench.created_at_ms ? bench.created_at_ms : unix_ms_now())
        .bind(2, bench_kind_name(bench.kind))
        .bind(3, bench.label)
        .bind(4, bench.params_json)
        .bind_text_or_null(5, bench.server_url)
        .bind(6, bench.serving_run_id)
        .bind(7, bench.parent_id);
    Status s = ins.run();
    if (!s.ok()) return s.with_context("recording a bench run");
    const int64_t id = db.last_insert_rowid();
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement metric,
        db.prepare("INSERT INTO bench_metrics (bench_id, name, value, unit) VALUES (?, ?, ?, ?)"));
    for (const auto& [name, m] : bench.metrics) {
      metric.bind(1, id).bind(2, name).bind(3, m.value).bind(4, m.unit);
      s = metric.run();
      if (!s.ok()) return s.with_context(fmt::format("recording metric '{}' of a bench run", name));
    }
    return id;
  });
}

Result<BenchRecord> RunStore::get_bench_run(int64_t id) {
  std::lock_guard lock(mu_);
  return store_detail::read_retry<BenchRecord>(
      *db_, [&](sqlite::Database& db) -> Result<BenchRecord> {
        PP_ASSIGN_OR_RETURN(
            sqlite::Statement st,
            db.prepare(fmt::format("SELECT {} FROM bench_runs WHERE id = ?", kBenchColumns)));
        st.bind(1, id);
        PP_ASSIGN_OR_RETURN(bool row, st.step());
        if (!row) return not_found("{} has no bench run {}", db.label(), id);
        PP_ASSIGN_OR_RETURN(BenchRecord b, read_bench(st, db.label()));
        PP_RETURN_IF_ERROR(read_metrics(db, b));
        return b;
      });
}

Result<std::vector<BenchRecord>> RunStore::list_bench_runs(const BenchFilter& filter) {
  std::lock_guard lock(mu_);
  using Benches = std::vector<BenchRecord>;
  return store_detail::read_retry<Benches>(*db_, [&](sqlite::Database& db) -> Result<Benches> {
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement st,
        db.prepare(fmt::format(
            "SELECT * FROM (SELECT {} FROM bench_runs "
            "WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR label = ?2) "
            "AND (?3 IS NULL OR serving_run_id = ?3) AND (?4 IS NULL OR parent_id = ?4) "
            "AND created_at_ms >= ?5 AND (?6 = 0 OR created_at_ms < ?6) "
            "ORDER BY created_at_ms DESC, id DESC LIMIT ?7) ORDER BY created_at_ms, id",
            kBenchColumns)));
    st.bind(1,
            filter.kind ? std::optional<std::string>(bench_kind_name(*filter.kind)) : std::nullopt)
        .bind(2, filter.label)
        .bind(3, filter.serving_run_id)
        .bind(4, filter.parent_id)
        .bind(5, filter.since_ms)
        .bind(6, filter.until_ms)
        .bind(7, store_detail::sql_limit(filter.limit));
    Benches out;
    for (;;) {
      PP_ASSIGN_OR_RETURN(bool row, st.step());
      if (!row) break;
      PP_ASSIGN_OR_RETURN(BenchRecord b, read_bench(st, db.label()));
      out.push_back(std::move(b));
    }
    if (filter.with_metrics) {
      for (BenchRecord& b : out) PP_RETURN_IF_ERROR(read_metrics(db, b));
    }
    return out;
  });
}

}  // namespace pp
