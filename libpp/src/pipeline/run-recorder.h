// RunRecorder: the coordinator's record of one serving run in the run store (DESIGN.md, "Run
// store"): the run with its configuration, each stage as it joins (again after a restart), the
// notable events (stage lost and restarted, recoveries, preemptions), and how the run ended.
//
// The run store is a record, never a dependency: a store that cannot be opened or written is a
// warning in the log, and the run goes on unrecorded. Used on the coordinator thread only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "pp/status.h"
#include "pp/store/records.h"
#include "pp/store/run-store.h"

namespace pp::pipeline {

class RunRecorder {
 public:
  RunRecorder() = default;  // records nothing
  // Opens the store at `db` (empty: RunStore::default_path()), marks runs left running by dead
  // processes as abandoned, and begins `run`. Without `db`, records nothing.
  static RunRecorder begin(const std::optional<std::filesystem::path>& db,
                           const ServingRunRecord& run);

  bool active() const { return store_ != nullptr; }
  void add_stage(const RunStageRecord& stage);
  void event(const std::string& kind, std::optional<int> stage, const std::string& message);
  // Ends the run: ok, or the failure's message. Records nothing more afterwards.
  void end(const Status& failure);

 private:
  void warn(const Status& s);
  std::unique_ptr<RunStore> store_;
  int64_t run_id_ = 0;
};

}  // namespace pp::pipeline
