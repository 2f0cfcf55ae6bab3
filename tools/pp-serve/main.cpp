// pp-serve: the coordinator. For now its one-shot mode: apply the chat template, generate one
// completion streamed to stdout, and print a one-line summary (prompt and generated tokens,
// speed) to stderr. Without --pp the whole model runs in this process on the CPU; with --pp N
// (or --expect-stages N) it runs through the asynchronous pipeline of N pp-stage processes,
// local ones it spawns or remote ones that connect to --listen.
//   pp-serve --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]
//            [--top-k K] [--min-p M] [--seed S] [--threads T] [--max-batch-tokens N]
//            [--no-chat-template] [--system TEXT]
//            [--pp N] [--async-depth D] [--max-running-requests R] [--kv-blocks B |
//            --kv-memory BYTES] [--threads-per-stage T] [--listen tcp://HOST:PORT
//            --expect-stages N] [--stage-restarts N] [--stage-timeout SECONDS] [--trace FILE]
//            [--device cpu|cuda] [--gpus 0,1] [--mem-fraction F] [--disable-cuda-graph]
//            [--random-weights SEED] [--layers RANGES] [--db PATH]
// Without --prompt it is the HTTP server (serve.cpp): the OpenAI-compatible and SGLang-native API
// over the pipeline, on --host/--port, until SIGTERM drains it.
// Exit codes: 0 ok, 1 a failure while working, 2 bad usage or bad input.
#include <cstdio>
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
#include "pp/model/generate.h"
#include "pp/model/model-source.h"
#include "pp/model/stage-model.h"
#include "pp/model/tokenizer.h"
#include "pp/partition/partition-reader.h"
#include "pp/pipeline/engine.h"
#include "serve.h"

namespace {

using namespace pp;
using namespace pp::model;

constexpr const char* kTool = "pp-serve";

struct ServeOptions {
  std::string model;
  std::optional<std::string> prompt;
  std::string system;
  bool no_chat_template = false;
  int64_t max_tokens = 256;
  float temperature = 0.0f;  // one-shot mode: greedy unless asked
  float top_p = 1.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  std::optional<uint64_t> seed;
  int threads = 0;  // 0: all cores (the one-shot's name for --threads-per-stage)
  std::string db;
  std::string log_level;
  cli::EngineArgs engine;  // --model, --pp and the rest of the engine's options
  bool use_pipeline() const {
    return engine.pp != 0 || engine.expect_stages.has_value() || engine.device != "cpu" ||
           engine.random_weights;
  }
};

Result<std::unique_ptr<Tokenizer>> load_tokenizer(const ModelSource& src) {
  if (src.gguf) return Tokenizer::from_gguf(*src.gguf);
  if (src.tokenizer_json.empty()) {
    return not_found("'{}' has no tokenizer.json", src.path.string());
  }
  PP_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::from_hf_file(src.tokenizer_json));
  // config.json knows BOS and EOS; tokenizer.json only lets the tokenizer guess.
  if (!src.config.bos_token_ids.empty()) tok->set_bos_id(src.config.bos_token_ids.front());
  if (!src.config.eos_token_ids.empty()) tok->set_eos_id(src.config.eos_token_ids.front());
  return tok;
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

Status run_one_shot(const ServeOptions& o) {
  if (o.prompt->empty()) return invalid_argument("empty prompt");
  kernels::cpu::set_num_threads(o.threads);
  PP_ASSIGN_OR_RETURN(ModelSource src, open_model(o.engine.model));
  PP_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, load_tokenizer(src));
  PP_ASSIGN_OR_RETURN(std::vector<int32_t> ids, prompt_ids(o, src.chat_template, *tok));
  if (ids.empty()) return invalid_argument("the prompt encodes to no tokens");
  PP_ASSIGN_OR_RETURN(std::unique_ptr<StageModel> model,
                      StageModel::load(src.config, *src.weights, 0, src.config.n_layer));

  GenerationRequest req;
  req.prompt_ids = std::move(ids);
  req.params.max_tokens = o.max_tokens;
  req.params.temperature = o.temperature;
  req.params.top_p = o.top_p;
  req.params.top_k = o.top_k;
  req.params.min_p = o.min_p;
  req.params.seed = o.seed;
  bool ends_in_newline = true;
  req.on_text = [&](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    if (!piece.empty()) ends_in_newline = piece.back() == '\n';
  };
  Generator gen(*model, tok.get(), {.max_batch_tokens = o.engine.max_batch_tokens});
  PP_ASSIGN_OR_RETURN(std::vector<GenerationResult> out, gen.generate(std::span(&req, 1)));
  if (!ends_in_newline) std::fputc('\n', stdout);
  std::fflush(stdout);

  const GenerationStats& s = gen.stats();
  std::fprintf(stderr,
               "%s: %lld prompt tokens, %lld generated tokens (%s), prefill %.1f tok/s, decode "
               "%.1f tok/s, %d threads\n",
               kTool, (long long)s.n_prompt_tokens, (long long)s.n_generated_tokens,
               finish_reason_name(out[0].finish_reason), s.prefill_tokens_per_second(),
               s.decode_tokens_per_second(), kernels::cpu::num_threads());
  return ok_status();
}

// The chat template of a model or a partition folder.
Result<std::string> chat_template_of(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::path(path) / pp::partition::kManifestName, ec)) {
    PP_ASSIGN_OR_RETURN(auto m, pp::partition::open_partition(path));
    return m.chat_template;
  }
  PP_ASSIGN_OR_RETURN(ModelSource src, open_model(path));
  return src.chat_template;
}

// The engine's options (one-shot through the pipeline, and server mode): the shared engine
// options, and what pp-serve adds to them (the run store, the seed, the configuration recorded
// with the run).
Result<pipeline::EngineOptions> engine_options(const ServeOptions& o, const char* mode) {
  PP_ASSIGN_OR_RETURN(pipeline::EngineOptions e, cli::engine_options(o.engine));
  if (o.engine.expect_stages) {
    e.on_listening = [n = *o.engine.expect_stages](const std::string& endpoint) {
      std::fprintf(stderr, "%s: waiting for %d stages at %s\n", kTool, n, endpoint.c_str());
    };
  }
  e.db_path = std::filesystem::path(o.db);  // empty: the default run store
  e.seed = o.seed;
  nlohmann::json config = cli::engine_params(o.engine);
  config["stage_restarts"] = o.engine.stage_restarts;
  config["stage_timeout_s"] = o.engine.stage_timeout_s;
  config["mode"] = mode;
  e.config_json = config.dump();
  return e;
}

// One-shot through the pipeline: start the stages, submit the prompt, stream its text.
Status run_pipeline_one_shot(const ServeOptions& o) {
  using namespace pp::pipeline;
  if (o.prompt->empty()) return invalid_argument("empty prompt");
  PP_ASSIGN_OR_RETURN(EngineOptions e, engine_options(o, "one-shot"));

  std::string chat_template;  // a random-weights model (a config alone) has none
  if (!o.engine.random_weights) {
    PP_ASSIGN_OR_RETURN(chat_template, chat_template_of(o.engine.model));
  }
  const auto t0 = std::chrono::steady_clock::now();
  PP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::start(e));
  const double start_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!engine->tokenizer()) {
    return not_found("'{}' has no tokenizer, so a text prompt cannot be encoded", o.engine.model);
  }
  PP_ASSIGN_OR_RETURN(std::vector<int32_t> ids, prompt_ids(o, chat_template, *engine->tokenizer()));
  if (ids.empty()) return invalid_argument("the prompt encodes to no tokens");

  SamplingParams params;
  params.max_tokens = o.max_tokens;
  params.temperature = o.temperature;
  params.top_p = o.top_p;
  params.top_k = o.top_k;
  params.min_p = o.min_p;
  params.seed = o.seed;
  EventQueue q;
  const auto t1 = std::chrono::steady_clock::now();
  PP_RETURN_IF_ERROR(engine->submit(ids, params, q.sink()).status());
  bool ends_in_newline = true;
  std::optional<double> first_token_s;
  for (;;) {
    std::optional<EngineEvent> ev = q.pop(std::chrono::milliseconds(1000));
    if (!ev) {
      PP_RETURN_IF_ERROR(engine->health());
      continue;
    }
    const pipeline::RequestEvent& r = ev->event;
    if (!first_token_s && !r.token_ids.empty()) {
      first_token_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    }
    std::fwrite(r.text.data(), 1, r.text.size(), stdout);
    std::fflush(stdout);
    if (!r.text.empty()) ends_in_newline = r.text.back() == '\n';
    if (r.kind != pipeline::EventKind::kFinal) continue;
    if (!ends_in_newline) std::fputc('\n', stdout);
    std::fflush(stdout);
    if (!ev->error.ok()) return ev->error;
    const double total_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    const double decode_s = total_s - first_token_s.value_or(0.0);
    std::fprintf(
        stderr,
        "%s: %lld prompt tokens, %lld generated tokens (%s), first token %.3f s, decode "
        "%.1f tok/s, %d stages (async depth %d), started in %.2f s\n",
        kTool, (long long)r.n_prompt_tokens, (long long)r.n_output_tokens,
        pipeline::finish_reason_name(r.finish_reason), first_token_s.value_or(0.0),
        r.n_output_tokens > 1 && decode_s > 0 ? double(r.n_output_tokens - 1) / decode_s : 0.0,
        e.n_stages > 0 ? e.n_stages : int(engine->stages().size()), o.engine.async_depth, start_s);
    break;
  }
  return engine->shutdown();
}

}  // namespace

int main(int argc, char** argv) {
  ServeOptions o;
  CLI::App app(
      "pp-serve: serve a language model. Server mode (the default): an OpenAI-compatible and "
      "SGLang-native HTTP API on --host:--port over a pipeline of --pp stages. One-shot mode "
      "(--prompt): generate one completion, streamed to stdout, with a summary line on stderr; "
      "sampling is greedy (temperature 0) unless --temperature is given.",
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
  app.add_option("--threads", o.threads, "CPU threads (default 0: all cores)")
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

  if (!o.prompt) {  // server mode
    Result<pipeline::EngineOptions> e = engine_options(o, "serve");
    if (!e.ok()) return cli::report(kTool, e.status());
    return cli::report(kTool, serve::run_http_server(http, std::move(*e)));
  }
  if (o.use_pipeline()) return cli::report(kTool, run_pipeline_one_shot(o));
  return cli::report(kTool, run_one_shot(o));
}
