// The offline benchmark's driver (see offline-bench.h): submits to an in-process Engine on the
// traffic schedule, times each request's events on the engine's coordinator thread (sinks only
// record under a mutex and never block), and waits for every final event.
#include "pp/bench/offline-bench.h"

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

namespace pp::bench {

namespace {

using pipeline::EngineEvent;
using pipeline::EventKind;
using pipeline::FinishReason;

// Shared between the submitting thread and the engine's sinks.
struct Tracker {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<RequestResult> results;
  std::vector<ChunkTimer> timers;
  std::vector<double> starts;
  int64_t n_done = 0;
  int64_t in_flight = 0;
  double t0 = 0;
  ProgressFn progress;
  int64_t total = 0;

  void on_event(size_t i, EngineEvent&& e) {
    const double now = steady_now_s();
    std::lock_guard lock(mu);
    if (e.event.kind == EventKind::kDelta) {
      if (!e.event.token_ids.empty()) {
        timers[i].on_content(now, int64_t(e.event.token_ids.size()));
      }
      return;
    }
    RequestResult& r = results[i];
    r.latency_s = now - starts[i];
    r.start_s = starts[i] - t0;
    r.output_len = e.event.n_output_tokens;
    if (!e.error.ok()) {
      r.error = e.error.message();
    } else if (e.event.finish_reason == FinishReason::kAbort) {
      r.error = "aborted";
    } else {
      r.success = true;
      r.ttft_s = timers[i].has_first() ? timers[i].ttft_s() : r.latency_s;
      r.itl_s = timers[i].take_itl();
    }
    ++n_done;
    --in_flight;
    if (progress) progress(n_done, total);
    cv.notify_all();
  }
};

model::SamplingParams params_for(const BenchRequest& r, bool ignore_eos) {
  model::SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = r.output_len;
  p.ignore_eos = ignore_eos;
  return p;
}

// Waits until `done()` holds, checking the engine's health every 100 ms.
Status wait_for(pipeline::Engine& engine, Tracker& t, const std::function<bool()>& done) {
  std::unique_lock lock(t.mu);
  while (!done()) {
    if (t.cv.wait_for(lock, std::chrono::milliseconds(100), done)) break;
    Status h = engine.health();
    if (!h.ok()) return h.with_context("the engine failed");
  }
  return ok_status();
}

Status warmup(pipeline::Engine& engine, const OfflineOptions& o, const BenchRequest& first) {
  const int64_t n = o.traffic.warmup_requests;
  if (n <= 0) return ok_status();
  BenchRequest r = first;
  r.output_len = std::min<int64_t>(r.output_len, 32);
  // Shared with the sinks, which may outlive this call when the engine fails.
  auto tp = std::make_shared<Tracker>();
  Tracker& t = *tp;
  t.results.resize(size_t(n));
  t.timers.assign(size_t(n), ChunkTimer(0));
  t.starts.assign(size_t(n), steady_now_s());
  t.total = n;
  Status submit_error;
  for (int64_t i = 0; i < n; ++i) {
    auto id = engine.submit(r.prompt_ids, params_for(r, o.ignore_eos),
                            [tp, i](EngineEvent&& e) { tp->on_event(size_t(i), std::move(e)); });
    std::lock_guard lock(t.mu);
    if (!id.ok()) {
      submit_error = id.status();
      ++t.n_done;
    } else {
      ++t.in_flight;
    }
  }
  PP_RETURN_IF_ERROR(wait_for(engine, t, [&] { return t.n_done == n; }));
  for (const RequestResult& res : t.results) {
    if (res.success) return ok_status();
  }
  return Status(StatusCode::kUnavailable,
                fmt::format("warmup failed: {}",
                            submit_error.ok() ? t.results[0].error : submit_error.message()));
}

}  // namespace

Result<BenchOutcome> run_offline_bench(pipeline::Engine& engine, const OfflineOptions& o,
                                       const std::vector<BenchRequest>& requests,
                                       ProgressFn progress) {
  if (requests.empty()) return invalid_argument("no request to send");
  if (!(o.traffic.request_rate > 0)) return invalid_argument("--request-rate must be positive");
  for (const BenchRequest& r : requests) {
    if (r.prompt_ids.empty()) return invalid_argument("offline requests need token ids");
  }
  PP_ASSIGN_OR_RETURN(const int64_t slots,
                      n_slots(int64_t(requests.size()), o.traffic.max_concurrency));
  PP_RETURN_IF_ERROR(warmup(engine, o, requests.front()));
  // The measured run starts with an empty prefix cache (the warmup would otherwise have cached
  // the first request's prompt). Ok, a no-op, with caching off.
  PP_RETURN_IF_ERROR(engine.flush_cache().with_context("cannot empty the prefix cache"));

  const size_t n = requests.size();
  const std::vector<double> arrivals =
      arrival_times(int64_t(n), o.traffic.request_rate, o.traffic.seed);
  auto tp = std::make_shared<Tracker>();  // shared with the sinks (see warmup)
  Tracker& t = *tp;
  t.results.resize(n);
  t.timers.assign(n, ChunkTimer(0));
  t.starts.assign(n, 0.0);
  t.progress = std::move(progress);
  t.total = int64_t(n);
  for (size_t i = 0; i < n; ++i) t.results[i].prompt_len = requests[i].prompt_len;

  const pipeline::EngineStats before = engine.stats();
  t.t0 = steady_now_s();
  for (size_t i = 0; i < n; ++i) {
    const double when = t.t0 + arrivals[i];
    const double now = steady_now_s();
    if (when > now) std::this_thread::sleep_for(std::chrono::duration<double>(when - now));
    PP_RETURN_IF_ERROR(wait_for(engine, t, [&] { return t.in_flight < slots; }));
    {
      std::lock_guard lock(t.mu);
      const double start = steady_now_s();
      t.starts[i] = start;
      t.timers[i] = ChunkTimer(start);
      ++t.in_flight;
    }
    auto id = engine.submit(requests[i].prompt_ids, params_for(requests[i], o.ignore_eos),
                            [tp, i](EngineEvent&& e) { tp->on_event(i, std::move(e)); });
    if (!id.ok()) {
      std::lock_guard lock(t.mu);
      t.results[i].error = id.status().message();
      t.results[i].start_s = t.starts[i] - t.t0;
      ++t.n_done;
      --t.in_flight;
      if (t.progress) t.progress(t.n_done, t.total);
    }
  }
  PP_RETURN_IF_ERROR(wait_for(engine, t, [&] { return t.n_done == int64_t(n); }));

  BenchOutcome out;
  out.duration_s = steady_now_s() - t.t0;
  const pipeline::EngineStats after = engine.stats();
  {
    std::lock_guard lock(t.mu);
    out.results = std::move(t.results);
  }
  out.metrics = compute_metrics(out.results, out.duration_s);
  double min_busy = 1.0;
  for (size_t k = 0; k < after.stages.size(); ++k) {
    const double b0 = k < before.stages.size() ? before.stages[k].compute_s : 0.0;
    const double busy =
        out.duration_s > 0 ? (after.stages[k].compute_s - b0) / out.duration_s : 0.0;
    out.extra_metrics[fmt::format("stage{}_busy_fraction", k)] = {busy, ""};
    min_busy = std::min(min_busy, busy);
  }
  if (!after.stages.empty()) out.extra_metrics["min_stage_busy_fraction"] = {min_busy, ""};
  const pipeline::KvCacheStats& c0 = before.scheduler.kv_cache;
  const pipeline::KvCacheStats& c1 = after.scheduler.kv_cache;
  const int64_t query_tokens = c1.n_query_tokens - c0.n_query_tokens;
  const int64_t hit_tokens = c1.n_hit_tokens - c0.n_hit_tokens;
  out.extra_metrics["prefix_cache_hit_rate"] = {
      query_tokens > 0 ? double(hit_tokens) / double(query_tokens) : 0.0, ""};
  out.extra_metrics["prefix_cache_hit_tokens"] = {double(hit_tokens), ""};
  return out;
}

}  // namespace pp::bench
