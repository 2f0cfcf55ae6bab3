// Generation and EventStream: the bridge between the engine's sinks (coordinator thread) and
// the HTTP thread that answers the request.
#include "generation.h"

namespace pp::server {

void EventStream::push(ChoiceEvent&& e) {
  {
    std::lock_guard lock(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_one();
}

void EventStream::pop_all(std::vector<ChoiceEvent>* out, std::chrono::milliseconds timeout) {
  out->clear();
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !events_.empty(); });
  while (!events_.empty()) {
    out->push_back(std::move(events_.front()));
    events_.pop_front();
  }
}

Generation::Generation(std::shared_ptr<ServerShared> shared, pipeline::Engine* engine)
    : shared_(std::move(shared)),
      engine_(engine),
      stream_(std::make_shared<EventStream>()),
      arrival_(SteadyClock::now()) {
  shared_->n_active.fetch_add(1);
  std::lock_guard lock(shared_->mu);
  shared_->active.insert(this);
}

Generation::~Generation() {
  {
    std::lock_guard lock(shared_->mu);
    shared_->active.erase(this);
  }
  cancel();
  shared_->n_active.fetch_sub(1);
  shared_->cv.notify_all();
}

Status Generation::submit(std::vector<int32_t> prompt_ids, const model::SamplingParams& params) {
  const int32_t index = int32_t(choices_.size());
  // Latency bookkeeping, touched only by this choice's sink (one thread, in order).
  struct Timing {
    SteadyClock::time_point arrival, last;
    bool first = false;
  };
  auto timing = std::make_shared<Timing>();
  timing->arrival = arrival_;
  std::shared_ptr<ServerShared> shared = shared_;
  std::shared_ptr<EventStream> stream = stream_;
  auto sink = [shared, stream, timing, index](pipeline::EngineEvent&& e) {
    const auto now = SteadyClock::now();
    const size_t n_tokens = e.event.token_ids.size();
    if (n_tokens > 0) {
      if (!timing->first) {
        timing->first = true;
        shared->metrics.observe("pp_time_to_first_token_seconds", {},
                                std::chrono::duration<double>(now - timing->arrival).count());
      } else {
        const double dt = std::chrono::duration<double>(now - timing->last).count();
        for (size_t k = 0; k < n_tokens; ++k) {
          shared->metrics.observe("pp_inter_token_latency_seconds", {}, dt / double(n_tokens));
        }
      }
      timing->last = now;
    }
    const bool final = e.event.kind == pipeline::EventKind::kFinal;
    if (final) {
      shared->metrics.observe("pp_e2e_request_latency_seconds", {},
                              std::chrono::duration<double>(now - timing->arrival).count());
      if (e.event.queue_s >= 0.0) {
        shared->metrics.observe("pp_request_queue_time_seconds", {}, e.event.queue_s);
      }
    }
    stream->push({index, std::move(e)});
    if (final) {
      shared->n_live.fetch_sub(1);
      shared->cv.notify_all();
    }
  };
  const int64_t n_prompt = int64_t(prompt_ids.size());
  Result<uint64_t> id = engine_->submit(std::move(prompt_ids), params, std::move(sink));
  if (!id.ok()) return id.status();
  {
    std::lock_guard lock(mu_);
    ids_.push_back(*id);
    finished_.push_back(false);
  }
  ChoiceResult c;
  c.index = index;
  c.n_prompt_tokens = n_prompt;
  choices_.push_back(std::move(c));
  return ok_status();
}

void Generation::poll(std::vector<ChoiceEvent>* out, std::chrono::milliseconds timeout) {
  stream_->pop_all(out, timeout);
  std::lock_guard lock(mu_);
  for (ChoiceEvent& ce : *out) {
    const size_t i = size_t(ce.choice);
    if (i >= choices_.size() || finished_[i]) continue;
    ChoiceResult& c = choices_[i];
    const pipeline::RequestEvent& e = ce.event.event;
    c.text += e.text;
    c.token_ids.insert(c.token_ids.end(), e.token_ids.begin(), e.token_ids.end());
    c.logprobs.insert(c.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
    if (e.kind == pipeline::EventKind::kFinal) {
      c.finish_reason = e.finish_reason;
      c.stop_string = e.stop_string;
      c.stop_token = e.stop_token;
      c.n_prompt_tokens = e.n_prompt_tokens;
      c.n_output_tokens = e.n_output_tokens;
      c.n_cached_tokens = e.n_cached_tokens;
      finished_[i] = true;
      ++n_finished_;
      if (!ce.event.error.ok() && error_.ok()) error_ = ce.event.error;
    }
  }
}

void Generation::cancel() {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < ids_.size(); ++i) {
    if (!finished_[i]) engine_->cancel(ids_[i]);
  }
}

}  // namespace pp::server
