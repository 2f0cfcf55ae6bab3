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

#include "cli.h"
#include "pp/kernels/cpu.h"
#include "pp/model/chat-template.h"
#include "pp/model/generate.h"
#include "pp/model/model-source.h"
#include "pp/model/stage-model.h"
#include "pp/model/tokenizer.h"
#include "pp/partition/byte-size.h"
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
  int threads = 0;  // 0: all cores
  int64_t max_batch_tokens = 512;
  std::string log_level;

  // The pipeline (used when pp or expect_stages is given).
  std::optional<int32_t> pp;
  int32_t async_depth = 1;
  int32_t max_running_requests = 256;
  int64_t kv_blocks = 0;
  std::string kv_memory;
  int32_t threads_per_stage = 0;
  std::string listen;
  std::optional<int32_t> expect_stages;
  std::string trace;
  std::string db;
  int32_t stage_restarts = 3;
  double stage_timeout_s = 5.0;
  std::string device = "cpu";  // cpu or cuda
  std::vector<int> gpus;
  double mem_fraction = 0.85;
  bool disable_cuda_graph = false;
  std::optional<uint64_t> random_weights;
  std::string layers;
  bool use_pipeline() const {
    return pp.has_value() || expect_stages.has_value() || device != "cpu" || random_weights;
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
      return invalid_argument("--system needs a chat template, and '{}' has none", o.model);
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
  PP_ASSIGN_OR_RETURN(ModelSource src, open_model(o.model));
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
  Generator gen(*model, tok.get(), {.max_batch_tokens = o.max_batch_tokens});
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

// The engine's options (one-shot through the pipeline, and server mode). Without --pp and
// --expect-stages: one stage, or a partition folder's own count.
Result<pipeline::EngineOptions> engine_options(const ServeOptions& o, const char* mode) {
  using namespace pp::pipeline;
  EngineOptions e;
  e.model_path = o.model;
  e.n_stages = o.expect_stages ? *o.expect_stages : o.pp.value_or(0);
  if (o.pp && o.expect_stages && *o.pp != *o.expect_stages) {
    return invalid_argument("--pp {} and --expect-stages {} disagree", *o.pp, *o.expect_stages);
  }
  e.async_depth = o.async_depth;
  e.max_running_requests = o.max_running_requests;
  e.max_batch_tokens = int32_t(o.max_batch_tokens);
  e.kv_blocks = o.kv_blocks;
  if (!o.kv_memory.empty()) {
    PP_ASSIGN_OR_RETURN(uint64_t bytes, pp::partition::parse_byte_size(o.kv_memory));
    e.kv_memory = int64_t(bytes);
  }
  e.threads_per_stage = o.threads_per_stage;
  e.listen = o.listen;
  if (o.expect_stages) {
    if (o.listen.empty()) return invalid_argument("--expect-stages needs --listen tcp://HOST:PORT");
    e.launch_local_stages = false;
    e.register_timeout = std::chrono::minutes(10);
    e.on_listening = [&](const std::string& endpoint) {
      std::fprintf(stderr, "%s: waiting for %d stages at %s\n", kTool, *o.expect_stages,
                   endpoint.c_str());
    };
  }
  e.stage_restarts = o.stage_restarts;
  e.stage_timeout = std::chrono::milliseconds(int64_t(o.stage_timeout_s * 1000.0));
  e.trace_path = o.trace;
  e.db_path = std::filesystem::path(o.db);  // empty: the default run store
  e.config_json = fmt::format(
      R"({{"model":"{}","pp":{},"async_depth":{},"max_running_requests":{},"max_batch_tokens":{},)"
      R"("kv_blocks":{},"kv_memory":"{}","listen":"{}","mode":"{}"}})",
      o.model, e.n_stages, o.async_depth, o.max_running_requests, o.max_batch_tokens, o.kv_blocks,
      o.kv_memory, o.listen, mode);
  e.seed = o.seed;
  e.device = o.device;
  e.gpus = o.gpus;
  e.mem_fraction = o.mem_fraction;
  e.cuda_graphs = !o.disable_cuda_graph;
  e.random_weights = o.random_weights;
  e.layer_split = o.layers;
  if (o.random_weights) e.load_tokenizer = true;
  return e;
}

// One-shot through the pipeline: start the stages, submit the prompt, stream its text.
Status run_pipeline_one_shot(const ServeOptions& o) {
  using namespace pp::pipeline;
  if (o.prompt->empty()) return invalid_argument("empty prompt");
  PP_ASSIGN_OR_RETURN(EngineOptions e, engine_options(o, "one-shot"));

  std::string chat_template;  // a random-weights model (a config alone) has none
  if (!o.random_weights) {
    PP_ASSIGN_OR_RETURN(chat_template, chat_template_of(o.model));
  }
  const auto t0 = std::chrono::steady_clock::now();
  PP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::start(e));
  const double start_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!engine->tokenizer()) {
    return not_found("'{}' has no tokenizer, so a text prompt cannot be encoded", o.model);
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
        e.n_stages > 0 ? e.n_stages : int(engine->stages().size()), o.async_depth, start_s);
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
  app.add_option("--model", o.model,
                 "model: a Hugging Face folder, a .gguf file, or (with --pp) a partition folder")
      ->required();
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
  app.add_option("--max-batch-tokens", o.max_batch_tokens,
                 "most tokens per forward pass: the prefill chunk (default 512)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  app.add_option("--pp", o.pp,
                 "pipeline stages: run through N local pp-stage processes (a partition folder "
                 "as --model fixes N)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--async-depth", o.async_depth,
                 "micro-batch groups in flight beyond one per stage (default 1)")
      ->check(CLI::Range(0, 64));
  app.add_option("--max-running-requests", o.max_running_requests,
                 "requests running at once at most (default 256)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--kv-blocks", o.kv_blocks,
                 "KV cache blocks of 16 tokens (default: what the stages' memory holds)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 31));
  app.add_option("--kv-memory", o.kv_memory, "KV cache memory per stage, e.g. 4GiB")
      ->excludes("--kv-blocks");
  app.add_option("--threads-per-stage", o.threads_per_stage,
                 "compute threads of each local stage (default 0: all cores)")
      ->check(CLI::Range(0, 4096));
  app.add_option("--listen", o.listen,
                 "the coordinator's endpoint for stages, tcp://HOST:PORT (default: a private "
                 "ipc:// socket)");
  app.add_option("--expect-stages", o.expect_stages,
                 "wait for N remote pp-stage processes to connect to --listen instead of "
                 "starting local ones")
      ->check(CLI::Range(1, 1024));
  app.add_option("--stage-restarts", o.stage_restarts,
                 "times a lost local stage is restarted, all stages together, before requests "
                 "fail (default 3)")
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--stage-timeout", o.stage_timeout_s,
                 "seconds of heartbeat silence after which a stage is lost, and that a lost "
                 "remote stage has to rejoin (default 5)")
      ->check(CLI::Range(0.1, 86400.0));
  app.add_option("--device", o.device, "run the stages on cpu or cuda (default cpu)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--gpus", o.gpus,
                 "cuda: the GPUs to use, stage k on the (k mod n)-th (default: every visible one)")
      ->delimiter(',');
  app.add_option("--mem-fraction", o.mem_fraction,
                 "cuda: share of each GPU's memory for weights, buffers and the KV cache "
                 "(default 0.85)")
      ->check(CLI::Range(0.01, 1.0));
  app.add_flag("--disable-cuda-graph", o.disable_cuda_graph,
               "cuda: run decode steps eagerly instead of replaying CUDA graphs");
  app.add_option("--random-weights", o.random_weights,
                 "--model is a config.json (or its folder): random weights from this seed, made "
                 "on each stage");
  app.add_option("--layers", o.layers,
                 "the layers of each stage, inclusive ranges: 0-19,20-35 (default: even split)");
  app.add_option("--trace", o.trace,
                 "write a Chrome trace of every micro-batch on every stage to FILE at the end");
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
