// `pp-bench serve` and `pp-bench offline`: make the dataset, run, print, record.
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "commands.h"
#include "pp/partition/model-resolver.h"
#include "pp/pipeline/engine.h"

namespace pp::bench_tool {

namespace {

std::string rate_text(double r) { return std::isinf(r) ? "inf" : fmt::format("{:g}", r); }
std::string concurrency_text(int64_t c) { return c > 0 ? std::to_string(c) : "not set"; }

// The tokenizer of the server (SGLang's bench_serving takes the served model's), when the
// server names one (/get_model_info) on this machine; "" when it names none. A path that is
// not here is an error for the datasets that need a tokenizer, and skipped for the others
// (ids then stay ids).
Result<std::string> server_tokenizer(const bench::ServeOptions& so, bench::DatasetKind kind) {
  PP_ASSIGN_OR_RETURN(auto client, bench::HttpClient::connect(so.base_url, so.request));
  Result<std::string> path = client->tokenizer_path();
  if (!path.ok()) {
    if (path.status().code() == StatusCode::kNotFound) return std::string();
    return path.status();
  }
  std::error_code ec;
  if (std::filesystem::exists(*path, ec)) return *path;
  if (kind == bench::DatasetKind::kRandom || kind == bench::DatasetKind::kShareGpt) {
    return Status(
        StatusCode::kFailedPrecondition,
        fmt::format("the server's tokenizer '{}' is not on this machine: give --tokenizer", *path));
  }
  return std::string();
}

}  // namespace

Result<Measured> measure_serve(const CommonArgs& c, const ServeArgs& s,
                               std::optional<int64_t> parent_id, bool quiet) {
  PP_ASSIGN_OR_RETURN(bench::ServeOptions so, serve_options(c, s));
  PP_ASSIGN_OR_RETURN(bench::DatasetOptions dopt, dataset_options(c));
  std::string tokenizer = c.tokenizer;
  if (tokenizer.empty() && c.vocab_size <= 0) {
    PP_ASSIGN_OR_RETURN(tokenizer, server_tokenizer(so, dopt.kind));
  }
  std::shared_ptr<const model::Tokenizer> tok;
  if (!tokenizer.empty()) {
    PP_ASSIGN_OR_RETURN(tok, load_tokenizer(tokenizer));
  }
  if (!tok && c.vocab_size <= 0 &&
      (dopt.kind == bench::DatasetKind::kRandomIds || dopt.kind == bench::DatasetKind::kFixed ||
       dopt.kind == bench::DatasetKind::kGeneratedSharedPrefix ||
       dopt.kind == bench::DatasetKind::kMultiTurn)) {
    return invalid_argument("random token ids need a vocabulary: give --tokenizer or --vocab-size");
  }
  PP_ASSIGN_OR_RETURN(auto requests, bench::make_dataset(dopt, c.vocab_size, tok.get()));
  if (so.request.backend == bench::Backend::kOpenAIChat && requests.front().prompt_text.empty()) {
    return invalid_argument("backend 'openai-chat' sends text: give --tokenizer to decode the ids");
  }
  if (so.request.model.empty() && so.request.backend != bench::Backend::kSglang) {
    PP_ASSIGN_OR_RETURN(auto client, bench::HttpClient::connect(so.base_url, so.request));
    PP_ASSIGN_OR_RETURN(so.request.model, client->first_model_id());
  }
  Measured m;
  PP_ASSIGN_OR_RETURN(m.outcome, bench::run_serve_bench(so, requests, tok.get(), make_progress(c)));
  end_progress(c);
  FinishedRun run;
  run.kind = BenchKind::kServe;
  run.title = "Serving Benchmark Result";
  run.header = {{"Backend", s.backend},
                {"Traffic request rate", rate_text(so.traffic.request_rate)},
                {"Max request concurrency", concurrency_text(c.max_concurrency)}};
  run.params = common_params(c);
  run.params["tokenizer"] = tokenizer;
  run.params["mode"] = "serve";
  run.params.update(serve_params(s, so.request.model));
  run.server_url = so.base_url;
  run.parent_id = parent_id;
  run.outcome = &m.outcome;
  run.print_table = !quiet;
  PP_ASSIGN_OR_RETURN(m.run_id, finish_run(c, run));
  return m;
}

Result<Measured> measure_offline(const CommonArgs& c, const OfflineArgs& o,
                                 std::optional<int64_t> parent_id, bool quiet) {
  PP_ASSIGN_OR_RETURN(bench::TrafficOptions traffic, traffic_options(c));
  PP_ASSIGN_OR_RETURN(bench::DatasetOptions dopt, dataset_options(c));
  // The engine takes the prompts' ids as they are: no tokenizer adds special tokens to them,
  // so the lengths need no room for any.
  dopt.tokenize_prompt = true;
  PP_ASSIGN_OR_RETURN(pipeline::EngineOptions eo, cli::engine_options(o));
  std::shared_ptr<const model::Tokenizer> tok;
  if (!c.tokenizer.empty()) {
    PP_ASSIGN_OR_RETURN(tok, load_tokenizer(c.tokenizer));
  } else if (dopt.kind == bench::DatasetKind::kRandom ||
             dopt.kind == bench::DatasetKind::kShareGpt) {
    // Text datasets need the model's own tokenizer, found by the model source resolver as
    // pp-serve finds it; id datasets need none.
    PP_ASSIGN_OR_RETURN(partition::ResolvedModel m,
                        partition::resolve_model(o.model, {.random_weights = o.random_weights,
                                                           .quantization = eo.quantization,
                                                           .cpu_dtype = eo.cpu_dtype}));
    if (m.has_tokenizer()) {
      PP_ASSIGN_OR_RETURN(tok, m.load_tokenizer());
    }
  }
  eo.tokenizer = tok;
  eo.load_tokenizer = false;
  PP_ASSIGN_OR_RETURN(auto engine, pipeline::Engine::start(eo));
  auto requests = bench::make_dataset(dopt, engine->model_config().n_vocab, tok.get());
  if (!requests.ok()) {
    (void)engine->shutdown();
    return requests.status();
  }
  bench::OfflineOptions oo;
  oo.traffic = traffic;
  oo.ignore_eos = ignore_eos(c);
  Measured m;
  auto outcome = bench::run_offline_bench(*engine, oo, *requests, make_progress(c));
  end_progress(c);
  Status down = engine->shutdown();
  if (!outcome.ok()) return outcome.status();
  if (!down.ok()) return down.with_context("the engine failed");
  m.outcome = std::move(*outcome);
  FinishedRun run;
  run.kind = BenchKind::kOffline;
  run.title = "Offline Benchmark Result";
  run.header = {{"Model", o.model},
                {"Pipeline stages", std::to_string(o.pp)},
                {"Async depth", std::to_string(o.async_depth)},
                {"Traffic request rate", rate_text(traffic.request_rate)},
                {"Max request concurrency", concurrency_text(c.max_concurrency)}};
  run.params = common_params(c);
  run.params["mode"] = "offline";
  run.params.update(cli::engine_params(o));
  run.parent_id = parent_id;
  run.outcome = &m.outcome;
  run.print_table = !quiet;
  PP_ASSIGN_OR_RETURN(m.run_id, finish_run(c, run));
  if (!quiet) {
    for (int k = 0;; ++k) {
      auto it = m.outcome.extra_metrics.find(fmt::format("stage{}_busy_fraction", k));
      if (it == m.outcome.extra_metrics.end()) break;
      std::printf("stage %d: busy %.1f%%\n", k, 100.0 * it->second.value);
    }
    if (auto it = m.outcome.extra_metrics.find("prefix_cache_hit_rate");
        it != m.outcome.extra_metrics.end() && !o.disable_prefix_cache) {
      std::printf("prefix cache: hit rate %.1f%% (%.0f prompt tokens cached)\n",
                  100.0 * it->second.value,
                  m.outcome.extra_metrics["prefix_cache_hit_tokens"].value);
    }
  }
  return m;
}

}  // namespace pp::bench_tool
