// pp-serve: the coordinator. Without --prompt it is the HTTP server (serve.cpp): the
// OpenAI-compatible and SGLang-native API over the pipeline, on --host/--port, until SIGTERM
// drains it. With --prompt it is one-shot: apply the chat template, generate one completion
// through the same engine (one stage unless --pp, --expect-stages or a partition folder say
// otherwise), stream it to stdout, and print a one-line summary (prompt and generated tokens,
// finish reason, prefill and decode speed, threads, stages) to stderr.
//   pp-serve --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]
//            [--top-k K] [--min-p M] [--seed S] [--threads T] [--no-chat-template]
//            [--system TEXT] [engine options]
//   pp-serve --model PATH [--host ADDR] [--port PORT] [server options] [engine options]
// The engine options (--pp, --async-depth, --kv-blocks, --device, --listen, ...) are those of
// tools/common/engine-options.h. The model is opened once, by the model source resolver: its
// chat template, and its tokenizer, which the engine then uses too.
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

namespace {

using namespace pp;
using namespace pp::model;

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
  cli::EngineArgs engine;  // --model, --pp and the rest of the engine's options
};

// What pp-serve needs of the model beyond the engine: its chat template and its tokenizer (null
// when it has none), from the model source resolver.
struct ServedModel {
  std::string chat_template;
  std::shared_ptr<const Tokenizer> tokenizer;
};

Result<ServedModel> open_served_model(const cli::EngineArgs& a) {
  PP_ASSIGN_OR_RETURN(partition::ResolvedModel m,
                      partition::resolve_model(a.model, {.random_weights = a.random_weights}));
  ServedModel s;
  s.chat_template = m.chat_template();
  if (m.has_tokenizer()) {
    PP_ASSIGN_OR_RETURN(s.tokenizer, m.load_tokenizer());
  }
  return s;
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
  PP_ASSIGN_OR_RETURN(ServedModel model, open_served_model(o.engine));
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
  const int64_t room = engine->model_config().max_context() - int64_t(ids.size());
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

// Server mode: the HTTP API over the engine (serve.cpp).
Status run_server(const ServeOptions& o, const serve::HttpOptions& http) {
  PP_ASSIGN_OR_RETURN(ServedModel model, open_served_model(o.engine));
  PP_ASSIGN_OR_RETURN(pipeline::EngineOptions e, engine_options(o, model, "serve"));
  return serve::run_http_server(http, std::move(e), model.chat_template);
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
  cli::add_engine_options(app, o.engine,
                          {.kv_memory = true, .remote_stages = true, .stage_faults = true});
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
  app.add_option("--seed", o.seed, "random seed (default: a fresh one)");
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
  spdlog::set_level(spdlog::level::warn);
  cli::apply_log_level(o.log_level);

  return cli::report(kTool, o.prompt ? run_one_shot(o) : run_server(o, http));
}
