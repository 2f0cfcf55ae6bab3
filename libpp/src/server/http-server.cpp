// HttpServer: routes, authentication, admission and the streaming of engine events as
// server-sent events, on cpp-httplib with a thread pool sized for the promised concurrency.
#include "pp/server/http-server.h"

#include <sys/socket.h>

#include <algorithm>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include "chat-tool-output.h"
#include "generation.h"
#include "pp/pipeline/scheduler.h"
#include "pp/server/native-endpoints.h"
#include "pp/server/openai-protocol.h"
#include "pp/server/openai-responses.h"
#include "pp/server/sglang-protocol.h"

namespace pp::server {

namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr auto kPollInterval = 50ms;  // how often a waiting stream looks at its client
constexpr int kListenBacklog = 4096;

// httplib::Server with its listening socket exposed, to raise the listen backlog that the
// library fixes at 5 (a burst of a thousand clients would otherwise wait for SYN retries).
class Server : public httplib::Server {
 public:
  int listen_fd() const { return svr_sock_; }
};

// Constant-time comparison: the time taken does not depend on where the strings differ.
bool equal_constant_time(std::string_view a, std::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | (x ^ y);
  }
  return diff == 0;
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* status_text_type(int status) {
  switch (status) {
    case 401:
      return "authentication_error";
    case 404:
      return "not_found_error";
    case 413:
      return "request_too_large";
    case 503:
      return "service_unavailable";
    default:
      return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

// echo: the text of the prompt of choice `index` (a prompt given as ids is decoded).
std::string echo_prompt(const ApiRequest& r, int32_t index, const model::Tokenizer* tok) {
  const PromptInput& p = r.prompts[size_t(index / std::max(r.n, 1))];
  if (!p.is_ids) return p.text;
  return tok ? tok->decode(p.ids, /*skip_special=*/false) : std::string();
}

}  // namespace

struct HttpServer::Impl {
  ServerOptions o;
  pipeline::Engine* engine = nullptr;
  std::shared_ptr<ServerShared> shared = std::make_shared<ServerShared>();
  Server svr;
  int port = 0;
  ProtocolLimits limits;
  const model::Tokenizer* tok = nullptr;
  std::optional<model::ChatTemplate> chat;
  std::atomic<bool> draining{false};
  std::atomic<bool> stopping{false};
  int64_t created = unix_now();
  LoadMeter load;

  void declare_metrics();
  void update_engine_metrics();
  void routes();
  void native_routes();
  void health_generate(httplib::Response& res);
  void send_error(httplib::Response& res, const ApiError& e);
  void send_unavailable(httplib::Response& res, const std::string& why);
  void handle_generation(ApiKind kind, const httplib::Request& req, httplib::Response& res);
  void respond_whole(ApiKind kind, const ApiRequest& r, Generation& gen, const ResponseMeta& meta,
                     httplib::Response& res);
  void respond_stream(ApiKind kind, const ApiRequest& r, std::shared_ptr<Generation> gen,
                      const ResponseMeta& meta, httplib::Response& res);
  // Reserves room for n engine requests; false when the queue is full.
  bool reserve(int64_t n);
};

void HttpServer::Impl::declare_metrics() {
  MetricsRegistry& m = shared->metrics;
  m.declare("pp_requests_running", MetricType::kGauge,
            "Requests running in the pipeline (holding KV blocks).");
  m.declare("pp_requests_waiting", MetricType::kGauge, "Requests queued for admission.");
  m.declare("pp_requests_live", MetricType::kGauge,
            "Engine requests accepted by the HTTP server and not finished.");
  m.declare("pp_kv_cache_usage_ratio", MetricType::kGauge, "Fraction of KV blocks in use (0..1).");
  m.declare("pp_kv_blocks_used", MetricType::kGauge, "KV blocks in use.");
  m.declare("pp_kv_blocks_total", MetricType::kGauge, "KV blocks in the pool.");
  m.declare("pp_preemptions_total", MetricType::kCounter,
            "Requests preempted for recompute (KV cache full).");
  m.declare("pp_requests_finished_total", MetricType::kCounter,
            "Finished requests by finish reason (stop, length, abort).");
  m.declare("pp_requests_rejected_total", MetricType::kCounter,
            "Requests refused before reaching the engine (queue_full, draining, unhealthy, "
            "never_fits).");
  m.declare("pp_prompt_tokens_total", MetricType::kCounter, "Prompt tokens prefilled.");
  m.declare("pp_prefix_cache_hit_ratio", MetricType::kGauge,
            "Prompt tokens served from the prefix cache over prompt tokens admitted (0..1).");
  m.declare("pp_prefix_cache_query_tokens_total", MetricType::kCounter,
            "Tokens of the sequences admitted with prefix caching on (the hit ratio's "
            "denominator).");
  m.declare("pp_prefix_cache_hit_tokens_total", MetricType::kCounter,
            "Tokens whose KV was taken from the prefix cache instead of being computed.");
  m.declare("pp_prefix_cache_queries_total", MetricType::kCounter,
            "Admissions that asked the prefix cache.");
  m.declare("pp_prefix_cache_hits_total", MetricType::kCounter,
            "Admissions that shared at least one cached block.");
  m.declare("pp_prefix_cache_evictions_total", MetricType::kCounter,
            "Cached unreferenced KV blocks handed out for new content.");
  m.declare("pp_kv_blocks_cached", MetricType::kGauge,
            "KV blocks holding cached prefix content (referenced or not).");
  m.declare("pp_kv_blocks_cached_unreferenced", MetricType::kGauge,
            "Cached KV blocks no request holds (the eviction pool).");
  m.declare("pp_generation_tokens_total", MetricType::kCounter, "Tokens generated.");
  m.declare("pp_http_requests_total", MetricType::kCounter, "HTTP responses by status code.");
  m.declare("pp_engine_healthy", MetricType::kGauge, "1 while every stage is up, else 0.");
  m.declare("pp_uptime_seconds", MetricType::kGauge, "Seconds since the engine started.");
  m.declare("pp_stage_busy_seconds_total", MetricType::kCounter,
            "Seconds each stage spent computing micro-batches.");
  m.declare("pp_stage_idle_seconds_total", MetricType::kCounter,
            "Seconds each stage was not computing since the engine started.");
  m.declare("pp_stage_micro_batches_total", MetricType::kCounter,
            "Micro-batches each stage computed.");
  m.declare("pp_time_to_first_token_seconds", MetricType::kHistogram,
            "Time from the HTTP request's arrival to its first generated token.",
            MetricsRegistry::latency_buckets());
  m.declare("pp_inter_token_latency_seconds", MetricType::kHistogram,
            "Time between consecutive generated tokens of a request.",
            MetricsRegistry::latency_buckets());
  m.declare("pp_request_queue_time_seconds", MetricType::kHistogram,
            "Time from a request's submission to the engine to its admission into a micro-batch "
            "group.",
            MetricsRegistry::latency_buckets());
  m.declare("pp_e2e_request_latency_seconds", MetricType::kHistogram,
            "Time from the HTTP request's arrival to its last token.",
            MetricsRegistry::latency_buckets());
}

void HttpServer::Impl::update_engine_metrics() {
  MetricsRegistry& m = shared->metrics;
  const pipeline::EngineStats s = engine->stats();
  const pipeline::SchedulerStats& q = s.scheduler;
  m.set("pp_requests_running", {}, double(q.n_running));
  m.set("pp_requests_waiting", {}, double(q.n_waiting));
  m.set("pp_requests_live", {}, double(shared->n_live.load()));
  m.set("pp_kv_cache_usage_ratio", {}, q.kv_usage);
  m.set("pp_kv_blocks_used", {}, double(q.kv_blocks_used));
  m.set("pp_kv_blocks_total", {}, double(q.kv_blocks_total));
  m.set("pp_preemptions_total", {}, double(q.n_preemptions));
  m.set("pp_requests_finished_total", {{"reason", "stop"}}, double(q.n_finished_stop));
  m.set("pp_requests_finished_total", {{"reason", "length"}}, double(q.n_finished_length));
  m.set("pp_requests_finished_total", {{"reason", "abort"}}, double(q.n_finished_abort));
  m.set("pp_prompt_tokens_total", {}, double(q.n_prefill_tokens));
  const pipeline::KvCacheStats& c = q.kv_cache;
  m.set("pp_prefix_cache_hit_ratio", {},
        c.n_query_tokens > 0 ? double(c.n_hit_tokens) / double(c.n_query_tokens) : 0.0);
  m.set("pp_prefix_cache_query_tokens_total", {}, double(c.n_query_tokens));
  m.set("pp_prefix_cache_hit_tokens_total", {}, double(c.n_hit_tokens));
  m.set("pp_prefix_cache_queries_total", {}, double(c.n_queries));
  m.set("pp_prefix_cache_hits_total", {}, double(c.n_hits));
  m.set("pp_prefix_cache_evictions_total", {}, double(c.n_evictions));
  m.set("pp_kv_blocks_cached", {}, double(c.n_cached_blocks));
  m.set("pp_kv_blocks_cached_unreferenced", {}, double(c.n_pooled_blocks));
  m.set("pp_generation_tokens_total", {}, double(q.n_generated_tokens));
  m.set("pp_engine_healthy", {}, engine->health().ok() ? 1.0 : 0.0);
  m.set("pp_uptime_seconds", {}, s.uptime_s);
  for (const pipeline::StageBusy& b : s.stages) {
    const Labels l = {{"stage", std::to_string(b.stage)}};
    m.set("pp_stage_busy_seconds_total", l, b.compute_s);
    m.set("pp_stage_idle_seconds_total", l, std::max(0.0, s.uptime_s - b.compute_s));
    m.set("pp_stage_micro_batches_total", l, double(b.n_micro_batches));
  }
}

void HttpServer::Impl::send_error(httplib::Response& res, const ApiError& e) {
  if (e.http_status == 503) res.set_header("Retry-After", std::to_string(o.retry_after_s));
  send_json(res, e.http_status, e.to_json());
}

void HttpServer::Impl::send_unavailable(httplib::Response& res, const std::string& why) {
  ApiError e;
  e.http_status = 503;
  e.type = "service_unavailable";
  e.message = why;
  send_error(res, e);
}

bool HttpServer::Impl::reserve(int64_t n) {
  const int64_t cap = int64_t(o.max_running_requests) + int64_t(o.max_queued_requests);
  int64_t cur = shared->n_live.load();
  do {
    if (cur + n > cap) return false;
  } while (!shared->n_live.compare_exchange_weak(cur, cur + n));
  return true;
}

void HttpServer::Impl::routes() {
  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // A POST that declares no body would have the library wait for one until its read timeout.
    if ((req.method == "POST" || req.method == "PUT") && !req.has_header("Content-Length") &&
        !req.has_header("Transfer-Encoding")) {
      res.set_header("Connection", "close");
      send_error(res, bad_request("the request has no body (no Content-Length): send a JSON "
                                  "object"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (o.api_key.empty() || req.path == "/health" || req.path == "/health_generate" ||
        req.path == "/metrics") {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const std::string auth = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    const bool ok = auth.size() > kBearer.size() && auth.compare(0, kBearer.size(), kBearer) == 0 &&
                    equal_constant_time(std::string_view(auth).substr(kBearer.size()), o.api_key);
    if (ok) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e;
    e.http_status = 401;
    e.type = "authentication_error";
    e.code = "invalid_api_key";
    e.message =
        auth.empty() ? "missing api key: send 'Authorization: Bearer KEY'" : "invalid api key";
    send_error(res, e);
    res.set_header("WWW-Authenticate", "Bearer");
    return httplib::Server::HandlerResponse::Handled;
  });
  // Errors the library produces itself (no route, body too large, bad request line) get the
  // same envelope as ours.
  svr.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e;
        e.http_status = res.status;
        e.type = status_text_type(res.status);
        const std::string allow = res.status == 404 ? route_methods(req.path) : std::string();
        if (!allow.empty()) {
          e.http_status = 405;
          e.type = "invalid_request_error";
          e.message = fmt::format("method {} is not allowed on '{}' (allowed: {})",
                                  excerpt(req.method, 16), excerpt(req.path), allow);
          res.set_header("Allow", allow);
        } else if (res.status == 404) {
          e.message = fmt::format("no route {} '{}'", excerpt(req.method, 16), excerpt(req.path));
        } else if (res.status == 413) {
          e.message = fmt::format("the request body is larger than {} bytes", o.max_request_bytes);
        } else {
          e.message = fmt::format("http status {}", res.status);
        }
        send_json(res, e.http_status, e.to_json());
        return httplib::Server::HandlerResponse::Handled;
      }));
  svr.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& ex) {
          what = ex.what();
        } catch (...) {
        }
        spdlog::error("http handler failed: {}", what);
        ApiError e;
        e.http_status = 500;
        e.type = "server_error";
        e.message = "internal error: " + excerpt(what, 200);
        send_json(res, 500, e.to_json());
      });
  svr.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    shared->metrics.add("pp_http_requests_total", {{"code", std::to_string(res.status)}});
  });

  svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const Status h = engine->health();
    if (draining.load()) {
      send_json(res, 503, {{"status", "draining"}});
    } else if (!h.ok()) {
      send_json(res, 503,
                {{"status", engine->recovering() ? "recovering" : "unavailable"},
                 {"reason", h.message()}});
    } else {
      send_json(res, 200, {{"status", "ok"}});
    }
  });
  svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    update_engine_metrics();
    res.set_content(shared->metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  native_routes();
  // SGLang's /flush_cache (GET or POST): empties the prefix cache; refused with 409 while any
  // request is waiting or running (SGLang answers 400 then; 409 says which kind of refusal).
  auto flush = [this](const httplib::Request&, httplib::Response& res) {
    const Status s = engine->flush_cache();
    if (s.ok()) {
      res.set_content("Cache flushed.\n", "text/plain; charset=utf-8");
      return;
    }
    res.status = s.code() == StatusCode::kFailedPrecondition ? 409 : 503;
    res.set_content(s.message() + "\n", "text/plain; charset=utf-8");
  };
  svr.Get("/flush_cache", flush);
  svr.Post("/flush_cache", flush);
  svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(ApiKind::kCompletion, req, res);
  });
  svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(ApiKind::kChat, req, res);
  });
  svr.Post("/generate", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(ApiKind::kGenerate, req, res);
  });
}

// The informational and tokenizer routes; their bodies are native-endpoints.cpp's.
void HttpServer::Impl::native_routes() {
  svr.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json card = model_card(o.served_model_name, created, limits.max_context);
    send_json(res, 200, {{"object", "list"}, {"data", json::array({card})}});
  });
  svr.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1].str();
    if (id != o.served_model_name) return send_error(res, model_not_found(id, o.served_model_name));
    send_json(res, 200, model_card(o.served_model_name, created, limits.max_context));
  });
  auto model_info = [this](const httplib::Request&, httplib::Response& res) {
    send_json(
        res, 200,
        model_info_body({.model_path = o.model_path.empty() ? o.served_model_name : o.model_path,
                         .tokenizer_path = tok ? o.tokenizer_path : std::string(),
                         .model_type = o.model_type,
                         .architecture = o.architecture}));
  };
  svr.Get("/get_model_info", model_info);
  svr.Get("/model_info", model_info);
  auto server_info = [this](const httplib::Request&, httplib::Response& res) {
    const pipeline::EngineStats s = engine->stats();
    ServerState st;
    st.n_running = s.scheduler.n_running;
    st.n_waiting = s.scheduler.n_waiting;
    st.kv_usage = s.scheduler.kv_usage;
    st.gen_throughput = load.last_gen_tok_s();
    st.max_total_tokens = engine->kv_blocks() * engine->kv_block_size();
    st.max_context = limits.max_context;
    st.n_stages = int32_t(s.stages.size());
    send_json(res, 200, server_info_body(o.server_args, st));
  };
  svr.Get("/get_server_info", server_info);
  svr.Get("/server_info", server_info);
  svr.Get("/version", [](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, version_body());
  });
  auto tokenize = [this](const httplib::Request& req, httplib::Response& res) {
    auto r = tokenize_body(req.body, tok, limits.max_context);
    if (auto* e = std::get_if<ApiError>(&r)) return send_error(res, *e);
    send_json(res, 200, std::get<json>(r));
  };
  auto detokenize = [this](const httplib::Request& req, httplib::Response& res) {
    auto r = detokenize_body(req.body, tok);
    if (auto* e = std::get_if<ApiError>(&r)) return send_error(res, *e);
    send_json(res, 200, std::get<json>(r));
  };
  svr.Post("/tokenize", tokenize);
  svr.Post("/v1/tokenize", tokenize);
  svr.Post("/detokenize", detokenize);
  svr.Post("/v1/detokenize", detokenize);
  svr.Get("/health_generate",
          [this](const httplib::Request&, httplib::Response& res) { health_generate(res); });
}

// One greedy token through every stage: the engine is healthy when it comes back. While
// requests run, their tokens coming back are the proof (SGLang, too, sends nothing then).
void HttpServer::Impl::health_generate(httplib::Response& res) {
  if (draining.load()) return send_json(res, 503, {{"status", "draining"}});
  const auto deadline = SteadyClock::now() + o.health_generate_timeout;
  const pipeline::SchedulerStats before = engine->stats().scheduler;
  if (before.n_running > 0) {
    while (SteadyClock::now() < deadline && !stopping.load()) {
      std::this_thread::sleep_for(20ms);
      if (engine->stats().scheduler.n_generated_tokens > before.n_generated_tokens) {
        return send_json(res, 200, {{"status", "ok"}});
      }
    }
    return send_json(res, 503,
                     {{"status", "unavailable"}, {"reason", "no token within the timeout"}});
  }
  model::SamplingParams p;
  p.max_tokens = 1;
  p.temperature = 0.0f;
  // The queue is shared with the sink: a request cancelled at the timeout may still send.
  auto q = std::make_shared<pipeline::EventQueue>();
  const int32_t first = tok && tok->bos_id() ? *tok->bos_id() : 0;
  Result<uint64_t> id =
      engine->submit({first}, p, [q](pipeline::EngineEvent&& e) { q->push(std::move(e)); });
  if (!id.ok()) {
    return send_json(res, 503, {{"status", "unavailable"}, {"reason", id.status().message()}});
  }
  while (SteadyClock::now() < deadline && !stopping.load()) {
    std::optional<pipeline::EngineEvent> ev = q->pop(100ms);
    if (!ev || ev->event.kind != pipeline::EventKind::kFinal) continue;
    if (!ev->error.ok()) {
      return send_json(res, 503, {{"status", "unavailable"}, {"reason", ev->error.message()}});
    }
    return send_json(res, 200, {{"status", "ok"}});
  }
  engine->cancel(*id);
  send_json(res, 503, {{"status", "unavailable"}, {"reason", "no token within the timeout"}});
}

void HttpServer::Impl::handle_generation(ApiKind kind, const httplib::Request& req,
                                         httplib::Response& res) {
  if (draining.load() || stopping.load()) {
    shared->metrics.add("pp_requests_rejected_total", {{"reason", "draining"}});
    return send_unavailable(res, "the server is shutting down");
  }
  // While the engine recovers from a lost stage, requests are taken: they wait for it.
  if (Status h = engine->health(); !h.ok() && !engine->recovering()) {
    shared->metrics.add("pp_requests_rejected_total", {{"reason", "unhealthy"}});
    return send_unavailable(res, "the engine is unavailable: " + h.message());
  }
  ParseResult parsed = parse_request(kind, req.body, limits);
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
  ApiRequest& r = std::get<ApiRequest>(parsed);
  if (kind != ApiKind::kGenerate && !r.model.empty() && r.model != o.served_model_name) {
    ApiError e;
    e.http_status = 404;
    e.message = fmt::format("the model '{}' does not exist; this server serves '{}'",
                            excerpt(r.model), o.served_model_name);
    e.param = "model";
    e.code = "model_not_found";
    return send_error(res, e);
  }
  auto tokenized = tokenize_prompts(r, tok, chat ? &*chat : nullptr, limits);
  if (auto* e = std::get_if<ApiError>(&tokenized)) return send_error(res, *e);
  std::vector<std::vector<int32_t>>& prompts = std::get<0>(tokenized);

  // Each prompt's sampling parameters, and whether it could ever fit: a request that can never
  // fit the KV pool gets a 400 before it takes room in the queue (not a 503 to retry forever).
  // The engine checks again at submit.
  const int64_t pool_blocks = engine->kv_blocks();
  const int32_t block_size = engine->kv_block_size();
  const int64_t pool_room = pool_blocks * block_size + 1;  // + the last token, which needs no KV
  std::vector<model::SamplingParams> params(prompts.size(), r.params);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t n = int64_t(prompts[i].size());
    model::SamplingParams& p = params[i];
    // A default max_tokens shrinks to what the context and the KV pool leave (a given one was
    // checked against the context).
    const int64_t room = std::min(limits.max_context, pool_room) - n;
    if (!r.max_tokens_given && p.max_tokens > 0 && room > 0) {
      p.max_tokens = std::min<int64_t>(p.max_tokens, room);
    }
    const Status fit =
        pipeline::resolve_max_tokens(n, p.max_tokens, limits.max_context, pool_blocks, block_size)
            .status();
    if (fit.ok()) continue;
    ApiError e = api_error_from_status(fit);
    if (fit.code() == StatusCode::kResourceExhausted) {
      // Named as for the context, so that clients that shorten prompts on this code do so.
      if (n >= pool_room) {  // the prompt alone
        e.param = kind == ApiKind::kChat ? "messages" : "prompt";
      } else {
        e.param = kind == ApiKind::kGenerate ? "sampling_params.max_new_tokens" : "max_tokens";
      }
      e.code = "context_length_exceeded";
      shared->metrics.add("pp_requests_rejected_total", {{"reason", "never_fits"}});
    }
    return send_error(res, e);
  }

  const int64_t total = int64_t(prompts.size()) * r.n;
  const int64_t cap = int64_t(o.max_running_requests) + int64_t(o.max_queued_requests);
  if (total > cap) {
    // More generations than the server ever holds at once: a 503 would be retried forever.
    return send_error(
        res, bad_request(fmt::format("{} prompts x n {} = {} generations, more than this server "
                                     "holds at once ({} running or queued)",
                                     prompts.size(), r.n, total, cap),
                         "n"));
  }
  if (!reserve(total)) {
    shared->metrics.add("pp_requests_rejected_total", {{"reason", "queue_full"}});
    return send_unavailable(res, fmt::format("the server is at capacity ({} requests running or "
                                             "queued); retry later",
                                             o.max_running_requests + o.max_queued_requests));
  }
  auto gen = std::make_shared<Generation>(shared, engine);
  int64_t submitted = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (int32_t j = 0; j < r.n; ++j) {
      model::SamplingParams pj = params[i];
      if (r.params.seed) pj.seed = *r.params.seed + uint64_t(j);
      Status s = gen->submit(prompts[i], pj);
      if (!s.ok()) {
        shared->n_live.fetch_sub(total - submitted);
        shared->cv.notify_all();
        return send_error(res, api_error_from_status(s));
      }
      ++submitted;
    }
  }
  ResponseMeta meta;
  meta.id = make_response_id(kind == ApiKind::kChat       ? "chatcmpl-"
                             : kind == ApiKind::kGenerate ? ""
                                                          : "cmpl-");
  meta.model = o.served_model_name;
  meta.created = unix_now();
  if (r.stream) return respond_stream(kind, r, std::move(gen), meta, res);
  respond_whole(kind, r, *gen, meta, res);
}

void HttpServer::Impl::respond_whole(ApiKind kind, const ApiRequest& r, Generation& gen,
                                     const ResponseMeta& meta, httplib::Response& res) {
  std::vector<ChoiceEvent> events;
  while (!gen.done()) {
    gen.poll(&events, 200ms);
    if (stopping.load() && !gen.done()) gen.cancel();
  }
  if (!gen.error().ok()) return send_error(res, api_error_from_status(gen.error()));
  Usage u;
  for (const ChoiceResult& c : gen.choices()) {
    if (c.index % r.n == 0) u.prompt_tokens += c.n_prompt_tokens;
    u.completion_tokens += c.n_output_tokens;
    u.cached_tokens += c.n_cached_tokens;
  }
  const bool lp = r.params.logprobs;
  switch (kind) {
    case ApiKind::kCompletion: {
      if (!r.echo) return send_json(res, 200, completion_body(meta, gen.choices(), u, lp, tok));
      std::vector<ChoiceResult> echoed = gen.choices();
      for (ChoiceResult& c : echoed) c.text = echo_prompt(r, c.index, tok) + c.text;
      return send_json(res, 200, completion_body(meta, echoed, u, lp, tok));
    }
    case ApiKind::kChat: {
      std::vector<ChatMessageOut> messages;
      if (r.has_tool_output() && chat) {
        for (const ChoiceResult& c : gen.choices()) {
          messages.push_back(ChatToolReader(r, chat->format()).read_whole(c.text));
        }
      }
      return send_json(res, 200, chat_body(meta, gen.choices(), u, lp, tok, messages));
    }
    case ApiKind::kGenerate: {
      const double e2e = seconds_since(gen.arrival());
      const bool many = r.batched || r.n > 1;
      json out = json::array();
      for (const ChoiceResult& c : gen.choices()) {
        const std::string rid = many ? fmt::format("{}-{}", meta.id, c.index) : meta.id;
        out.push_back(generate_object(c, rid, lp, r.params.top_logprobs, e2e, true, false));
      }
      return send_json(res, 200, many ? out : out[0]);
    }
  }
}

void HttpServer::Impl::respond_stream(ApiKind kind, const ApiRequest& r,
                                      std::shared_ptr<Generation> gen, const ResponseMeta& meta,
                                      httplib::Response& res) {
  struct State {
    std::shared_ptr<Generation> gen;
    ApiKind kind;
    ResponseMeta meta;
    int32_t n;
    bool many;
    bool include_usage, logprobs;
    int32_t top_logprobs;
    bool started = false;
    std::vector<size_t> sent_tokens;        // tokens whose logprobs went out, per choice
    std::vector<int64_t> token_text_bytes;  // completions' text_offset base, per choice
    std::vector<ChoiceEvent> events;
    std::vector<std::string> echo;             // completions with echo: each choice's prompt
    std::vector<ChatToolReader> tool_readers;  // chat with tools: one per choice
  };
  auto st = std::make_shared<State>();
  st->gen = std::move(gen);
  st->kind = kind;
  st->meta = meta;
  st->n = r.n;
  st->many = r.batched || r.n > 1;
  st->include_usage = r.include_usage;
  st->logprobs = r.params.logprobs;
  st->top_logprobs = r.params.top_logprobs;
  st->sent_tokens.assign(st->gen->choices().size(), 0);
  st->token_text_bytes.assign(st->gen->choices().size(), 0);
  for (const ChoiceResult& c : st->gen->choices()) {
    if (kind == ApiKind::kCompletion && r.echo) st->echo.push_back(echo_prompt(r, c.index, tok));
    if (kind == ApiKind::kChat && r.has_tool_output() && chat) {
      st->tool_readers.emplace_back(r, chat->format());
    }
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto provider = [this, st](size_t, httplib::DataSink& sink) -> bool {
    Generation& g = *st->gen;
    std::string out;
    if (!st->started) {
      st->started = true;
      if (st->kind == ApiKind::kChat) {  // the first delta of each choice carries the role
        for (const ChoiceResult& c : g.choices()) {
          out +=
              sse_data(chat_chunk(st->meta, c.index, "assistant", std::string(), nullptr, nullptr));
        }
      }
      // echo: the first chunk of each choice is its prompt.
      for (size_t i = 0; i < st->echo.size(); ++i) {
        out += sse_data(
            completion_chunk(st->meta, g.choices()[i].index, st->echo[i], nullptr, nullptr));
      }
    }
    if (stopping.load() && !g.done()) g.cancel();
    g.poll(&st->events, out.empty() ? kPollInterval : 0ms);
    for (const ChoiceEvent& ce : st->events) {
      const size_t i = size_t(ce.choice);
      const ChoiceResult& c = g.choices()[i];
      const pipeline::RequestEvent& e = ce.event.event;
      const bool final = e.kind == pipeline::EventKind::kFinal;
      if (final && !ce.event.error.ok()) {
        // The engine failed midway (a stage lost, no restart left): the choice ends with
        // finish_reason "abort", an error frame says why, then the end of the stream.
        switch (st->kind) {
          case ApiKind::kCompletion:
            out += sse_data(completion_chunk(st->meta, c.index, "", nullptr, &c));
            break;
          case ApiKind::kChat:
            out += sse_data(chat_chunk(st->meta, c.index, "", std::nullopt, nullptr, &c));
            break;
          case ApiKind::kGenerate:
            out += sse_data(generate_object(
                c, st->many ? fmt::format("{}-{}", st->meta.id, c.index) : st->meta.id,
                st->logprobs, st->top_logprobs, seconds_since(g.arrival()), true, st->many));
            break;
        }
        out += sse_data(api_error_from_status(ce.event.error).to_json());
        out += kSseDone;
        g.cancel();
        if (!sink.write(out.data(), out.size())) return false;
        sink.done();
        return true;
      }
      const size_t begin = st->sent_tokens[i], end = begin + e.token_ids.size();
      st->sent_tokens[i] = end;
      const bool has_delta = !e.text.empty() || (st->logprobs && end > begin);
      switch (st->kind) {
        case ApiKind::kCompletion: {
          if (has_delta) {
            json lp = nullptr;
            if (st->logprobs) {
              lp = completion_logprobs(c, begin, end, st->token_text_bytes[i], tok);
              for (const auto& t : lp["tokens"]) {
                st->token_text_bytes[i] += int64_t(t.get<std::string>().size());
              }
            }
            out += sse_data(completion_chunk(st->meta, c.index, e.text, std::move(lp), nullptr));
          }
          if (final) out += sse_data(completion_chunk(st->meta, c.index, "", nullptr, &c));
          break;
        }
        case ApiKind::kChat: {
          if (!st->tool_readers.empty()) {
            // Text that may be a call waits in the reader; calls go out whole.
            ChatToolReader& reader = st->tool_readers[i];
            ChatToolReader::Piece p = reader.feed(e.text, final);
            const bool lp_delta = st->logprobs && end > begin;
            if (p.content || !p.tool_calls.is_null() || lp_delta) {
              json lp = lp_delta ? chat_logprobs(c, begin, end, tok) : json();
              out += sse_data(chat_chunk(st->meta, c.index, "", p.content, std::move(lp), nullptr,
                                         std::move(p.tool_calls)));
            }
            if (final) {
              out += sse_data(chat_chunk(st->meta, c.index, "", std::nullopt, nullptr, &c, nullptr,
                                         reader.called()));
            }
            break;
          }
          if (has_delta) {
            json lp = st->logprobs ? chat_logprobs(c, begin, end, tok) : json();
            out += sse_data(chat_chunk(st->meta, c.index, "", e.text, std::move(lp), nullptr));
          }
          if (final) out += sse_data(chat_chunk(st->meta, c.index, "", std::nullopt, nullptr, &c));
          break;
        }
        case ApiKind::kGenerate: {
          if (has_delta || final || end > begin) {
            const std::string rid =
                st->many ? fmt::format("{}-{}", st->meta.id, c.index) : st->meta.id;
            out += sse_data(generate_object(c, rid, st->logprobs, st->top_logprobs,
                                            seconds_since(g.arrival()), final, st->many));
          }
          break;
        }
      }
    }
    const bool done = g.done();
    if (done) {
      if (st->include_usage && st->kind != ApiKind::kGenerate) {
        Usage u;
        for (const ChoiceResult& c : g.choices()) {
          if (c.index % st->n == 0) u.prompt_tokens += c.n_prompt_tokens;
          u.completion_tokens += c.n_output_tokens;
          u.cached_tokens += c.n_cached_tokens;
        }
        out += sse_data(usage_chunk(st->meta, st->kind == ApiKind::kChat, u));
      }
      out += kSseDone;
    }
    // A failed write means the client went away: returning false closes the connection and
    // the releaser cancels what is left.
    if (!out.empty() && !sink.write(out.data(), out.size())) return false;
    if (done) sink.done();
    return true;
  };
  // Runs when the response is over, whether the stream ended or the client left: dropping the
  // Generation cancels its unfinished requests on every stage.
  auto releaser = [st](bool) { st->gen.reset(); };
  res.set_chunked_content_provider("text/event-stream", std::move(provider), std::move(releaser));
}

// ---------------------------------------------------------------------------------------------

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { stop(); }

Result<std::unique_ptr<HttpServer>> HttpServer::create(ServerOptions options,
                                                       pipeline::Engine* engine) {
  if (!engine) return invalid_argument("no engine");
  if (options.port < 0 || options.port > 65535) {
    return invalid_argument("port {} is outside [0, 65535]", options.port);
  }
  if (options.max_concurrent_connections < 1) {
    return invalid_argument("max_concurrent_connections must be positive");
  }
  if (options.max_request_bytes < 1) return invalid_argument("max_request_bytes must be positive");
  if (options.max_queued_requests < 0) return invalid_argument("max_queued_requests must be >= 0");
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.o = std::move(options);
  s.engine = engine;
  s.tok = engine->tokenizer();
  const model::ModelConfig& cfg = engine->model_config();
  s.limits.n_vocab = cfg.n_vocab;
  s.limits.max_context = cfg.max_context();
  if (s.o.context_length > 0) {
    if (s.o.context_length > s.limits.max_context) {
      return invalid_argument("context length {} is longer than the model's ({})",
                              s.o.context_length, s.limits.max_context);
    }
    s.limits.max_context = s.o.context_length;
  }
  s.limits.max_n = s.o.max_n;
  if (s.o.served_model_name.empty()) s.o.served_model_name = "default";
  if (!s.o.chat_template.empty() && s.tok) {
    auto token_text = [&](std::optional<int32_t> id) {
      return id ? s.tok->id_to_token(*id) : std::string();
    };
    Result<model::ChatTemplate> t = model::ChatTemplate::from_jinja(
        s.o.chat_template, token_text(s.tok->bos_id()), token_text(s.tok->eos_id()));
    if (t.ok()) {
      s.chat = std::move(*t);
    } else {
      spdlog::warn("chat completions are off: {}", t.status().message());
    }
  }
  s.declare_metrics();
  s.routes();
  const size_t n_threads = size_t(s.o.max_concurrent_connections);
  s.svr.new_task_queue = [n_threads] { return new httplib::ThreadPool(n_threads); };
  s.svr.set_payload_max_length(size_t(s.o.max_request_bytes));
  s.svr.set_read_timeout(s.o.read_timeout);
  s.svr.set_write_timeout(s.o.write_timeout);
  s.svr.set_keep_alive_timeout(s.o.keep_alive_timeout.count());
  s.svr.set_keep_alive_max_count(10000);
  s.svr.set_tcp_nodelay(true);
  // SO_REUSEADDR only: SO_REUSEPORT (the library's default) would let a second server share
  // the port silently.
  s.svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  if (s.o.port == 0) {
    s.port = s.svr.bind_to_any_port(s.o.host);
    if (s.port <= 0) return make_error(StatusCode::kUnavailable, "cannot bind '{}'", s.o.host);
  } else {
    if (!s.svr.bind_to_port(s.o.host, s.o.port)) {
      return make_error(StatusCode::kUnavailable, "cannot bind '{}:{}' (in use?)", s.o.host,
                        s.o.port);
    }
    s.port = s.o.port;
  }
  ::listen(s.svr.listen_fd(), kListenBacklog);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port; }

Status HttpServer::run() {
  if (!impl_->svr.listen_after_bind() && !impl_->stopping.load()) {
    return internal_error("the HTTP server stopped unexpectedly");
  }
  return ok_status();
}

void HttpServer::begin_drain() { impl_->draining.store(true); }

bool HttpServer::wait_idle(std::chrono::milliseconds timeout) {
  // Short waits: the sinks notify without holding the mutex, so a wake-up can be missed.
  ServerShared& sh = *impl_->shared;
  const auto deadline = SteadyClock::now() + timeout;
  std::unique_lock lock(sh.mu);
  for (;;) {
    if (sh.n_active.load() == 0 && sh.n_live.load() == 0) return true;
    if (SteadyClock::now() >= deadline) return false;
    sh.cv.wait_for(lock, 20ms);
  }
}

void HttpServer::cancel_all() {
  ServerShared& sh = *impl_->shared;
  std::lock_guard lock(sh.mu);
  for (Generation* g : sh.active) g->cancel();
}

void HttpServer::stop() {
  if (impl_->stopping.exchange(true)) return;
  impl_->draining.store(true);
  impl_->svr.stop();
}

int64_t HttpServer::n_live_requests() const { return impl_->shared->n_live.load(); }
MetricsRegistry& HttpServer::metrics() { return impl_->shared->metrics; }

std::optional<LoadReport> HttpServer::sample_load() {
  return impl_->load.sample(impl_->engine->stats());
}

}  // namespace pp::server
