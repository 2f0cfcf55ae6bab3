// pp-serve's server mode: start the engine, serve the HTTP API (libpp/server) on a thread of
// its own, and on SIGTERM / SIGINT drain: refuse new requests, let running ones finish within
// the shutdown timeout, cancel the rest, stop the stages.
#include "serve.h"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "pp/server/http-server.h"

namespace pp::serve {
namespace {

std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) { g_signal.store(sig); }

void install_signal_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  // A client that goes away must not kill the server.
  signal(SIGPIPE, SIG_IGN);
}

// The name clients use for the model: the file or folder name ("SmolLM2-135M-Instruct.Q4_1").
std::string default_model_name(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
  std::string name = p.filename().string();
  if (p.extension() == ".gguf") name = p.stem().string();
  return name.empty() ? "default" : name;
}

}  // namespace

void add_http_options(CLI::App& app, HttpOptions* o) {
  app.add_option("--host", o->host, "server mode: address to listen on (default 127.0.0.1)");
  app.add_option("--port", o->port, "server mode: port to listen on (default 30000; 0: any free)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--api-key", o->api_key,
                 "server mode: require 'Authorization: Bearer KEY' on every route but /health, "
                 "/health_generate and /metrics");
  app.add_option("--served-model-name", o->served_model_name,
                 "server mode: the model name clients use (default: the model's file or folder "
                 "name)");
  app.add_option("--max-request-bytes", o->max_request_bytes,
                 "server mode: largest request body; larger ones get 413 (default 8388608)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 34));
  app.add_option("--max-queued-requests", o->max_queued_requests,
                 "server mode: requests waiting beyond the running ones; more get 503 with "
                 "Retry-After (default 1024)")
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--max-concurrent-connections", o->max_concurrent_connections,
                 "server mode: HTTP connections served at once, one thread each (default 2048)")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--shutdown-timeout", o->shutdown_timeout_s,
                 "server mode: seconds running requests get to finish after SIGTERM (default "
                 "30)")
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--log-interval", o->log_interval_s,
                 "server mode: seconds between load lines on stderr while busy (running and "
                 "queued requests, throughput, KV usage, stage busy; info level); 0: none "
                 "(default 5)")
      ->check(CLI::Range(0.0, 86400.0));
}

Status run_http_server(const HttpOptions& http, pipeline::EngineOptions e, ServedModelInfo model) {
  install_signal_handlers();
  server::ServerOptions so;
  so.host = http.host;
  so.port = http.port;
  so.api_key = http.api_key;
  so.served_model_name =
      http.served_model_name.empty() ? default_model_name(e.model_path) : http.served_model_name;
  so.chat_template = std::move(model.chat_template);
  so.context_length = model.context_length;
  so.model_path = e.model_path;
  so.tokenizer_path = std::move(model.tokenizer_path);
  so.model_type = std::move(model.model_type);
  so.architecture = std::move(model.architecture);
  so.server_args = std::move(model.server_args);
  so.max_request_bytes = http.max_request_bytes;
  so.max_running_requests = e.max_running_requests;
  so.max_queued_requests = http.max_queued_requests;
  so.max_concurrent_connections = http.max_concurrent_connections;

  PP_ASSIGN_OR_RETURN(std::unique_ptr<pipeline::Engine> engine, pipeline::Engine::start(e));
  if (g_signal.load() != 0) return engine->shutdown();
  Result<std::unique_ptr<server::HttpServer>> srv = server::HttpServer::create(so, engine.get());
  if (!srv.ok()) {
    (void)engine->shutdown();
    return srv.status();
  }
  server::HttpServer& s = **srv;
  Status run_status;
  std::thread http_thread([&] { run_status = s.run(); });
  std::fprintf(stderr, "pp-serve: listening on http://%s:%d (model '%s', %zu stages)\n",
               so.host.c_str(), s.port(), so.served_model_name.c_str(), engine->stages().size());
  std::fflush(stderr);

  // Serve until a signal. A lost stage is recovered by the engine (/health says 503 meanwhile).
  // An engine that fails (no stage restart left) stays failed: the server keeps answering,
  // /health and new requests with 503, so that a supervisor sees it and restarts the service;
  // the exit status then reports the failure.
  Status failure;
  const auto log_every = std::chrono::milliseconds(int64_t(http.log_interval_s * 1000.0));
  auto next_log = std::chrono::steady_clock::now() + log_every;
  (void)s.sample_load();  // the first sample: the lines report from here on
  while (g_signal.load() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (log_every.count() > 0 && std::chrono::steady_clock::now() >= next_log) {
      next_log += log_every;
      if (std::optional<server::LoadReport> r = s.sample_load(); r && r->busy) {
        spdlog::info("{}", server::format_load_line(*r));
      }
    }
    if (Status h = engine->health(); !h.ok() && failure.ok() && !engine->recovering()) {
      failure = h;
      spdlog::error("the engine failed: {}", h.message());
    }
  }
  if (g_signal.load() != 0) {
    spdlog::warn("signal {}: draining ({} requests in progress)", g_signal.load(),
                 s.n_live_requests());
  }
  s.begin_drain();
  const auto timeout = std::chrono::milliseconds(int64_t(http.shutdown_timeout_s * 1000.0));
  if (!s.wait_idle(timeout)) {
    spdlog::warn("shutdown timeout: cancelling {} requests", s.n_live_requests());
    s.cancel_all();
    (void)s.wait_idle(std::chrono::milliseconds(2000));
  }
  s.stop();
  http_thread.join();
  Status engine_status = engine->shutdown();
  srv->reset();
  if (!failure.ok()) return failure;
  if (!run_status.ok()) return run_status;
  return engine_status;
}

}  // namespace pp::serve
