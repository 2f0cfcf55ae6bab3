// The run store's schema, migration by migration (see migrations.h).
//
// Conventions: timestamps are INTEGER Unix milliseconds, UTC, in columns named *_ms; JSON is
// TEXT; booleans are INTEGER 0/1; optional values are NULL. Every foreign key and every
// timestamp that lists are ordered or filtered by has an index. Children are deleted with their
// parent (ON DELETE CASCADE); links between independent records are cleared (ON DELETE SET NULL).
#include "store/migrations.h"

#include <fmt/format.h>

namespace pp::store_detail {
namespace {

constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE partitions (
  id                INTEGER PRIMARY KEY,
  created_at_ms     INTEGER NOT NULL,
  source_path       TEXT    NOT NULL,
  source_checksum   TEXT    NOT NULL DEFAULT '',
  model_config_json TEXT    NOT NULL DEFAULT '{}',
  pp                INTEGER NOT NULL CHECK (pp >= 1),
  strategy          TEXT    NOT NULL DEFAULT '',
  plan_json         TEXT    NOT NULL DEFAULT '{}',
  output_dir        TEXT    NOT NULL,
  dtype             TEXT    NOT NULL DEFAULT '',
  bytes             INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX partitions_created_at ON partitions (created_at_ms);

CREATE TABLE partition_stages (
  partition_id  INTEGER NOT NULL REFERENCES partitions (id) ON DELETE CASCADE,
  stage         INTEGER NOT NULL CHECK (stage >= 0),
  layer_begin   INTEGER NOT NULL,
  layer_end     INTEGER NOT NULL CHECK (layer_end >= layer_begin),
  has_embedding INTEGER NOT NULL DEFAULT 0,
  has_lm_head   INTEGER NOT NULL DEFAULT 0,
  file          TEXT    NOT NULL,
  bytes         INTEGER NOT NULL DEFAULT 0,
  sha256        TEXT    NOT NULL DEFAULT '',
  PRIMARY KEY (partition_id, stage)
);

CREATE TABLE serving_runs (
  id            INTEGER PRIMARY KEY,
  started_at_ms INTEGER NOT NULL,
  ended_at_ms   INTEGER,
  outcome       TEXT    NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'ok', 'error', 'abnormal')),
  end_message   TEXT    NOT NULL DEFAULT '',
  config_json   TEXT    NOT NULL DEFAULT '{}',
  model         TEXT    NOT NULL DEFAULT '',
  partition_id  INTEGER REFERENCES partitions (id) ON DELETE SET NULL,
  pp            INTEGER NOT NULL CHECK (pp >= 1),
  async_depth   INTEGER NOT NULL CHECK (async_depth >= 0),
  host          TEXT    NOT NULL,
  pid           INTEGER NOT NULL,
  -- start time of process `pid` (clock ticks since boot, /proc/PID/stat), to tell a reused pid
  pid_start     INTEGER
);
CREATE INDEX serving_runs_started_at ON serving_runs (started_at_ms);
CREATE INDEX serving_runs_partition ON serving_runs (partition_id);
CREATE INDEX serving_runs_running ON serving_runs (host) WHERE outcome = 'running';

CREATE TABLE run_stages (
  id           INTEGER PRIMARY KEY,
  run_id       INTEGER NOT NULL REFERENCES serving_runs (id) ON DELETE CASCADE,
  stage        INTEGER NOT NULL CHECK (stage >= 0),
  joined_at_ms INTEGER NOT NULL,
  host         TEXT    NOT NULL DEFAULT '',
  device       TEXT    NOT NULL DEFAULT '',
  pid          INTEGER,
  layer_begin  INTEGER NOT NULL,
  layer_end    INTEGER NOT NULL CHECK (layer_end >= layer_begin)
);
CREATE INDEX run_stages_run ON run_stages (run_id, stage);

CREATE TABLE bench_runs (
  id             INTEGER PRIMARY KEY,
  created_at_ms  INTEGER NOT NULL,
  kind           TEXT    NOT NULL CHECK (kind IN ('serve', 'offline', 'sweep')),
  label          TEXT    NOT NULL DEFAULT '',
  params_json    TEXT    NOT NULL DEFAULT '{}',
  server_url     TEXT,
  serving_run_id INTEGER REFERENCES serving_runs (id) ON DELETE SET NULL,
  parent_id      INTEGER REFERENCES bench_runs (id) ON DELETE CASCADE
);
CREATE INDEX bench_runs_created_at ON bench_runs (created_at_ms);
CREATE INDEX bench_runs_label ON bench_runs (label, created_at_ms);
CREATE INDEX bench_runs_serving_run ON bench_runs (serving_run_id);
CREATE INDEX bench_runs_parent ON bench_runs (parent_id);

-- value is NULL for a NaN (a metric with no sample)
CREATE TABLE bench_metrics (
  bench_id INTEGER NOT NULL REFERENCES bench_runs (id) ON DELETE CASCADE,
  name     TEXT    NOT NULL,
  value    REAL,
  unit     TEXT    NOT NULL DEFAULT '',
  PRIMARY KEY (bench_id, name)
);
CREATE INDEX bench_metrics_name ON bench_metrics (name);

CREATE TABLE events (
  id         INTEGER PRIMARY KEY,
  at_ms      INTEGER NOT NULL,
  run_id     INTEGER REFERENCES serving_runs (id) ON DELETE CASCADE,
  kind       TEXT    NOT NULL,
  stage      INTEGER,
  request_id TEXT,
  message    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX events_at ON events (at_ms);
CREATE INDEX events_run ON events (run_id, at_ms);
CREATE INDEX events_kind ON events (kind, at_ms);
)sql";

constexpr Migration kMigrations[] = {
    {1, kSchemaV1},
};

}  // namespace

std::span<const Migration> migrations() { return kMigrations; }

Status migrate(sqlite::Database& db, std::span<const Migration> all, int32_t application_id) {
  const int latest = all.empty() ? 0 : all.back().version;
  PP_ASSIGN_OR_RETURN(sqlite::Transaction txn, sqlite::Transaction::begin(db));
  PP_ASSIGN_OR_RETURN(int64_t version, db.query_int64("PRAGMA user_version"));
  if (version > latest) {
    return make_error(StatusCode::kFailedPrecondition,
                      "{} has schema version {}, newer than this pp ({})", db.label(), version,
                      latest);
  }
  if (version == latest) return ok_status();  // another process migrated first
  for (const Migration& m : all) {
    if (m.version <= version) continue;
    PP_RETURN_IF_ERROR(db.exec(m.sql, fmt::format("migrating to schema version {}", m.version)));
  }
  // Pragmas take no bound parameters; these are our own constants, not values from outside.
  PP_RETURN_IF_ERROR(db.exec(fmt::format("PRAGMA user_version = {}", latest).c_str(),
                             "setting the schema version"));
  PP_RETURN_IF_ERROR(db.exec(fmt::format("PRAGMA application_id = {}", application_id).c_str(),
                             "setting the application id"));
  return txn.commit();
}

}  // namespace pp::store_detail
