// The serving benchmark's driver (see serve-bench.h): Poisson releases from the calling thread,
// a fixed pool of client threads as the concurrency limit, results kept in dataset order.
#include "pp/bench/serve-bench.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace pp::bench {

std::vector<double> arrival_times(int64_t n, double request_rate, uint64_t seed) {
  std::vector<double> t(size_t(std::max<int64_t>(n, 0)), 0.0);
  if (!(request_rate > 0) || std::isinf(request_rate)) return t;
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::exponential_distribution<double> gap(request_rate);
  for (size_t i = 1; i < t.size(); ++i) t[i] = t[i - 1] + gap(rng);
  return t;
}

Result<int64_t> n_slots(int64_t n, int64_t max_concurrency) {
  if (max_concurrency < 0) return invalid_argument("--max-concurrency must not be negative");
  if (max_concurrency > kMaxInFlight) {
    return invalid_argument("--max-concurrency {} is above the limit of {} requests in flight",
                            max_concurrency, kMaxInFlight);
  }
  const int64_t limit = max_concurrency > 0 ? max_concurrency : kMaxInFlight;
  return std::max<int64_t>(1, std::min(n, limit));
}

namespace {

Status warmup(const ServeOptions& o, const BenchRequest& first, const model::Tokenizer* tok) {
  if (o.traffic.warmup_requests <= 0) return ok_status();
  BenchRequest r = first;
  r.output_len = std::min<int64_t>(r.output_len, 32);
  const size_t n = size_t(std::min<int64_t>(o.traffic.warmup_requests, kMaxInFlight));
  std::vector<RequestResult> results(n);
  std::vector<std::thread> threads;
  std::vector<Status> errors(n);
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      auto c = HttpClient::connect(o.base_url, o.request);
      if (!c.ok()) {
        errors[i] = c.status();
        return;
      }
      results[i] = (*c)->send(r, steady_now_s(), tok);
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < n; ++i) {
    if (!errors[i].ok()) return errors[i];
    if (results[i].success) return ok_status();
  }
  return Status(StatusCode::kUnavailable,
                fmt::format("warmup failed: {}", results.empty() ? "" : results[0].error));
}

}  // namespace

Result<BenchOutcome> run_serve_bench(const ServeOptions& o,
                                     const std::vector<BenchRequest>& requests,
                                     const model::Tokenizer* tok, ProgressFn progress) {
  if (requests.empty()) return invalid_argument("no request to send");
  if (!(o.traffic.request_rate > 0)) return invalid_argument("--request-rate must be positive");
  PP_ASSIGN_OR_RETURN(const int64_t slots,
                      n_slots(int64_t(requests.size()), o.traffic.max_concurrency));
  PP_RETURN_IF_ERROR(parse_base_url(o.base_url).status());
  PP_RETURN_IF_ERROR(warmup(o, requests.front(), tok));

  std::vector<std::unique_ptr<HttpClient>> clients;
  for (int64_t i = 0; i < slots; ++i) {
    PP_ASSIGN_OR_RETURN(auto c, HttpClient::connect(o.base_url, o.request));
    clients.push_back(std::move(c));
  }
  const std::vector<double> arrivals =
      arrival_times(int64_t(requests.size()), o.traffic.request_rate, o.traffic.seed);

  BenchOutcome out;
  out.results.resize(requests.size());
  std::mutex mu;
  std::condition_variable cv;
  std::deque<size_t> released;
  bool all_released = false;
  int64_t n_done = 0;

  const double t0 = steady_now_s();
  std::vector<std::thread> workers;
  for (int64_t w = 0; w < slots; ++w) {
    workers.emplace_back([&, w] {
      for (;;) {
        size_t i;
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return !released.empty() || all_released; });
          if (released.empty()) return;
          i = released.front();
          released.pop_front();
        }
        RequestResult r = clients[size_t(w)]->send(requests[i], t0, tok);
        std::lock_guard lock(mu);
        out.results[i] = std::move(r);
        ++n_done;
        if (progress) progress(n_done, int64_t(requests.size()));
      }
    });
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto when = std::chrono::duration<double>(t0 + arrivals[i]);
    const double now = steady_now_s();
    if (when.count() > now) {
      std::this_thread::sleep_for(std::chrono::duration<double>(when.count() - now));
    }
    {
      std::lock_guard lock(mu);
      released.push_back(i);
    }
    cv.notify_one();
  }
  {
    std::lock_guard lock(mu);
    all_released = true;
  }
  cv.notify_all();
  for (auto& t : workers) t.join();
  out.duration_s = steady_now_s() - t0;
  out.metrics = compute_metrics(out.results, out.duration_s);
  return out;
}

}  // namespace pp::bench
