// The run recorder: every run-store call of the coordinator, each failure a warning.
#include "run-recorder.h"

#include <spdlog/spdlog.h>

namespace pp::pipeline {

RunRecorder RunRecorder::begin(const std::optional<std::filesystem::path>& db,
                               const ServingRunRecord& run) {
  RunRecorder r;
  if (!db) return r;
  auto store = RunStore::open(*db);
  if (!store.ok()) {
    spdlog::warn("run store: {}; this run is not recorded", store.status().message());
    return r;
  }
  r.store_ = std::move(*store);
  if (auto marked = r.store_->mark_abandoned_runs(); !marked.ok()) r.warn(marked.status());
  auto id = r.store_->begin_serving_run(run);
  if (!id.ok()) {
    spdlog::warn("run store: {}; this run is not recorded", id.status().message());
    r.store_.reset();
    return r;
  }
  r.run_id_ = *id;
  return r;
}

void RunRecorder::warn(const Status& s) { spdlog::warn("run store: {}", s.message()); }

void RunRecorder::add_stage(const RunStageRecord& stage) {
  if (!store_) return;
  if (Status s = store_->add_run_stage(run_id_, stage); !s.ok()) warn(s);
}

void RunRecorder::event(const std::string& kind, std::optional<int> stage,
                        const std::string& message) {
  if (!store_) return;
  EventRecord e;
  e.run_id = run_id_;
  e.kind = kind;
  e.stage = stage;
  e.message = message;
  if (auto r = store_->record_event(e); !r.ok()) warn(r.status());
}

void RunRecorder::end(const Status& failure) {
  if (!store_) return;
  const bool ok = failure.ok();
  if (Status s = store_->end_serving_run(run_id_, ok ? RunOutcome::kOk : RunOutcome::kError,
                                         ok ? "" : failure.message());
      !s.ok()) {
    warn(s);
  }
  store_.reset();
}

}  // namespace pp::pipeline
