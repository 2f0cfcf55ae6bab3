// pp-serve's server mode (the default when --prompt is not given): the engine behind the HTTP
// API, until SIGTERM or SIGINT drains it. main.cpp parses the options and dispatches here.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

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
  double log_interval_s = 5;  // the load line while busy (info level); 0: none
};

// What the server says about the model beyond the engine: its chat template, and what
// /model_info and /server_info report.
struct ServedModelInfo {
  std::string chat_template;   // Jinja, for /v1/chat/completions (empty: none)
  int64_t context_length = 0;  // the context served (0: the model's)
  std::string tokenizer_path;  // where the tokenizer came from (empty: none)
  std::string model_type;      // "llama"
  std::string architecture;    // "LlamaForCausalLM"
  nlohmann::json server_args;  // the arguments under SGLang's names
};

// Adds --host, --port, --api-key, --served-model-name, --max-request-bytes,
// --max-queued-requests, --max-concurrent-connections, --shutdown-timeout, --log-interval.
void add_http_options(CLI::App& app, HttpOptions* o);

// Starts the engine, serves HTTP until SIGTERM / SIGINT, then drains: new requests get 503,
// running ones get up to shutdown_timeout_s to finish (then they are cancelled), the stages are
// stopped. Prints "pp-serve: listening on http://HOST:PORT" to stderr once it accepts requests,
// then, while busy, the load line (load-log.h) every log_interval_s at info level.
Status run_http_server(const HttpOptions& http, pipeline::EngineOptions engine,
                       ServedModelInfo model);

}  // namespace pp::serve
