// Tests of the run store within one process: the schema made by the migrations, reopening,
// round trips of every record type with random values, filters, read-only opens, and refusing
// (without touching them) files from a newer pp, files of other programs, garbage and truncated
// databases.
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "pp/store/run-store.h"
#include "test-run-store-util.h"
#include "test-util.h"

namespace pp {
namespace {

namespace fs = std::filesystem;
using test::FileSnapshot;
using test::random_int;
using test::random_text;
using test::random_time_ms;
using test::RawDb;

std::unique_ptr<RunStore> open_ok(const fs::path& p,
                                  RunStore::OpenMode mode = RunStore::OpenMode::kReadWrite) {
  auto r = RunStore::open(p, mode);
  EXPECT_TRUE(r.ok()) << r.status().message();
  if (!r.ok()) return nullptr;
  return std::move(r).value();
}

PartitionRecord random_partition() {
  PartitionRecord p;
  p.created_at_ms = random_time_ms();
  p.source_path = "/models/" + random_text();
  p.source_checksum = "sha256:" + random_text(8);
  p.model_config_json = "{\"n_layer\": " + std::to_string(random_int(1, 99)) + "}";
  p.pp = int(random_int(1, 8));
  p.strategy = random_text(6);
  p.plan_json = random_text();
  p.output_dir = "/parts/" + random_text();
  p.dtype = random_text(4);
  int layer = 0;
  for (int s = 0; s < p.pp; ++s) {
    PartitionStageRecord st;
    st.stage = s;
    st.layer_begin = layer;
    layer += int(random_int(1, 10));
    st.layer_end = layer;
    st.has_embedding = s == 0;
    st.has_lm_head = s == p.pp - 1 || random_int(0, 1);
    st.file = "stage-" + std::to_string(s) + ".safetensors";
    st.bytes = random_int(1, int64_t(1) << 40);
    st.sha256 = random_text(16);
    p.bytes += st.bytes;
    p.stages.push_back(st);
  }
  return p;
}

void expect_same(const PartitionRecord& a, const PartitionRecord& b) {
  EXPECT_EQ(a.created_at_ms, b.created_at_ms);
  EXPECT_EQ(a.source_path, b.source_path);
  EXPECT_EQ(a.source_checksum, b.source_checksum);
  EXPECT_EQ(a.model_config_json, b.model_config_json);
  EXPECT_EQ(a.pp, b.pp);
  EXPECT_EQ(a.strategy, b.strategy);
  EXPECT_EQ(a.plan_json, b.plan_json);
  EXPECT_EQ(a.output_dir, b.output_dir);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.bytes, b.bytes);
  ASSERT_EQ(a.stages.size(), b.stages.size());
  for (size_t i = 0; i < a.stages.size(); ++i) {
    const auto &x = a.stages[i], &y = b.stages[i];
    EXPECT_EQ(x.stage, y.stage);
    EXPECT_EQ(x.layer_begin, y.layer_begin);
    EXPECT_EQ(x.layer_end, y.layer_end);
    EXPECT_EQ(x.has_embedding, y.has_embedding);
    EXPECT_EQ(x.has_lm_head, y.has_lm_head);
    EXPECT_EQ(x.file, y.file);
    EXPECT_EQ(x.bytes, y.bytes);
    EXPECT_EQ(x.sha256, y.sha256);
  }
}

RunStageRecord random_run_stage(int stage) {
  RunStageRecord s;
  s.stage = stage;
  s.joined_at_ms = random_time_ms();
  s.host = random_text(10);
  s.device = "cuda:" + std::to_string(random_int(0, 7));
  s.pid = random_int(1, 1 << 22);
  s.layer_begin = int(random_int(0, 50));
  s.layer_end = s.layer_begin + int(random_int(1, 20));
  return s;
}

void expect_same(const RunStageRecord& x, const RunStageRecord& y) {
  EXPECT_EQ(x.stage, y.stage);
  EXPECT_EQ(x.joined_at_ms, y.joined_at_ms);
  EXPECT_EQ(x.host, y.host);
  EXPECT_EQ(x.device, y.device);
  EXPECT_EQ(x.pid, y.pid);
  EXPECT_EQ(x.layer_begin, y.layer_begin);
  EXPECT_EQ(x.layer_end, y.layer_end);
}

// A metric value: ordinary numbers of any magnitude and sign, and the special values.
double random_metric_value() {
  switch (random_int(0, 5)) {
    case 0:
      return std::nan("");
    case 1:
      return random_int(0, 1) ? INFINITY : -INFINITY;
    default: {
      std::uniform_real_distribution<double> d(-1.0, 1.0);
      return d(test::rng()) * std::pow(10.0, double(random_int(-30, 30)));
    }
  }
}

BenchRecord random_bench(std::optional<int64_t> run_id, std::optional<int64_t> parent) {
  BenchRecord b;
  b.created_at_ms = random_time_ms();
  b.kind = BenchKind(random_int(0, 2));
  b.label = random_text(12);
  b.params_json = "{\"rate\": " + std::to_string(random_int(1, 1000)) + "}";
  b.server_url = random_int(0, 1) ? "http://" + random_text(10) + ":8000" : "";
  b.serving_run_id = run_id;
  b.parent_id = parent;
  int n = int(random_int(0, 12));
  for (int i = 0; i < n; ++i) {
    b.metrics["m" + std::to_string(i) + random_text(6)] =
        BenchMetric{random_metric_value(), random_text(4)};
  }
  return b;
}

void expect_same(const BenchRecord& a, const BenchRecord& b) {
  EXPECT_EQ(a.created_at_ms, b.created_at_ms);
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.label, b.label);
  EXPECT_EQ(a.params_json, b.params_json);
  EXPECT_EQ(a.server_url, b.server_url);
  EXPECT_EQ(a.serving_run_id, b.serving_run_id);
  EXPECT_EQ(a.parent_id, b.parent_id);
  ASSERT_EQ(a.metrics.size(), b.metrics.size());
  for (const auto& [name, m] : a.metrics) {
    auto it = b.metrics.find(name);
    ASSERT_NE(it, b.metrics.end()) << name;
    if (std::isnan(m.value)) {
      EXPECT_TRUE(std::isnan(it->second.value)) << name;
    } else {
      EXPECT_EQ(m.value, it->second.value) << name;  // REAL keeps every bit of a double
    }
    EXPECT_EQ(m.unit, it->second.unit) << name;
  }
}

EventRecord random_event(std::optional<int64_t> run_id) {
  EventRecord e;
  e.at_ms = random_time_ms();
  e.run_id = run_id;
  e.kind = random_int(0, 1) ? "preemption" : "stage_lost";
  if (random_int(0, 1)) e.stage = int(random_int(0, 7));
  if (random_int(0, 1)) e.request_id = "req-" + random_text(8);
  e.message = random_text(60);
  return e;
}

void expect_same(const EventRecord& a, const EventRecord& b) {
  EXPECT_EQ(a.at_ms, b.at_ms);
  EXPECT_EQ(a.run_id, b.run_id);
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.stage, b.stage);
  EXPECT_EQ(a.request_id, b.request_id);
  EXPECT_EQ(a.message, b.message);
}

// ---- schema ------------------------------------------------------------------------------

TEST(RunStore, MigrationFromEmptyCreatesSchemaAndFolders) {
  test::TempDir dir;
  const fs::path db = dir.path() / "deep" / "er" / "runs.db";
  auto store = open_ok(db);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->path(), db);
  auto v = store->schema_version();
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, RunStore::kSchemaVersion);
  ASSERT_TRUE(fs::exists(db));

  RawDb raw(db, /*read_only=*/true);
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), RunStore::kSchemaVersion);
  EXPECT_EQ(raw.scalar("PRAGMA application_id"), RunStore::kApplicationId);
  EXPECT_EQ(raw.column("PRAGMA journal_mode"), std::vector<std::string>{"wal"});
  auto tables = raw.column("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
  EXPECT_EQ(tables,
            (std::vector<std::string>{"bench_metrics", "bench_runs", "events", "partition_stages",
                                      "partitions", "run_stages", "serving_runs"}));
  // Every foreign key column leads an index (or the primary key).
  for (auto [table, column] :
       std::vector<std::pair<std::string, std::string>>{{"partition_stages", "partition_id"},
                                                        {"serving_runs", "partition_id"},
                                                        {"run_stages", "run_id"},
                                                        {"bench_runs", "serving_run_id"},
                                                        {"bench_runs", "parent_id"},
                                                        {"bench_metrics", "bench_id"},
                                                        {"events", "run_id"}}) {
    bool indexed = false;
    for (const std::string& index :
         raw.column("SELECT name FROM pragma_index_list('" + table + "')")) {
      auto cols = raw.column("SELECT name FROM pragma_index_info('" + index + "')");
      if (!cols.empty() && cols[0] == column) indexed = true;
    }
    EXPECT_TRUE(indexed) << table << "." << column;
  }
  EXPECT_EQ(raw.column("PRAGMA integrity_check"), std::vector<std::string>{"ok"});
  EXPECT_TRUE(store->check_integrity().ok());
}

TEST(RunStore, ForeignKeysAreEnforced) {
  test::TempDir dir;
  auto store = open_ok(dir.path() / "runs.db");
  ASSERT_TRUE(store);
  const int64_t missing = random_int(1000, 1'000'000);
  BenchRecord b = random_bench(missing, std::nullopt);
  auto r = store->record_bench_run(b);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().message();
  EventRecord e = random_event(missing);
  EXPECT_EQ(store->record_event(e).status().code(), StatusCode::kInvalidArgument);
  // Nothing of the failed writes remains.
  auto benches = store->list_bench_runs();
  ASSERT_TRUE(benches.ok());
  EXPECT_TRUE(benches->empty());
  EXPECT_EQ(store->add_run_stage(missing, random_run_stage(0)).code(), StatusCode::kNotFound);
}

TEST(RunStore, ReopenIsIdempotent) {
  test::TempDir dir;
  const fs::path db = dir.path() / "runs.db";
  PartitionRecord p = random_partition();
  int64_t id = 0;
  {
    auto store = open_ok(db);
    ASSERT_TRUE(store);
    auto r = store->record_partition(p);
    ASSERT_TRUE(r.ok()) << r.status().message();
    id = *r;
  }
  std::vector<std::string> schema;
  {
    RawDb raw(db, true);
    schema = raw.column("SELECT sql FROM sqlite_master ORDER BY name");
  }
  for (int i = 0; i < 3; ++i) {
    auto store = open_ok(db);
    ASSERT_TRUE(store);
    EXPECT_EQ(*store->schema_version(), RunStore::kSchemaVersion);
    auto parts = store->list_partitions();
    ASSERT_TRUE(parts.ok());
    ASSERT_EQ(parts->size(), 1u);
    EXPECT_EQ((*parts)[0].id, id);
    expect_same(p, (*parts)[0]);
    RawDb raw(db, true);
    EXPECT_EQ(raw.column("SELECT sql FROM sqlite_master ORDER BY name"), schema);
  }
}

// ---- round trips -------------------------------------------------------------------------

TEST(RunStore, PartitionsRoundTrip) {
  test::TempDir dir;
  auto store = open_ok(dir.path() / "runs.db");
  ASSERT_TRUE(store);
  std::vector<PartitionRecord> written;
  for (int i = 0; i < 6; ++i) {
    PartitionRecord p = random_partition();
    p.created_at_ms = 1'700'000'000'000 + i * 1000;  // oldest first in the list
    auto id = store->record_partition(p);
    ASSERT_TRUE(id.ok()) << id.status().message();
    p.id = *id;
    written.push_back(p);
  }
  auto parts = store->list_partitions();
  ASSERT_TRUE(parts.ok()) << parts.status().message();
  ASSERT_EQ(parts->size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_EQ((*parts)[i].id, written[i].id);
    expect_same(written[i], (*parts)[i]);
  }
  auto one = store->get_partition(written[3].id);
  ASSERT_TRUE(one.ok());
  expect_same(written[3], *one);
  EXPECT_EQ(store->get_partition(written.back().id + 100).status().code(), StatusCode::kNotFound);

  // A zero timestamp means now.
  PartitionRecord now = random_partition();
  now.created_at_ms = 0;
  const int64_t before = unix_ms_now();
  auto id = store->record_partition(now);
  ASSERT_TRUE(id.ok());
  auto got = store->get_partition(*id);
  ASSERT_TRUE(got.ok());
  EXPECT_GE(got->created_at_ms, before);
  EXPECT_LE(got->created_at_ms, unix_ms_now());

  // A bad record is refused whole: the stages of a partition with pp 0 are not left behind.
  PartitionRecord bad = random_partition();
  bad.pp = 0;
  EXPECT_EQ(store->record_partition(bad).status().code(), StatusCode::kInvalidArgument);
  PartitionRecord dup = random_partition();
  dup.stages.push_back(dup.stages[0]);  // the same stage twice
  EXPECT_EQ(store->record_partition(dup).status().code(), StatusCode::kInvalidArgument);
  RawDb raw(store->path(), true);
  EXPECT_EQ(raw.scalar("SELECT count(*) FROM partitions"), int64_t(written.size()) + 1);
  int64_t n_stages = 0;
  for (auto& p : written) n_stages += int64_t(p.stages.size());
  n_stages += int64_t(now.stages.size());
  EXPECT_EQ(raw.scalar("SELECT count(*) FROM partition_stages"), n_stages);
}

TEST(RunStore, ServingRunsRoundTrip) {
  test::TempDir dir;
  auto store = open_ok(dir.path() / "runs.db");
  ASSERT_TRUE(store);
  auto part = store->record_partition(random_partition());
  ASSERT_TRUE(part.ok());

  ServingRunRecord run;
  run.started_at_ms = random_time_ms();
  run.config_json = "{\"port\": " + std::to_string(random_int(1024, 65535)) + "}";
  run.model = random_text();
  run.partition_id = *part;
  run.pp = int(random_int(1, 4));
  run.async_depth = int(random_int(0, 3));
  run.host = "host-" + random_text(6);
  run.pid = random_int(2, 1 << 22);
  for (int s = 0; s < run.pp; ++s) run.stages.push_back(random_run_stage(s));
  auto id = store->begin_serving_run(run);
  ASSERT_TRUE(id.ok()) << id.status().message();

  // A restarted stage joins again.
  RunStageRecord again = random_run_stage(0);
  again.joined_at_ms = run.stages.back().joined_at_ms + 5'000'000'000'000;
  ASSERT_TRUE(store->add_run_stage(*id, again).ok());

  auto got = store->get_serving_run(*id);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(got->id, *id);
  EXPECT_EQ(got->started_at_ms, run.started_at_ms);
  EXPECT_FALSE(got->ended_at_ms.has_value());
  EXPECT_EQ(got->outcome, RunOutcome::kRunning);
  EXPECT_EQ(got->config_json, run.config_json);
  EXPECT_EQ(got->model, run.model);
  EXPECT_EQ(got->partition_id, run.partition_id);
  EXPECT_EQ(got->pp, run.pp);
  EXPECT_EQ(got->async_depth, run.async_depth);
  EXPECT_EQ(got->host, run.host);
  EXPECT_EQ(got->pid, run.pid);
  auto stages = run.stages;
  std::stable_sort(stages.begin(), stages.end(),
                   [](auto& a, auto& b) { return a.joined_at_ms < b.joined_at_ms; });
  stages.push_back(again);
  ASSERT_EQ(got->stages.size(), stages.size());
  for (size_t i = 0; i < stages.size(); ++i) expect_same(stages[i], got->stages[i]);

  // Ending.
  const std::string why = random_text();
  const RunOutcome outcome = random_int(0, 1) ? RunOutcome::kOk : RunOutcome::kError;
  EXPECT_EQ(store->end_serving_run(*id, RunOutcome::kRunning).code(), StatusCode::kInvalidArgument);
  const int64_t before = unix_ms_now();
  ASSERT_TRUE(store->end_serving_run(*id, outcome, why).ok());
  EXPECT_EQ(store->end_serving_run(*id, RunOutcome::kOk).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->end_serving_run(*id + 1000, RunOutcome::kOk).code(), StatusCode::kNotFound);
  got = store->get_serving_run(*id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->outcome, outcome);
  EXPECT_EQ(got->end_message, why);
  ASSERT_TRUE(got->ended_at_ms.has_value());
  EXPECT_GE(*got->ended_at_ms, before);

  // Defaults: this host and this process, started now.
  ServingRunRecord mine;
  mine.model = random_text();
  auto mine_id = store->begin_serving_run(mine);
  ASSERT_TRUE(mine_id.ok());
  auto mine_got = store->get_serving_run(*mine_id);
  ASSERT_TRUE(mine_got.ok());
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_EQ(mine_got->host, host);
  EXPECT_EQ(mine_got->pid, int64_t(getpid()));
  EXPECT_GE(mine_got->started_at_ms, before);

  // Filters.
  ServingRunFilter f;
  f.outcome = RunOutcome::kRunning;
  auto running = store->list_serving_runs(f);
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].id, *mine_id);
  auto all = store->list_serving_runs();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 2u);
}

TEST(RunStore, BenchRunsRoundTripAndFilters) {
  test::TempDir dir;
  auto store = open_ok(dir.path() / "runs.db");
  ASSERT_TRUE(store);
  ServingRunRecord run;
  run.model = "m";
  auto run_id = store->begin_serving_run(run);
  ASSERT_TRUE(run_id.ok());

  BenchRecord sweep = random_bench(std::nullopt, std::nullopt);
  sweep.kind = BenchKind::kSweep;
  sweep.created_at_ms = 1'600'000'000'000;
  auto sweep_id = store->record_bench_run(sweep);
  ASSERT_TRUE(sweep_id.ok()) << sweep_id.status().message();
  sweep.id = *sweep_id;

  std::vector<BenchRecord> written{sweep};
  for (int i = 0; i < 20; ++i) {
    BenchRecord b =
        random_bench(random_int(0, 1) ? std::optional<int64_t>(*run_id) : std::nullopt,
                     random_int(0, 1) ? std::optional<int64_t>(*sweep_id) : std::nullopt);
    b.created_at_ms = sweep.created_at_ms + 1000 * (i + 1);
    b.label = i % 3 == 0 ? "baseline" : random_text(8);
    auto id = store->record_bench_run(b);
    ASSERT_TRUE(id.ok()) << id.status().message();
    b.id = *id;
    written.push_back(b);
  }
  for (const BenchRecord& b : written) {
    auto got = store->get_bench_run(b.id);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(got->id, b.id);
    expect_same(b, *got);
  }
  EXPECT_EQ(store->get_bench_run(written.back().id + 1).status().code(), StatusCode::kNotFound);

  // Each filter gives exactly the matching runs, oldest first.
  std::map<int64_t, const BenchRecord*> by_id;
  for (const BenchRecord& b : written) by_id[b.id] = &b;
  auto check = [&](const BenchFilter& f, auto pred) {
    std::vector<int64_t> want;
    for (const BenchRecord& b : written) {
      if (pred(b)) want.push_back(b.id);
    }
    if (f.limit && want.size() > f.limit) want.erase(want.begin(), want.end() - f.limit);
    auto got = store->list_bench_runs(f);
    ASSERT_TRUE(got.ok()) << got.status().message();
    std::vector<int64_t> ids;
    for (const BenchRecord& b : *got) {
      ids.push_back(b.id);
      ASSERT_TRUE(by_id.count(b.id));
      if (f.with_metrics) {
        expect_same(*by_id[b.id], b);
      } else {
        EXPECT_TRUE(b.metrics.empty());
      }
    }
    EXPECT_EQ(ids, want);
  };
  check(BenchFilter{}, [](auto&) { return true; });
  for (BenchKind k : {BenchKind::kServe, BenchKind::kOffline, BenchKind::kSweep}) {
    BenchFilter f;
    f.kind = k;
    check(f, [&](const BenchRecord& b) { return b.kind == k; });
  }
  BenchFilter by_label;
  by_label.label = "baseline";
  check(by_label, [](const BenchRecord& b) { return b.label == "baseline"; });
  BenchFilter by_run;
  by_run.serving_run_id = *run_id;
  check(by_run, [&](const BenchRecord& b) { return b.serving_run_id == *run_id; });
  BenchFilter by_parent;
  by_parent.parent_id = *sweep_id;
  check(by_parent, [&](const BenchRecord& b) { return b.parent_id == *sweep_id; });
  BenchFilter window;
  window.since_ms = written[5].created_at_ms;
  window.until_ms = written[12].created_at_ms;
  check(window, [&](const BenchRecord& b) {
    return b.created_at_ms >= window.since_ms && b.created_at_ms < window.until_ms;
  });
  BenchFilter newest;
  newest.limit = size_t(random_int(1, 8));
  newest.with_metrics = false;
  check(newest, [](auto&) { return true; });
}

TEST(RunStore, EventsRoundTripAndFilters) {
  test::TempDir dir;
  auto store = open_ok(dir.path() / "runs.db");
  ASSERT_TRUE(store);
  ServingRunRecord run;
  auto a = store->begin_serving_run(run);
  auto b = store->begin_serving_run(run);
  ASSERT_TRUE(a.ok() && b.ok());

  std::vector<EventRecord> written;
  for (int i = 0; i < 30; ++i) {
    int64_t pick = random_int(0, 2);
    EventRecord e =
        random_event(pick == 0 ? std::nullopt : std::optional<int64_t>(pick == 1 ? *a : *b));
    e.at_ms = 1'650'000'000'000 + i;
    auto id = store->record_event(e);
    ASSERT_TRUE(id.ok()) << id.status().message();
    e.id = *id;
    written.push_back(e);
  }
  std::vector<EventRecord> batch;
  for (int i = 0; i < 50; ++i) {
    EventRecord e = random_event(*b);
    e.at_ms = 1'660'000'000'000 + i;
    batch.push_back(e);
  }
  ASSERT_TRUE(store->record_events(batch).ok());

  auto all = store->list_events();
  ASSERT_TRUE(all.ok()) << all.status().message();
  ASSERT_EQ(all->size(), written.size() + batch.size());
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_EQ((*all)[i].id, written[i].id);
    expect_same(written[i], (*all)[i]);
  }
  for (size_t i = 0; i < batch.size(); ++i) expect_same(batch[i], (*all)[written.size() + i]);

  auto of_a = store->list_events(*a);
  ASSERT_TRUE(of_a.ok());
  size_t n_a = 0;
  for (auto& e : written) n_a += e.run_id == *a;
  EXPECT_EQ(of_a->size(), n_a);
  for (auto& e : *of_a) EXPECT_EQ(e.run_id, *a);

  EventFilter f;
  f.kind = "preemption";
  f.run_id = *b;
  f.limit = 5;
  auto got = store->list_events(f);
  ASSERT_TRUE(got.ok());
  std::vector<const EventRecord*> want;
  for (auto& e : written) {
    if (e.kind == "preemption" && e.run_id == *b) want.push_back(&e);
  }
  for (auto& e : batch) {
    if (e.kind == "preemption") want.push_back(&e);
  }
  if (want.size() > 5) want.erase(want.begin(), want.end() - 5);
  ASSERT_EQ(got->size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) expect_same(*want[i], (*got)[i]);

  // A batch with one bad event (an unknown run) leaves nothing behind.
  std::vector<EventRecord> bad = batch;
  bad[size_t(random_int(0, int64_t(bad.size()) - 1))].run_id = *b + 1000;
  EXPECT_FALSE(store->record_events(bad).ok());
  auto after = store->list_events();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->size(), written.size() + batch.size());
}

TEST(RunStore, ThreadsShareOneStore) {
  test::TempDir dir;
  auto store = open_ok(dir.path() / "runs.db");
  ASSERT_TRUE(store);
  constexpr int kThreads = 4, kEach = 50;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        EventRecord e;
        e.kind = "thread";
        e.message = std::to_string(t) + ":" + std::to_string(i);
        if (!store->record_event(e).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto events = store->list_events();
  ASSERT_TRUE(events.ok());
  std::set<std::string> seen;
  for (auto& e : *events) seen.insert(e.message);
  EXPECT_EQ(seen.size(), size_t(kThreads * kEach));
}

// ---- opening -----------------------------------------------------------------------------

TEST(RunStore, ReadOnly) {
  test::TempDir dir;
  const fs::path db = dir.path() / "runs.db";
  auto missing = RunStore::open(db, RunStore::OpenMode::kReadOnly);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(db.string()), std::string::npos);
  EXPECT_FALSE(fs::exists(db));

  EventRecord e = random_event(std::nullopt);
  {
    auto store = open_ok(db);
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->record_event(e).ok());
  }
  auto ro = open_ok(db, RunStore::OpenMode::kReadOnly);
  ASSERT_TRUE(ro);
  auto events = ro->list_events();
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  expect_same(e, (*events)[0]);
  EXPECT_EQ(ro->record_event(e).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(ro->mark_abandoned_runs().status().code(), StatusCode::kFailedPrecondition);

  // A writer and a reader at once.
  auto rw = open_ok(db);
  ASSERT_TRUE(rw);
  ASSERT_TRUE(rw->record_event(e).ok());
  events = ro->list_events();
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->size(), 2u);
}

TEST(RunStore, NewerSchemaIsRefusedUntouched) {
  test::TempDir dir;
  const fs::path db = dir.path() / "runs.db";
  ASSERT_TRUE(open_ok(db));
  const int newer = RunStore::kSchemaVersion + int(random_int(1, 50));
  {
    RawDb raw(db);
    raw.exec("PRAGMA user_version = " + std::to_string(newer));
  }
  const FileSnapshot before = FileSnapshot::of(db);
  for (auto mode : {RunStore::OpenMode::kReadWrite, RunStore::OpenMode::kReadOnly}) {
    auto r = RunStore::open(db, mode);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(r.status().message(), "run store '" + db.string() + "' has schema version " +
                                        std::to_string(newer) + ", newer than this pp (" +
                                        std::to_string(RunStore::kSchemaVersion) + ")");
  }
  EXPECT_TRUE(FileSnapshot::of(db) == before);
}

TEST(RunStore, OtherProgramsDatabaseIsRefusedUntouched) {
  test::TempDir dir;
  const fs::path db = dir.path() / "other.db";
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw,
                           "CREATE TABLE bookmarks (url TEXT); INSERT INTO bookmarks "
                           "VALUES ('x')",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
  }
  const FileSnapshot before = FileSnapshot::of(db);
  auto r = RunStore::open(db);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().message();
  EXPECT_TRUE(FileSnapshot::of(db) == before);
}

TEST(RunStore, GarbageFileIsRefusedUntouched) {
  test::TempDir dir;
  const fs::path db = dir.path() / "runs.db";
  for (int trial = 0; trial < 4; ++trial) {
    {
      std::ofstream f(db, std::ios::binary | std::ios::trunc);
      if (trial == 0) {
        f << "this is a text file, not a database\n";
      } else {
        const int64_t n = random_int(100, 20000);
        for (int64_t i = 0; i < n; ++i) f.put(char(random_int(1, 255)));
      }
    }
    const FileSnapshot before = FileSnapshot::of(db);
    for (auto mode : {RunStore::OpenMode::kReadWrite, RunStore::OpenMode::kReadOnly}) {
      auto r = RunStore::open(db, mode);
      ASSERT_FALSE(r.ok()) << "trial " << trial;
      EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().message();
      EXPECT_NE(r.status().message().find("run store '" + db.string() + "'"), std::string::npos)
          << r.status().message();
    }
    EXPECT_TRUE(FileSnapshot::of(db) == before) << "trial " << trial;
  }
}

TEST(RunStore, TruncatedDatabaseIsRefusedUntouched) {
  test::TempDir dir;
  const fs::path good = dir.path() / "good.db";
  {
    auto store = open_ok(good);
    ASSERT_TRUE(store);
    std::vector<EventRecord> events;
    for (int i = 0; i < 3000; ++i) events.push_back(random_event(std::nullopt));
    ASSERT_TRUE(store->record_events(events).ok());
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(store->record_bench_run(random_bench({}, {})).ok());
  }
  ASSERT_FALSE(fs::exists(dir.path() / "good.db-wal"));  // checkpointed on close
  const auto size = fs::file_size(good);
  ASSERT_GT(size, 64u * 1024);
  // Cut inside the header, at a page boundary, and anywhere.
  std::vector<uintmax_t> cuts = {uintmax_t(random_int(1, 99)), (size / 2) / 4096 * 4096,
                                 uintmax_t(random_int(100, int64_t(size) - 4097))};
  for (uintmax_t cut : cuts) {
    const fs::path db = dir.path() / ("cut-" + std::to_string(cut) + ".db");
    fs::copy_file(good, db);
    fs::resize_file(db, cut);
    const FileSnapshot before = FileSnapshot::of(db);
    for (auto mode : {RunStore::OpenMode::kReadWrite, RunStore::OpenMode::kReadOnly}) {
      auto r = RunStore::open(db, mode);
      ASSERT_FALSE(r.ok()) << "cut at " << cut << " of " << size;
      EXPECT_EQ(r.status().code(), StatusCode::kDataLoss)
          << "cut at " << cut << ": " << r.status().message();
    }
    EXPECT_TRUE(FileSnapshot::of(db) == before) << "cut at " << cut;
  }
}

TEST(RunStore, DefaultPathFollowsXdg) {
  const char* old_xdg = std::getenv("XDG_DATA_HOME");
  const char* old_home = std::getenv("HOME");
  std::string saved_xdg = old_xdg ? old_xdg : "", saved_home = old_home ? old_home : "";
  const std::string home = "/tmp/home-" + std::to_string(random_int(0, 1 << 30));
  setenv("HOME", home.c_str(), 1);
  unsetenv("XDG_DATA_HOME");
  EXPECT_EQ(RunStore::default_path(), fs::path(home) / ".local/share/pp/runs.db");
  setenv("XDG_DATA_HOME", "/srv/data", 1);
  EXPECT_EQ(RunStore::default_path(), fs::path("/srv/data/pp/runs.db"));
  setenv("XDG_DATA_HOME", "relative/ignored", 1);
  EXPECT_EQ(RunStore::default_path(), fs::path(home) / ".local/share/pp/runs.db");
  if (old_xdg) {
    setenv("XDG_DATA_HOME", saved_xdg.c_str(), 1);
  } else {
    unsetenv("XDG_DATA_HOME");
  }
  if (old_home) {
    setenv("HOME", saved_home.c_str(), 1);
  } else {
    unsetenv("HOME");
  }
}

}  // namespace
}  // namespace pp
