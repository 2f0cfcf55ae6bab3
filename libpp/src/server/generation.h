// Generation: the engine requests behind one HTTP request (one per prompt and choice) and the
// queue their events arrive on. Private to the HTTP front end.
//
// The engine's sinks run on the coordinator thread and must never block: each pushes the event
// into the Generation's EventStream (a mutex and a deque) and records latencies. The HTTP thread
// drains the stream with a short timeout and folds events into ChoiceResults. Destroying a
// Generation cancels every choice that has not finished, so a request whose client went away
// (its stream writer failed) stops on every stage and frees its KV blocks.
//
// ServerShared outlives both: sinks keep it alive, since the engine may call them after the
// HTTP server is gone (the abort events at shutdown).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "pp/pipeline/engine.h"
#include "pp/server/metrics.h"
#include "pp/server/openai-responses.h"

namespace pp::server {

using SteadyClock = std::chrono::steady_clock;

inline double seconds_since(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

class Generation;

// State shared by the server, its handlers and the engine's sinks.
struct ServerShared {
  MetricsRegistry metrics;
  std::atomic<int64_t> n_live{0};    // engine requests accepted and not finished
  std::atomic<int64_t> n_active{0};  // Generations alive (HTTP requests in progress)
  std::mutex mu;                     // guards `active`; notified when n_active or n_live drops
  std::condition_variable cv;
  std::set<Generation*> active;
};

struct ChoiceEvent {
  int32_t choice = 0;
  pipeline::EngineEvent event;
};

class EventStream {
 public:
  void push(ChoiceEvent&& e);
  // Moves every pending event into *out (cleared first), waiting up to `timeout` for one.
  void pop_all(std::vector<ChoiceEvent>* out, std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ChoiceEvent> events_;
};

class Generation {
 public:
  Generation(std::shared_ptr<ServerShared> shared, pipeline::Engine* engine);
  ~Generation();  // cancels unfinished choices
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  // Submits one choice (choices are numbered in submission order). On error nothing is left
  // running for this choice; the caller answers the error (earlier choices are cancelled by
  // the destructor).
  Status submit(std::vector<int32_t> prompt_ids, const model::SamplingParams& params);

  // Waits up to `timeout` for events and applies them to the choices. `out` receives the events
  // (for streaming), in arrival order.
  void poll(std::vector<ChoiceEvent>* out, std::chrono::milliseconds timeout);
  // Cancels every unfinished choice (their final events come later). Thread-safe.
  void cancel();

  bool done() const { return n_finished_ == choices_.size(); }
  const std::vector<ChoiceResult>& choices() const { return choices_; }
  std::vector<ChoiceResult>& choices() { return choices_; }
  // The first error a final event carried (the engine failed), else ok.
  const Status& error() const { return error_; }
  SteadyClock::time_point arrival() const { return arrival_; }

 private:
  std::shared_ptr<ServerShared> shared_;
  pipeline::Engine* engine_;
  std::shared_ptr<EventStream> stream_;
  SteadyClock::time_point arrival_;
  mutable std::mutex mu_;  // guards ids_ and finished_ (cancel() comes from other threads)
  std::vector<uint64_t> ids_;
  std::vector<bool> finished_;
  std::vector<ChoiceResult> choices_;
  size_t n_finished_ = 0;
  Status error_;
};

}  // namespace pp::server
