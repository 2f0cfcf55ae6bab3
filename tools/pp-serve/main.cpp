// pp-serve: the coordinator. Without --prompt it is the HTTP server (serve.cpp): the
// OpenAI-compatible and SGLang-native API over the pipeline, on --host/--port, until SIGTERM
// drains it. With --prompt it is one-shot: apply the chat template, generate one completion
// through the same engine (one stage unless --pp, --expect-stages or a partition folder say
// otherwise), stream it to stdout, and print a one-line summary (prompt and generated tokens,
// finish reason, prefill and decode speed, threads, stages) to stderr.
//   pp-serve --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]
//            [--top-k K] [--min-p M] [--seed S] [--threads T] [--no-chat-template]
//            [--system TEXT] [--context-length N] [--tokenizer-path P] [--chat-template F]
//            [engine options]
//   pp-serve --model PATH [--host ADDR] [--port PORT] [server options] [engine options]
// The engine options (--pp, --async-depth, --kv-blocks, --device, --listen, ...) are those of
// tools/common/engine-options.h. The model is opened once, by the model source resolver: its
// chat template, and its tokenizer, which the engine then uses too (served-model.h, where
// --tokenizer-path, --chat-template and --context-length replace or cap them).
// Exit codes: 0 ok, 1 a failure while working, 2 bad usage or bad input.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "engine-options.h"
#include "pp/kernels/cpu.h"
#include "pp/model/chat-template.h"
#include "pp/model/tokenizer.h"
#include "pp/partition/model-resolver.h"
#include "pp/pipeline/engine.h"
#include "serve.h"
#include "served-model.h"

namespace {

using namespace pp;
using namespace pp::model;
using serve::ServedModel;

constexpr const char* kTool = "pp-serve";

struct ServeOptions {
  std::optional<std::string> prompt;
  std::string system;
  bool no_chat_template = false;
  int64_t max_tokens = 256;
  float temperature = 0.0f;  // one-shot mode: greedy unless asked
  float top_p = 1.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  std::optional<uint64_t> seed;
  int32_t threads = 0;  // each stage's compute threads, as --threads-per-stage; 0: all cores
  std::string db;
  std::string log_level;
  int64_t context_length = 0;      // caps the served context; 0: the model's
  std::string tokenizer_path;      // a tokenizer used instead of the model's
  std::string chat_template;       // a Jinja template file used instead of the model's
  bool trust_remote_code = false;  // accepted for SGLang's command lines; pp runs no model code
  cli::EngineArgs engine;          // --model, --pp and the rest of the engine's options
};

Result<ServedModel> open_served_model(const ServeOptions& o) {
  return serve::open_served_model({.model = o.engine.model,
                                   .random_weights = o.engine.random_weights,
                                   .context_length = o.context_length,
                                   .tokenizer_path = o.tokenizer_path,
                                   .chat_template = o.chat_template});
}

// The engine's options (either mode): the shared engine options, and what pp-serve adds to them
// (--threads, the run store, the seed, the tokenizer, the configuration recorded with the run).
Result<pipeline::EngineOptions> engine_options(const ServeOptions& o, const ServedModel& model,
                                               const char* mode) {
  cli::EngineArgs a = o.engine;
  if (o.threads > 0) {
    if (a.threads_per_stage > 0 && a.threads_per_stage != o.threads) {
      return invalid_argument("--threads {} and --threads-per-stage {} disagree", o.threads,
                              a.threads_per_stage);
    }
    a.threads_per_stage = o.threads;
  }
  PP_ASSIGN_OR_RETURN(pipeline::EngineOptions e, cli::engine_options(a));
  if (a.expect_stages) {
    e.on_listening = [n = *a.expect_stages](const std::string& endpoint) {
      std::fprintf(stderr, "%s: waiting for %d stages at %s\n", kTool, n, endpoint.c_str());
    };
  }
  e.db_path = std::filesystem::path(o.db);  // empty: the default run store
  e.seed = o.seed;
  e.tokenizer = model.tokenizer;  // the resolver has looked: no tokenizer means none
  e.load_tokenizer = false;
  nlohmann::json config = cli::engine_params(a);
  if (o.context_length > 0) config["context_length"] = o.context_length;
  if (!o.tokenizer_path.empty()) config["tokenizer_path"] = o.tokenizer_path;
  if (!o.chat_template.empty()) config["chat_template"] = o.chat_template;
  config["stage_restarts"] = a.stage_restarts;
  config["stage_timeout_s"] = a.stage_timeout_s;
  config["mode"] = mode;
  e.config_json = config.dump();
  return e;
}

// The prompt's token ids: through the model's chat template unless told otherwise (or the model
// has none, when the text is the prompt as it is).
Result<std::vector<int32_t>> prompt_ids(const ServeOptions& o, const std::string& chat_template,
                                        const Tokenizer& tok) {
  if (o.no_chat_template || chat_template.empty()) {
    if (!o.system.empty() && !o.no_chat_template) {
      return invalid_argument("--system needs a chat template, and '{}' has none", o.engine.model);
    }
    return tok.encode(*o.prompt, /*add_special=*/true);
  }
  auto token_text = [&](std::optional<int32_t> id) {
    return id ? tok.id_to_token(*id) : std::string();
  };
  Result<ChatTemplate> tmpl =
      ChatTemplate::from_jinja(chat_template, token_text(tok.bos_id()), token_text(tok.eos_id()));
  if (!tmpl.ok()) {
    return tmpl.status().with_context(
        "cannot use the model's chat template (try --no-chat-template)");
  }
  std::vector<ChatMessage> messages;
  if (!o.system.empty()) messages.push_back({"system", o.system});
  messages.push_back({"user", *o.prompt});
  PP_ASSIGN_OR_RETURN(std::string text, tmpl->apply(messages, /*add_generation_prompt=*/true));
  // The template writes BOS itself where the format wants one.
  return tok.encode(text, /*add_special=*/false);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// One-shot: encode the prompt, start the engine, submit, stream the text as it comes.
Status run_one_shot(const ServeOptions& o) {
  if (o.prompt->empty()) return invalid_argument("empty prompt");
  PP_ASSIGN_OR_RETURN(ServedModel model, open_served_model(o));
  if (!model.tokenizer) {
    return not_found("'{}' has no tokenizer, so a text prompt cannot be encoded", o.engine.model);
  }
  PP_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                      prompt_ids(o, model.chat_template, *model.tokenizer));
  if (ids.empty()) return invalid_argument("the prompt encodes to no tokens");
  PP_ASSIGN_OR_RETURN(pipeline::EngineOptions e, engine_options(o, model, "one-shot"));

  const auto t0 = std::chrono::steady_clock::now();
  PP_ASSIGN_OR_RETURN(std::unique_ptr<pipeline::Engine> engine, pipeline::Engine::start(e));
  const double start_s = seconds_since(t0);

  SamplingParams params;
  // As many tokens as asked, but no more than the context leaves: the one-shot ends with
  // "length" there rather than refusing the prompt.
  const int64_t room = model.context_length - int64_t(ids.size());
  params.max_tokens = room > 0 ? std::min(o.max_tokens, room) : o.max_tokens;
  params.temperature = o.temperature;
  params.top_p = o.top_p;
  params.top_k = o.top_k;
  params.min_p = o.min_p;
  params.seed = o.seed;
  pipeline::EventQueue q;
  const auto t1 = std::chrono::steady_clock::now();
  PP_RETURN_IF_ERROR(engine->submit(ids, params, q.sink()).status());
  bool ends_in_newline = true;
  std::optional<double> first_token_s;
  for (;;) {
    std::optional<pipeline::EngineEvent> ev = q.pop(std::chrono::milliseconds(1000));
    if (!ev) {
      PP_RETURN_IF_ERROR(engine->health());
      continue;
    }
    const pipeline::RequestEvent& r = ev->event;
    if (!first_token_s && !r.token_ids.empty()) first_token_s = seconds_since(t1);
    std::fwrite(r.text.data(), 1, r.text.size(), stdout);
    std::fflush(stdout);
    if (!r.text.empty()) ends_in_newline = r.text.back() == '\n';
    if (r.kind != pipeline::EventKind::kFinal) continue;
    if (!ends_in_newline) std::fputc('\n', stdout);
    std::fflush(stdout);
    if (!ev->error.ok()) return ev->error;
    // Prefill is the time to the first token (which prefill samples); decode is the rest.
    const double prefill_s = first_token_s.value_or(0.0);
    const double decode_s = seconds_since(t1) - prefill_s;
    const int n_stages = int(engine->stages().size());
    std::fprintf(
        stderr,
        "%s: %lld prompt tokens, %lld generated tokens (%s), prefill %.1f tok/s, decode "
        "%.1f tok/s, %d threads, %d stage%s (async depth %d), started in %.2f s\n",
        kTool, (long long)r.n_prompt_tokens, (long long)r.n_output_tokens,
        pipeline::finish_reason_name(r.finish_reason),
        prefill_s > 0 ? double(r.n_prompt_tokens) / prefill_s : 0.0,
        r.n_output_tokens > 1 && decode_s > 0 ? double(r.n_output_tokens - 1) / decode_s : 0.0,
        e.threads_per_stage > 0 ? e.threads_per_stage : kernels::cpu::num_threads(), n_stages,
        n_stages == 1 ? "" : "s", e.async_depth, start_s);
    break;
  }
  return engine->shutdown();
}

// The server's arguments under SGLang's names where pp has the same setting, for /server_info
// (SGLang's clients read it). The API key is never shown.
nlohmann::json sglang_server_args(const ServeOptions& o, const serve::HttpOptions& http) {
  const cli::EngineArgs& a = o.engine;
  nlohmann::json j;
  j["model_path"] = a.model;
  j["tokenizer_path"] = o.tokenizer_path.empty() ? a.model : o.tokenizer_path;
  j["served_model_name"] =
      http.served_model_name.empty() ? nullptr : nlohmann::json(http.served_model_name);
  j["chat_template"] = o.chat_template.empty() ? nullptr : nlohmann::json(o.chat_template);
  j["context_length"] = o.context_length > 0 ? nlohmann::json(o.context_length) : nullptr;
  j["dtype"] = a.dtype;
  j["device"] = a.device;
  j["trust_remote_code"] = o.trust_remote_code;
  j["host"] = http.host;
  j["port"] = http.port;
  j["tp_size"] = a.tp_size > 0 ? a.tp_size : 1;
  j["pp_size"] = a.pp > 0 ? a.pp : 1;
  j["dp_size"] = 1;
  j["pp_async_batch_depth"] = a.async_depth;
  j["mem_fraction_static"] = a.mem_fraction;
  j["chunked_prefill_size"] = a.max_batch_tokens;
  j["max_running_requests"] = a.max_running_requests;
  j["max_queued_requests"] = http.max_queued_requests;
  j["max_total_tokens"] = a.max_total_tokens > 0 ? nlohmann::json(a.max_total_tokens) : nullptr;
  j["random_seed"] = o.seed ? nlohmann::json(*o.seed) : nullptr;
  j["quantization"] = a.quantization.empty() ? nullptr : nlohmann::json(a.quantization);
  j["disable_cuda_graph"] = a.disable_cuda_graph;
  j["disable_radix_cache"] = a.disable_prefix_cache;
  j["grammar_backend"] = a.grammar_backend;
  j["log_level"] = o.log_level.empty() ? "info" : o.log_level;
  j["api_key"] = nullptr;
  return j;
}

// Server mode: the HTTP API over the engine (serve.cpp).
Status run_server(const ServeOptions& o, const serve::HttpOptions& http) {
  PP_ASSIGN_OR_RETURN(ServedModel model, open_served_model(o));
  PP_ASSIGN_OR_RETURN(pipeline::EngineOptions e, engine_options(o, model, "serve"));
  serve::ServedModelInfo info;
  info.chat_template = model.chat_template;
  info.context_length = model.context_length;
  info.tokenizer_path = model.tokenizer_path;
  info.model_type = model.model_type;
  info.architecture = model.architecture;
  info.server_args = sglang_server_args(o, http);
  return serve::run_http_server(http, std::move(e), std::move(info));
}

}  // namespace

int main(int argc, char** argv) {
  ServeOptions o;
  CLI::App app(
      "pp-serve: serve a language model. Server mode (the default): an OpenAI-compatible and "
      "SGLang-native HTTP API on --host:--port over a pipeline of --pp stages. One-shot mode "
      "(--prompt): generate one completion through the same pipeline, streamed to stdout, with "
      "a summary line on stderr; sampling is greedy (temperature 0) unless --temperature is "
      "given.",
      kTool);
  cli::add_engine_options(
      app, o.engine,
      {.kv_memory = true, .remote_stages = true, .stage_faults = true, .grammar = true});
  app.add_option("--prompt", o.prompt, "one-shot mode: the user message to complete");
  app.add_option("--system", o.system, "system message (with the chat template)");
  app.add_flag("--no-chat-template", o.no_chat_template,
               "use the prompt as it is, without the model's chat template");
  app.add_option("--max-tokens", o.max_tokens, "most tokens to generate (default 256)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  app.add_option("--temperature", o.temperature, "sampling temperature; default 0 (greedy)")
      ->check(CLI::Range(0.0f, 100.0f));
  app.add_option("--top-p", o.top_p, "nucleus sampling mass, in (0, 1] (default 1: off)");
  app.add_option("--top-k", o.top_k, "keep the k most likely tokens (default 0: off)");
  app.add_option("--min-p", o.min_p, "drop tokens below min-p x the top probability (default 0)");
  app.add_option("--seed,--random-seed", o.seed, "random seed (default: a fresh one)");
  app.add_option("--context-length", o.context_length,
                 "the longest context served, prompt and output (default: the model's; at most "
                 "the model's)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  app.add_option("--tokenizer-path", o.tokenizer_path,
                 "use this tokenizer instead of the model's: a tokenizer.json, a folder with one "
                 "(and tokenizer_config.json), a .gguf file or a model folder");
  app.add_option("--chat-template", o.chat_template,
                 "a Jinja chat template file used instead of the model's (of a format pp "
                 "renders: ChatML, Llama 3, Llama 3.1, Llama 2, Mistral)");
  app.add_flag("--trust-remote-code", o.trust_remote_code,
               "accepted for SGLang's command lines and ignored: pp runs no code from the model");
  app.add_option("--threads", o.threads,
                 "CPU threads of each stage, as --threads-per-stage (default 0: all cores)")
      ->check(CLI::Range(0, 4096));
  serve::HttpOptions http;
  serve::add_http_options(app, &http);
  cli::add_db_option(app, o.db);
  cli::add_log_option(app, o.log_level);
  cli::add_version_flag(app);
  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
  // stdout carries the completion; logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt(kTool));
  // Server mode logs at info (the load line every few seconds while busy); one-shot at warn,
  // to keep its stderr to the summary.
  spdlog::set_level(o.prompt ? spdlog::level::warn : spdlog::level::info);
  cli::apply_log_level(o.log_level);

  return cli::report(kTool, o.prompt ? run_one_shot(o) : run_server(o, http));
}
