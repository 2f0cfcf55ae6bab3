// The run store: one SQLite database shared by every pp tool, keeping partitions, serving runs
// (their stages, hosts, devices, start, end and how they ended), benchmark runs (every parameter
// and metric) and notable events. `pp-bench history` and `pp-bench compare` read it.
//
// The file is in WAL mode with foreign keys on. Its schema version is PRAGMA user_version; on a
// read-write open the ordered migrations past that version are applied in one transaction. A
// file from a newer pp (kFailedPrecondition), a file that is not a database or fails SQLite's
// quick_check (kDataLoss), and a SQLite database of some other program (kFailedPrecondition) are
// refused and never written to.
//
// Several processes may write at once (a server and a benchmark): every write is one
// BEGIN IMMEDIATE transaction, retried while another process holds the write lock, with a busy
// timeout of 10 s per attempt. A process killed in the middle of a write leaves either all or none
// of that write (SQLite's write-ahead log). Timestamps are Unix milliseconds, UTC (records.h).
//
// Errors: a record that breaks a rule of the schema (an id of a record not in the store, the
// same stage twice, pp < 1) is kInvalidArgument and nothing of it is written; an id that names
// no record is kNotFound; a write on a read-only store is kFailedPrecondition; another process
// holding the write lock for more than ~40 s is kUnavailable.
//
// One RunStore is safe to use from several threads: calls are serialised by a mutex. Never use
// one across fork(); open a new one in the child.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pp/status.h"
#include "pp/store/records.h"

namespace pp {

namespace sqlite {
class Database;
}

class RunStore {
 public:
  enum class OpenMode {
    kReadWrite,  // create the file (and its folder) when missing, migrate an older schema
    kReadOnly,   // the file must exist (kNotFound) and have the current schema
  };

  // The schema version this pp writes (PRAGMA user_version after migration).
  static constexpr int kSchemaVersion = 1;
  // PRAGMA application_id of a pp run store ("ppRS").
  static constexpr int32_t kApplicationId = 0x70705253;

  // Opens (and in kReadWrite creates or migrates) the store at `db`; an empty path means
  // default_path().
  static Result<std::unique_ptr<RunStore>> open(const std::filesystem::path& db,
                                                OpenMode mode = OpenMode::kReadWrite);
  // $XDG_DATA_HOME/pp/runs.db, or ~/.local/share/pp/runs.db when XDG_DATA_HOME is unset or
  // not absolute.
  static std::filesystem::path default_path();

  ~RunStore();
  RunStore(const RunStore&) = delete;
  RunStore& operator=(const RunStore&) = delete;

  const std::filesystem::path& path() const { return path_; }
  OpenMode mode() const { return mode_; }

  // ---- partitions ----
  // Records a partition and its stages; returns its id.
  Result<int64_t> record_partition(const PartitionRecord& p);
  Result<PartitionRecord> get_partition(int64_t id);
  // Every partition with its stages, oldest first.
  Result<std::vector<PartitionRecord>> list_partitions();

  // ---- serving runs ----
  // Records the start of a serving run (outcome running) with the stages it lists; returns its
  // id. An empty host means this host, pid 0 this process, started_at_ms 0 now.
  Result<int64_t> begin_serving_run(const ServingRunRecord& run);
  // Adds a stage worker to a running serving run (joined_at_ms 0 means now).
  Status add_run_stage(int64_t run_id, const RunStageRecord& stage);
  // Records the end of a running serving run. `outcome` must not be kRunning. A run that has
  // already ended is kFailedPrecondition; an unknown id kNotFound.
  Status end_serving_run(int64_t run_id, RunOutcome outcome, std::string_view message = {});
  // Runs still "running" on this host whose coordinator process is gone (or its pid reused by
  // another process) are marked "abnormal", with an event of kind "run_abandoned" each. Runs of
  // other hosts are left alone. Call it when a server starts. Returns the ids marked.
  Result<std::vector<int64_t>> mark_abandoned_runs();
  Result<ServingRunRecord> get_serving_run(int64_t id);
  Result<std::vector<ServingRunRecord>> list_serving_runs(const ServingRunFilter& filter = {});

  // ---- benchmark runs ----
  // Records a benchmark run with all its metrics; returns its id.
  Result<int64_t> record_bench_run(const BenchRecord& bench);
  Result<BenchRecord> get_bench_run(int64_t id);
  Result<std::vector<BenchRecord>> list_bench_runs(const BenchFilter& filter = {});

  // ---- events ----
  Result<int64_t> record_event(const EventRecord& event);
  // Records many events in one transaction: all of them or none.
  Status record_events(std::span<const EventRecord> events);
  Result<std::vector<EventRecord>> list_events(const EventFilter& filter = {});
  // The events of one serving run, oldest first.
  Result<std::vector<EventRecord>> list_events(int64_t run_id);

  // ---- maintenance ----
  // The schema version of the open file (kSchemaVersion once migrated).
  Result<int> schema_version();
  // Runs SQLite's full PRAGMA integrity_check; kDataLoss with SQLite's findings on a problem.
  Status check_integrity();

 private:
  RunStore(std::filesystem::path path, OpenMode mode, std::unique_ptr<sqlite::Database> db);

  std::filesystem::path path_;
  OpenMode mode_;
  std::unique_ptr<sqlite::Database> db_;
  std::mutex mu_;  // serialises every call on db_
};

}  // namespace pp
