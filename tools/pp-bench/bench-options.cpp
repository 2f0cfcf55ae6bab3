// pp-bench's shared options and the writing of a finished run (see bench-options.h).
#include "bench-options.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <unistd.h>

#include "cli.h"
#include "pp/bench/progress.h"
#include "pp/model/gguf.h"
#include "pp/partition/model-resolver.h"
#include "pp/store/run-store.h"
#include "pp/version.h"

namespace pp::bench_tool {

namespace fs = std::filesystem;

void add_common_options(CLI::App* app, CommonArgs& a) {
  app->add_option("--dataset-name", a.dataset_name,
                  "random-ids, random, sharegpt, fixed, generated-shared-prefix or multi-turn "
                  "(default random-ids)")
      ->check(CLI::IsMember(
          {"random-ids", "random", "sharegpt", "fixed", "generated-shared-prefix", "multi-turn"}));
  app->add_option("--dataset-path", a.dataset_path,
                  "ShareGPT-format JSON (sharegpt; for random: the source of its text)");
  app->add_option("--num-prompts", a.num_prompts, "number of requests (default 1000)");
  app->add_option("--random-input-len", a.random_input_len,
                  "prompt tokens, the upper end for random kinds (default 1024)");
  app->add_option("--random-output-len", a.random_output_len,
                  "new tokens, the upper end for random kinds (default 1024)");
  app->add_option("--random-range-ratio", a.random_range_ratio,
                  "lengths uniform in [len*ratio, len] (default 0)");
  app->add_option("--sharegpt-output-len", a.sharegpt_output_len,
                  "sharegpt: this many new tokens for every prompt");
  app->add_option("--sharegpt-context-len", a.sharegpt_context_len,
                  "sharegpt: skip pairs longer than this in all");
  app->add_option("--gsp-num-groups", a.gsp_num_groups,
                  "generated-shared-prefix: groups, each with its own system prompt (default 64)");
  app->add_option("--gsp-prompts-per-group", a.gsp_prompts_per_group,
                  "generated-shared-prefix: prompts sharing each system prompt (default 16)");
  app->add_option("--gsp-system-prompt-len", a.gsp_system_prompt_len,
                  "generated-shared-prefix: tokens of each system prompt (default 2048)");
  app->add_option("--gsp-question-len", a.gsp_question_len,
                  "generated-shared-prefix: tokens of each question (default 128)");
  app->add_option("--gsp-output-len", a.gsp_output_len,
                  "generated-shared-prefix: new tokens of each request (default 256)");
  app->add_option("--gsp-range-ratio", a.gsp_range_ratio,
                  "generated-shared-prefix: its lengths uniform in [len*ratio, len] (default 1)");
  app->add_flag("--gsp-ordered", a.gsp_ordered,
                "generated-shared-prefix: send the requests group by group, not shuffled");
  app->add_option("--multi-turn-turns", a.multi_turn_turns,
                  "multi-turn: turns of each of --num-prompts conversations, each re-sending the "
                  "history (default 4)");
  app->add_option("--multi-turn-user-len", a.multi_turn_user_len,
                  "multi-turn: tokens of each user message after the first (which has "
                  "--random-input-len; answers have --random-output-len) (default 128)");
  app->add_option("--request-rate", a.request_rate,
                  "requests per second, Poisson arrivals; inf sends all at once (default inf)");
  app->add_option("--max-concurrency", a.max_concurrency,
                  "requests in flight at most (default: no limit; at most 1024)");
  app->add_option("--warmup-requests", a.warmup_requests,
                  "unmeasured requests sent first (default 1)");
  app->add_option("--seed", a.seed, "seed of the dataset and the arrivals (default 1)");
  app->add_flag("--ignore-eos", a.ignore_eos,
                "keep generating past end of sequence (the default, as SGLang's)");
  app->add_flag("--disable-ignore-eos", a.disable_ignore_eos, "stop at end of sequence");
  app->add_flag("--tokenize-prompt", a.tokenize_prompt,
                "send random, random-ids and generated-shared-prefix prompts as token ids, not "
                "text");
  app->add_option("--tokenizer", a.tokenizer,
                  "tokenizer.json, a model folder or a .gguf (default for serve: the server's, "
                  "from /get_model_info)");
  app->add_option("--vocab-size", a.vocab_size,
                  "random-ids and fixed without --tokenizer: ids below this");
  app->add_option("--label", a.label, "a name for this run in the run store");
  app->add_option("--output-file", a.output_file, "append the run as one JSON line to FILE");
  app->add_flag("--disable-progress", a.disable_progress, "no progress bar");
  cli::add_db_option(*app, a.db);
  cli::add_log_option(*app, a.log_level);
}

void add_serve_options(CLI::App* app, ServeArgs& a, bool model_option) {
  app->add_option("--base-url", a.base_url,
                  "the server: http://HOST:PORT (default from --host "
                  "and --port)");
  app->add_option("--host", a.host, "the server's host, without --base-url (default 127.0.0.1)");
  app->add_option("--port", a.port, "the server's port, without --base-url (default 30000)");
  app->add_option("--backend", a.backend,
                  "sglang (/generate; the default), openai (/v1/completions) or openai-chat; "
                  "SGLang's names sglang-native, sglang-oai, sglang-oai-chat, vllm, vllm-chat "
                  "are taken too")
      ->check(CLI::IsMember({"openai", "openai-chat", "sglang", "sglang-native", "sglang-oai",
                             "sglang-oai-chat", "vllm", "vllm-chat"}));
  if (model_option) {
    app->add_option("--model", a.model, "model name sent (default: the server's first model)");
  }
  app->add_flag("--disable-stream", a.disable_stream, "ask for whole responses, not streams");
  app->add_option("--extra-request-body", a.extra_request_body,
                  "JSON object merged into every request body");
}

Result<double> parse_rate(const std::string& text) {
  if (text == "inf" || text == "infinity") return std::numeric_limits<double>::infinity();
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !(v > 0)) {
    return invalid_argument("--request-rate must be a positive number or inf, not '{}'", text);
  }
  return v;
}

Result<bench::DatasetOptions> dataset_options(const CommonArgs& a) {
  bench::DatasetOptions o;
  auto kind = bench::parse_dataset_kind(a.dataset_name);
  if (!kind) return invalid_argument("unknown dataset '{}'", a.dataset_name);
  o.kind = *kind;
  o.num_prompts = a.num_prompts;
  o.input_len = a.random_input_len;
  o.output_len = a.random_output_len;
  o.range_ratio = a.random_range_ratio;
  o.seed = a.seed;
  o.path = a.dataset_path;
  if (a.sharegpt_output_len > 0) o.sharegpt_output_len = a.sharegpt_output_len;
  o.context_len = a.sharegpt_context_len;
  o.gsp_num_groups = a.gsp_num_groups;
  o.gsp_prompts_per_group = a.gsp_prompts_per_group;
  o.gsp_system_prompt_len = a.gsp_system_prompt_len;
  o.gsp_question_len = a.gsp_question_len;
  o.gsp_output_len = a.gsp_output_len;
  o.gsp_range_ratio = a.gsp_range_ratio;
  o.gsp_ordered = a.gsp_ordered;
  o.tokenize_prompt = a.tokenize_prompt;
  o.mt_turns = a.multi_turn_turns;
  o.mt_user_len = a.multi_turn_user_len;
  return o;
}

Result<bench::TrafficOptions> traffic_options(const CommonArgs& a) {
  bench::TrafficOptions t;
  if (a.ignore_eos && a.disable_ignore_eos) {
    return invalid_argument("--ignore-eos and --disable-ignore-eos contradict each other");
  }
  PP_ASSIGN_OR_RETURN(t.request_rate, parse_rate(a.request_rate));
  t.max_concurrency = a.max_concurrency;
  if (a.warmup_requests < 0) return invalid_argument("--warmup-requests must not be negative");
  t.warmup_requests = a.warmup_requests;
  t.seed = a.seed;
  PP_RETURN_IF_ERROR(bench::n_slots(1, a.max_concurrency).status());
  return t;
}

bool ignore_eos(const CommonArgs& c) { return !c.disable_ignore_eos; }

Result<bench::ServeOptions> serve_options(const CommonArgs& c, const ServeArgs& s) {
  bench::ServeOptions o;
  o.base_url = s.base_url.empty() ? fmt::format("http://{}:{}", s.host, s.port) : s.base_url;
  while (o.base_url.ends_with("/")) o.base_url.pop_back();
  PP_RETURN_IF_ERROR(bench::parse_base_url(o.base_url).status());
  auto backend = bench::parse_backend(s.backend);
  if (!backend) return invalid_argument("unknown backend '{}'", s.backend);
  o.request.backend = *backend;
  o.request.model = s.model;
  o.request.stream = !s.disable_stream;
  o.request.ignore_eos = ignore_eos(c);
  // SGLang's datasets are sent as text (the server tokenizes) unless --tokenize-prompt; pp's
  // fixed and multi-turn are ids, whose lengths and shared prefixes are exact.
  o.request.send_text =
      c.dataset_name == "sharegpt" ||
      (!c.tokenize_prompt && c.dataset_name != "fixed" && c.dataset_name != "multi-turn");
  if (const char* key = std::getenv("OPENAI_API_KEY")) o.request.api_key = key;
  if (!s.extra_request_body.empty()) {
    o.request.extra_body = nlohmann::json::parse(s.extra_request_body, nullptr, false);
    if (o.request.extra_body.is_discarded() || !o.request.extra_body.is_object()) {
      return invalid_argument("--extra-request-body must be a JSON object");
    }
  }
  PP_ASSIGN_OR_RETURN(o.traffic, traffic_options(c));
  return o;
}

Result<std::shared_ptr<const model::Tokenizer>> load_tokenizer(const std::string& path) {
  const fs::path p = path;
  std::error_code ec;
  if (!fs::exists(p, ec)) return not_found("cannot open tokenizer '{}'", path);
  // A model pp opens: its tokenizer as pp-serve loads it (for a Hugging Face folder, BOS and EOS
  // from config.json).
  if (p.extension() != ".json") {
    Result<partition::ResolvedModel> m = partition::resolve_model(p);
    if (m.ok() && m->has_tokenizer()) return m->load_tokenizer();
  }
  // Any other model (pp-bench serve measures servers of models pp may not run): its GGUF
  // tokenizer or its tokenizer.json as they are.
  if (p.extension() == ".gguf") {
    PP_ASSIGN_OR_RETURN(auto gguf, model::GgufFile::open(p));
    PP_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tok, model::Tokenizer::from_gguf(*gguf));
    return std::shared_ptr<const model::Tokenizer>(std::move(tok));
  }
  const fs::path json = fs::is_directory(p, ec) ? p / "tokenizer.json" : p;
  if (!fs::exists(json, ec)) return not_found("cannot open tokenizer '{}'", json.string());
  PP_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tok, model::Tokenizer::from_hf_file(json));
  return std::shared_ptr<const model::Tokenizer>(std::move(tok));
}

namespace {
std::mutex g_progress_mu;
double g_progress_start = 0;
bool g_progress_drawn = false;
}  // namespace

bench::ProgressFn make_progress(const CommonArgs& a) {
  if (a.disable_progress || !isatty(STDERR_FILENO)) return {};
  g_progress_start = bench::steady_now_s();
  return [](int64_t done, int64_t total) {
    std::lock_guard lock(g_progress_mu);
    const std::string line =
        bench::render_progress(done, total, bench::steady_now_s() - g_progress_start);
    std::fprintf(stderr, "\r%s", line.c_str());
    std::fflush(stderr);
    g_progress_drawn = true;
  };
}

void end_progress(const CommonArgs&) {
  std::lock_guard lock(g_progress_mu);
  if (g_progress_drawn) std::fputc('\n', stderr);
  g_progress_drawn = false;
}

nlohmann::json common_params(const CommonArgs& c) {
  nlohmann::json j;
  j["dataset_name"] = c.dataset_name;
  j["dataset_path"] = c.dataset_path;
  j["num_prompts"] = c.num_prompts;
  j["random_input_len"] = c.random_input_len;
  j["random_output_len"] = c.random_output_len;
  j["random_range_ratio"] = c.random_range_ratio;
  if (c.sharegpt_output_len > 0) j["sharegpt_output_len"] = c.sharegpt_output_len;
  if (c.sharegpt_context_len > 0) j["sharegpt_context_len"] = c.sharegpt_context_len;
  if (c.dataset_name == "generated-shared-prefix") {
    j["gsp_num_groups"] = c.gsp_num_groups;
    j["gsp_prompts_per_group"] = c.gsp_prompts_per_group;
    j["gsp_system_prompt_len"] = c.gsp_system_prompt_len;
    j["gsp_question_len"] = c.gsp_question_len;
    j["gsp_output_len"] = c.gsp_output_len;
    j["gsp_range_ratio"] = c.gsp_range_ratio;
    j["gsp_ordered"] = c.gsp_ordered;
  }
  if (c.dataset_name == "multi-turn") {
    j["multi_turn_turns"] = c.multi_turn_turns;
    j["multi_turn_user_len"] = c.multi_turn_user_len;
  }
  j["request_rate"] = c.request_rate;
  if (c.max_concurrency > 0) {
    j["max_concurrency"] = c.max_concurrency;
  } else {
    j["max_concurrency"] = nullptr;
  }
  j["warmup_requests"] = c.warmup_requests;
  j["seed"] = c.seed;
  j["ignore_eos"] = ignore_eos(c);
  j["tokenize_prompt"] = c.tokenize_prompt;
  j["tokenizer"] = c.tokenizer;
  if (c.vocab_size > 0) j["vocab_size"] = c.vocab_size;
  j["pp_version"] = std::string(pp::version_string());
  return j;
}

nlohmann::json serve_params(const ServeArgs& s, const std::string& model_id) {
  nlohmann::json j;
  j["base_url"] = s.base_url;
  j["backend"] = s.backend;
  j["model"] = model_id;
  j["stream"] = !s.disable_stream;
  if (!s.extra_request_body.empty()) j["extra_request_body"] = s.extra_request_body;
  return j;
}

Result<int64_t> finish_run(const CommonArgs& c, const FinishedRun& run) {
  const bench::BenchOutcome& out = *run.outcome;
  if (run.print_table) {
    std::fputs(bench::format_result_table(out.metrics, run.header, run.title).c_str(), stdout);
    std::fflush(stdout);
  }
  BenchRecord rec;
  rec.kind = run.kind;
  rec.label = c.label;
  rec.params_json = run.params.dump();
  rec.server_url = run.server_url;
  rec.parent_id = run.parent_id;
  rec.metrics = bench::metric_map(out.metrics);
  for (const auto& [k, v] : out.extra_metrics) rec.metrics[k] = v;
  PP_ASSIGN_OR_RETURN(auto store, RunStore::open(c.db));
  PP_ASSIGN_OR_RETURN(const int64_t id, store->record_bench_run(rec));
  if (!c.output_file.empty()) {
    nlohmann::json line = run.params;
    line["kind"] = bench_kind_name(run.kind);
    line["label"] = c.label;
    line["run_id"] = id;
    if (run.parent_id) line["parent_id"] = *run.parent_id;
    for (const auto& [k, v] : rec.metrics) {
      if (std::isfinite(v.value)) {
        line[k] = v.value;
      } else {
        line[k] = nullptr;
      }
    }
    std::ofstream f(c.output_file, std::ios::app);
    f << line.dump() << '\n';
    f.close();
    if (!f) return internal_error("cannot write '{}'", c.output_file);
  }
  return id;
}

}  // namespace pp::bench_tool
