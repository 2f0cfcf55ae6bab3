// Engine: the thread-safe face of the coordinator (see engine.h); EventQueue.
#include "pp/pipeline/engine.h"

#include "coordinator.h"

namespace pp::pipeline {

void EventQueue::push(EngineEvent&& e) {
  {
    std::lock_guard lock(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

std::optional<EngineEvent> EventQueue::pop(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  EngineEvent e = std::move(events_.front());
  events_.pop_front();
  return e;
}

Result<std::unique_ptr<Engine>> Engine::start(EngineOptions options) {
  std::unique_ptr<Engine> engine(new Engine());
  engine->coordinator_ = std::make_unique<Coordinator>(std::move(options));
  PP_RETURN_IF_ERROR(engine->coordinator_->start());
  return engine;
}

Engine::~Engine() { (void)shutdown(); }

Result<uint64_t> Engine::submit(std::vector<int32_t> prompt_ids, model::SamplingParams params,
                                EventSink sink) {
  return coordinator_->submit(std::move(prompt_ids), std::move(params), std::move(sink));
}

void Engine::cancel(uint64_t id) { coordinator_->cancel(id); }
Status Engine::flush_cache() { return coordinator_->flush_cache(); }
EngineStats Engine::stats() const { return coordinator_->stats(); }
Status Engine::health() const { return coordinator_->health(); }
bool Engine::recovering() const { return coordinator_->recovering(); }
Status Engine::shutdown() { return coordinator_->stop(); }
const model::ModelConfig& Engine::model_config() const { return coordinator_->config(); }
const model::Tokenizer* Engine::tokenizer() const { return coordinator_->tokenizer(); }
const std::vector<StageInfo>& Engine::stages() const { return coordinator_->stage_infos(); }
int64_t Engine::kv_blocks() const { return coordinator_->kv_blocks(); }
int32_t Engine::kv_block_size() const { return coordinator_->kv_block_size(); }
int32_t Engine::n_groups() const { return coordinator_->n_groups(); }
const std::string& Engine::endpoint() const { return coordinator_->endpoint(); }
std::vector<transport::StageTiming> Engine::timings() const { return coordinator_->timings(); }

}  // namespace pp::pipeline
