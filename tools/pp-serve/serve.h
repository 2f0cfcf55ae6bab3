// pp-serve's server mode (the default when --prompt is not given): the engine behind the HTTP
// API, until SIGTERM or SIGINT drains it. main.cpp parses the options and dispatches here.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "pp/pipeline/engine.h"
#include "pp/status.h"

namespace pp::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string api_key;
  std::string served_model_name;  // empty: the model file or folder name
  int64_t max_request_bytes = 8 << 20;
  int32_t max_queued_requests = 1024;
  int32_t max_concurrent_connections = 2048;
  double shutdown_timeout_s = 30;
};

// Adds --host, --port, --api-key, --served-model-name, --max-request-bytes,
// --max-queued-requests, --max-concurrent-connections, --shutdown-timeout.
void add_http_options(CLI::App& app, HttpOptions* o);

// Starts the engine, serves HTTP until SIGTERM / SIGINT, then drains: new requests get 503,
// running ones get up to shutdown_timeout_s to finish (then they are cancelled), the stages are
// stopped. Prints "pp-serve: listening on http://HOST:PORT" to stderr once it accepts requests.
// `chat_template` is the model's Jinja template for /v1/chat/completions (empty: none).
Status run_http_server(const HttpOptions& http, pipeline::EngineOptions engine,
                       std::string chat_template);

}  // namespace pp::serve
