// HttpServer: pp-serve's HTTP front end over an Engine. Routes:
//   GET  /health                 200 while the engine (every stage) is up, 503 otherwise
//   GET  /metrics                Prometheus text: requests running / queued, KV usage,
//                                preemptions, finished requests by reason, latency histograms
//                                (time to first token, inter-token, end-to-end), per-stage busy
//                                and idle seconds
//   GET  /health_generate        200 once one token generated through the engine comes back
//                                (within health_generate_timeout), 503 otherwise
//   GET  /v1/models              the served model; /v1/models/{id} that one model (404 others)
//   POST /v1/completions         OpenAI completions, streaming (SSE) or not
//   POST /v1/chat/completions    OpenAI chat completions, streaming or not
//   POST /generate               SGLang's native generate
//   GET  /get_model_info, /model_info, /get_server_info, /server_info, /version;
//   POST /tokenize, /detokenize (and under /v1/)   SGLang's shapes (native-endpoints.h)
// A known path asked with another method gets 405 with an Allow header; a POST without a body
// (no Content-Length, not chunked) gets 400 at once.
// With an API key every route but /health, /health_generate and /metrics needs "Authorization:
// Bearer KEY" (compared in constant time; 401 otherwise). Errors use OpenAI's envelope
// (api-error.h).
//
// Threads: the HTTP library runs each connection on a thread of a pool sized for
// max_concurrent_connections (a streaming request holds its connection, and its thread, for its
// whole generation). Those threads only parse, validate, tokenize, submit and stream: the
// engine's sink (on the coordinator thread) pushes events into a per-request queue and never
// blocks; the connection's thread drains the queue with a short timeout, so a client that went
// away is noticed at the next write and its requests are cancelled on every stage.
//
// Admission: a request that can never run is refused with 400 before it takes a place: one
// whose prompt + max_tokens (or prompt alone) needs more KV blocks than the whole pool (code
// context_length_exceeded; a default max_tokens first shrinks to what the context and the pool
// leave), or with more generations (prompts x n) than max_running_requests +
// max_queued_requests. Requests the engine holds (running or queued) are counted here; once a
// new one would exceed max_running_requests + max_queued_requests it is refused at once with
// 503 and Retry-After. Draining (begin_drain, on SIGTERM) refuses every new request with 503 while
// the ones in progress finish.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "pp/pipeline/engine.h"
#include "pp/server/load-log.h"
#include "pp/server/metrics.h"
#include "pp/status.h"

namespace pp::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 30000;               // 0: any free port (see HttpServer::port())
  std::string api_key;            // empty: no authentication
  std::string served_model_name;  // the one model name clients must use (or omit)
  std::string chat_template;      // the model's Jinja chat template (recognised, not executed)
  int64_t context_length = 0;     // the context served; 0: the model's (never above it)
  std::string model_path;         // for /model_info: what --model named
  std::string tokenizer_path;     // where the tokenizer came from; empty: none
  std::string model_type;         // config.json's model_type
  std::string architecture;       // "LlamaForCausalLM"
  nlohmann::json server_args;     // /server_info: the arguments under SGLang's names
  std::chrono::seconds health_generate_timeout{20};
  int64_t max_request_bytes = 8 << 20;        // a larger body gets 413
  int32_t max_running_requests = 256;         // the engine's running limit (for the queue bound)
  int32_t max_queued_requests = 1024;         // requests waiting beyond the running ones
  int32_t max_concurrent_connections = 2048;  // HTTP worker threads
  int32_t retry_after_s = 1;                  // Retry-After on 503
  int32_t max_n = 64;                         // choices per prompt at most
  std::chrono::seconds read_timeout{30};      // reading a request
  std::chrono::seconds write_timeout{30};     // a client that reads nothing for this long
  std::chrono::seconds keep_alive_timeout{5};
};

class HttpServer {
 public:
  // Binds host:port (so port() is known and clients can connect once run() starts). `engine`
  // must outlive the server. Errors: a bad option, a port that cannot be bound.
  static Result<std::unique_ptr<HttpServer>> create(ServerOptions options,
                                                    pipeline::Engine* engine);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  // Serves until stop(); call on a thread of its own.
  Status run();
  // New requests get 503 from now on; requests in progress carry on.
  void begin_drain();
  // Waits until no generation is in progress (or `timeout`); true when none is left.
  bool wait_idle(std::chrono::milliseconds timeout);
  // Cancels every generation in progress (their streams end with finish_reason abort).
  void cancel_all();
  // Stops listening and closes connections; run() returns. Idempotent.
  void stop();

  // Engine requests accepted and not yet finished.
  int64_t n_live_requests() const;
  // The load since the previous call (none at the first): for the server's log line, and the
  // throughput /server_info reports.
  std::optional<LoadReport> sample_load();
  MetricsRegistry& metrics();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pp::server
