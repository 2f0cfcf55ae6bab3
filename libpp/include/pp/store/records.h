// The plain records kept in the run store (see run-store.h): partitions and their stages,
// serving runs and their stages, benchmark runs with their metrics, and notable events.
//
// Every timestamp is a count of milliseconds since the Unix epoch, UTC (`*_ms` fields and
// `*_ms` columns). A timestamp of 0 in a record handed to the store means "now". Ids are the
// store's row ids: 0 in a record handed to the store (the store assigns them), set in records
// read back. Layer ranges are half-open: [layer_begin, layer_end).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pp {

// Milliseconds since the Unix epoch, UTC, from the system clock.
int64_t unix_ms_now();

// ---- partitions --------------------------------------------------------------------------

// One stage's shard of a partition.
struct PartitionStageRecord {
  int stage = 0;        // 0-based stage index
  int layer_begin = 0;  // first layer held by this stage
  int layer_end = 0;    // one past the last layer held by this stage
  bool has_embedding = false;
  bool has_lm_head = false;
  // shard file name, relative to the partition's output_dir; a tensor-parallel partition's
  // rank files, comma-separated in rank order
  std::string file;
  int64_t bytes = 0;   // size of `file` in bytes (of all of them)
  std::string sha256;  // lowercase hex digest of `file` (of each, comma-separated)
};

// A partition written by pp-partition (or made in memory by pp-serve --pp N).
struct PartitionRecord {
  int64_t id = 0;
  int64_t created_at_ms = 0;
  std::string source_path;        // the model read: a Hugging Face folder or a GGUF file
  std::string source_checksum;    // checksum of the source (e.g. "sha256:..."), may be empty
  std::string model_config_json;  // normalized model config, JSON text
  int pp = 1;                     // number of stages
  std::string strategy;           // planner: "even", "cost", "measured", "manual", ...
  std::string plan_json;          // the plan the planner produced, JSON text
  std::string output_dir;         // folder holding partition.json and the stage files
  std::string dtype;              // weight dtype of the shards ("bf16", "f16", "q4_1", ...)
  int64_t bytes = 0;              // total bytes of all stage files
  std::vector<PartitionStageRecord> stages;  // ordered by stage
};

// ---- serving runs ------------------------------------------------------------------------

// How a serving run ended. kRunning while it runs; kAbnormal when its process vanished without
// saying (found by RunStore::mark_abandoned_runs).
enum class RunOutcome { kRunning, kOk, kError, kAbnormal };

const char* run_outcome_name(RunOutcome outcome);  // "running", "ok", "error", "abnormal"
std::optional<RunOutcome> parse_run_outcome(std::string_view name);

// One stage worker of a serving run. A stage restarted during a run is recorded again, so a run
// may hold several records for one stage (ordered by joined_at_ms).
struct RunStageRecord {
  int stage = 0;
  int64_t joined_at_ms = 0;
  std::string host;     // host name of the stage worker
  std::string device;   // "cuda:0", "cpu", ...
  int64_t pid = 0;      // process id of the stage worker on `host`, 0 when unknown
  int layer_begin = 0;  // [layer_begin, layer_end)
  int layer_end = 0;
};

// One pp-serve process, from start to end.
struct ServingRunRecord {
  int64_t id = 0;
  int64_t started_at_ms = 0;
  std::optional<int64_t> ended_at_ms;  // unset while running
  RunOutcome outcome = RunOutcome::kRunning;
  std::string end_message;              // why it ended (an error message), may be empty
  std::string config_json;              // the server's whole configuration, JSON text
  std::string model;                    // model path or name served
  std::optional<int64_t> partition_id;  // the partition served, when it is in the store
  int pp = 1;                           // number of stages
  int async_depth = 1;                  // extra micro-batch groups beyond pp
  std::string host;                     // host of the coordinator; empty: this host
  int64_t pid = 0;                      // pid of the coordinator; 0: this process
  std::vector<RunStageRecord> stages;
};

// ---- benchmark runs ----------------------------------------------------------------------

enum class BenchKind { kServe, kOffline, kSweep };

const char* bench_kind_name(BenchKind kind);  // "serve", "offline", "sweep"
std::optional<BenchKind> parse_bench_kind(std::string_view name);

struct BenchMetric {
  double value = 0;  // may be NaN (no sample) or infinite
  std::string unit;  // "ms", "tok/s", "req/s", "" for a plain number
};

// One pp-bench run: every parameter and every metric.
struct BenchRecord {
  int64_t id = 0;
  int64_t created_at_ms = 0;
  BenchKind kind = BenchKind::kServe;
  std::string label;                           // user's name for the run, may be empty
  std::string params_json;                     // every parameter of the run, JSON text
  std::string server_url;                      // server benchmarked (kind serve), may be empty
  std::optional<int64_t> serving_run_id;       // the serving run benchmarked, when known
  std::optional<int64_t> parent_id;            // the sweep this run is a point of
  std::map<std::string, BenchMetric> metrics;  // by metric name
};

// ---- events ------------------------------------------------------------------------------

// A notable event: a stage lost or restarted, a preemption, an error.
struct EventRecord {
  int64_t id = 0;
  int64_t at_ms = 0;
  std::optional<int64_t> run_id;  // the serving run it happened in, if any
  std::string kind;               // short snake_case name: "stage_lost", "preemption", ...
  std::optional<int> stage;       // the stage concerned, if any
  std::string request_id;         // the request concerned, may be empty
  std::string message;
};

// ---- filters for listing -----------------------------------------------------------------
// Unset fields do not filter. Lists come oldest first; a nonzero `limit` keeps the newest
// `limit` rows (still oldest first).

struct ServingRunFilter {
  std::optional<RunOutcome> outcome;
  int64_t since_ms = 0;  // started_at_ms >= since_ms
  int64_t until_ms = 0;  // started_at_ms < until_ms; 0: no bound
  size_t limit = 0;
};

struct BenchFilter {
  std::optional<BenchKind> kind;
  std::optional<std::string> label;  // exact match
  std::optional<int64_t> serving_run_id;
  std::optional<int64_t> parent_id;
  int64_t since_ms = 0;  // created_at_ms >= since_ms
  int64_t until_ms = 0;  // created_at_ms < until_ms; 0: no bound
  size_t limit = 0;
  bool with_metrics = true;  // also read each run's metrics
};

struct EventFilter {
  std::optional<int64_t> run_id;
  std::optional<std::string> kind;
  int64_t since_ms = 0;  // at_ms >= since_ms
  int64_t until_ms = 0;  // at_ms < until_ms; 0: no bound
  size_t limit = 0;
};

}  // namespace pp
