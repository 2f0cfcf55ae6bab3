// pp-serve's HTTP API through the binary, driven by httplib's client: authentication, every
// class of bad input (one error envelope naming the parameter), 413, the bounded queue (503 with
// Retry-After), /health and /metrics, completions / chat / SGLang generate (streaming or not),
// a client that disconnects mid-stream (request cancelled, KV blocks freed within a second),
// a stage lost mid-stream (error frame, then [DONE]; /health 503), SIGTERM draining, and that
// --help and the man pages name the same options.
#include <httplib.h>

#include <atomic>
#include <regex>
#include <set>
#include <thread>

#include "test-http-util.h"

namespace pp::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kKey = "sk-test-key-123";

httplib::Headers auth() { return {{"Authorization", std::string("Bearer ") + kKey}}; }

// The data: frames of an SSE body, [DONE] included.
std::vector<std::string> sse_frames(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end == std::string::npos ? body.size() : end + 2;
  }
  return out;
}

// The value of an unlabelled (or exactly labelled) series in Prometheus text.
double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

class HttpServerTest : public SharedServerTest<HttpServerTest> {
 protected:
  static void SetUpTestSuite() {
    make_model();
    start_server({"--model", model_.string(), "--pp", "2", "--api-key", kKey, "--served-model-name",
                  "tiny", "--threads-per-stage", "1", "--max-request-bytes", "65536", "--db",
                  (dir_->path() / "runs.db").string()});
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(60, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const std::string& body) {
    return client().Post(path.c_str(), auth(), body, "application/json");
  }
  std::string metrics_text() {
    auto r = client().Get("/metrics");
    return r ? r->body : "";
  }
};

TEST_F(HttpServerTest, AuthIsRequiredExceptOnHealthAndMetrics) {
  auto c = client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  auto none = c.Get("/v1/models");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(json::parse(none->body)["error"]["type"], "authentication_error");
  auto wrong = c.Get("/v1/models", {{"Authorization", "Bearer sk-test-key-124"}});
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  auto shorter =
      c.Post("/v1/completions", {{"Authorization", "Bearer sk-test"}}, "{}", "application/json");
  ASSERT_TRUE(shorter);
  EXPECT_EQ(shorter->status, 401);
  auto ok = c.Get("/v1/models", auth());
  ASSERT_TRUE(ok);
  ASSERT_EQ(ok->status, 200);
  json j = json::parse(ok->body);
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(j["data"][0]["max_model_len"], 512);
}

struct BadCase {
  const char* path;
  std::string body;
  int status;
  const char* param;  // "" for null
};

TEST_F(HttpServerTest, BadInputGetsOneEnvelopeNamingTheParameter) {
  const std::string long_prompt(600, 'a');  // 600 tokens (one per byte) > context 512
  const std::string huge_garbage(20000, 'x');
  std::vector<BadCase> cases = {
      {"/v1/completions", "{\"prompt\": \"hi\", ", 400, ""},  // malformed JSON
      {"/v1/completions", "[1, 2]", 400, ""},                 // not an object
      {"/v1/completions", "{\"prompt\": \"hi\", \"temperature\": \"hot\"}", 400, "temperature"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": \"5\"}", 400, "max_tokens"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"stream\": 1}", 400, "stream"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"stop\": [1]}", 400, "stop[0]"},
      {"/v1/completions", "{\"max_tokens\": 5}", 400, "prompt"},  // missing
      {"/v1/chat/completions", "{\"max_tokens\": 5}", 400, "messages"},
      {"/v1/chat/completions", "{\"messages\": [{\"content\": \"x\"}]}", 400, "messages[0].role"},
      {"/v1/chat/completions",
       "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", 400,
       "messages[0].content[0].type"},
      {"/v1/completions", "{\"prompt\": \"\"}", 400, "prompt"},  // empty
      {"/v1/completions", "{\"prompt\": []}", 400, "prompt"},
      {"/v1/chat/completions", "{\"messages\": []}", 400, "messages"},
      {"/v1/completions", "{\"prompt\": [5, 256]}", 400, "prompt"},  // outside the vocab
      {"/v1/completions", "{\"prompt\": [5, -1]}", 400, "prompt"},
      {"/generate", "{\"input_ids\": [1, 99999]}", 400, "input_ids"},
      {"/v1/completions", "{\"prompt\": \"\xff\xfe bad\"}", 400, ""},  // invalid UTF-8
      {"/v1/completions", "{\"prompt\": \"hi\", \"temperature\": NaN}", 400, ""},
      {"/v1/completions", "{\"prompt\": \"hi\", \"temperature\": 1e999}", 400, ""},
      {"/v1/completions", "{\"prompt\": \"hi\", \"temperature\": -0.5}", 400, "temperature"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"top_p\": 0}", 400, "top_p"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"top_k\": -2}", 400, "top_k"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"min_p\": 1.5}", 400, "min_p"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"presence_penalty\": 3}", 400, "presence_penalty"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"frequency_penalty\": -9}", 400,
       "frequency_penalty"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"repetition_penalty\": 0}", 400,
       "repetition_penalty"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"n\": 0}", 400, "n"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"logprobs\": 21}", 400, "logprobs"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"stop_token_ids\": [300]}", 400, "stop_token_ids"},
      {"/v1/completions", "{\"prompt\": \"" + long_prompt + "\"}", 400, "prompt"},
      {"/v1/completions", "{\"prompt\": \"hello\", \"max_tokens\": 510}", 400, "max_tokens"},
      {"/v1/chat/completions",
       "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 100000}", 400,
       "max_tokens"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"model\": \"gpt-4\"}", 404, "model"},
      {"/v1/completions", "{\"prompt\": \"hi\", \"echo\": true, \"logprobs\": 1}", 400, "echo"},
      {"/v1/completions", "{\"prompt\": {\"" + huge_garbage + "\": 1}}", 400, "prompt"},
      {"/v1/completions", "{\"prompt\": \"" + std::string(70000, 'b') + "\"}", 413, ""},
      {"/generate", "{\"text\": \"hi\", \"sampling_params\": {\"temperature\": \"x\"}}", 400,
       "sampling_params.temperature"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(std::string(c.path) + " " + c.body.substr(0, 120));
    auto r = post(c.path, c.body);
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, c.status) << r->body.substr(0, 300);
    json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body.substr(0, 300);
    const json& e = j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty());
    EXPECT_TRUE(e["type"].is_string());
    EXPECT_TRUE(e.contains("code"));
    if (c.param[0]) {
      EXPECT_EQ(e["param"], c.param) << r->body;
    } else {
      EXPECT_TRUE(e["param"].is_null()) << r->body;
    }
    // At most a little of the bad input comes back.
    EXPECT_LT(r->body.size(), 400u) << r->body.substr(0, 600);
  }
  // Still healthy afterwards.
  auto h = client().Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST_F(HttpServerTest, CompletionsChatAndGenerateAnswer) {
  auto r = post("/v1/completions",
                R"({"model": "tiny", "prompt": "hello", "max_tokens": 7, "ignore_eos": true,
                    "temperature": 0, "logprobs": 2, "n": 2})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 14);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);  // one token per byte, no BOS added
  for (const json& c : j["choices"]) {
    EXPECT_EQ(c["finish_reason"], "length");
    ASSERT_EQ(c["logprobs"]["tokens"].size(), 7u);
    ASSERT_EQ(c["logprobs"]["top_logprobs"][0].size(), 2u);
    for (const json& lp : c["logprobs"]["token_logprobs"]) EXPECT_LE(lp.get<double>(), 0.0);
  }
  // Greedy: both choices are the same.
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"], j["choices"][1]["logprobs"]["tokens"]);

  auto s = post("/v1/chat/completions",
                R"({"messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                    "max_tokens": 5, "ignore_eos": true, "stream": true, "logprobs": true,
                    "top_logprobs": 1, "stream_options": {"include_usage": true}})");
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200) << s->body;
  EXPECT_NE(s->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  std::vector<std::string> frames = sse_frames(s->body);
  ASSERT_GE(frames.size(), 4u);
  EXPECT_EQ(frames.back(), "[DONE]");
  json first = json::parse(frames[0]);
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  json usage = json::parse(frames[frames.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 5);
  json fin = json::parse(frames[frames.size() - 3]);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
  int n_logprobs = 0;
  for (size_t i = 1; i + 3 < frames.size(); ++i) {
    json c = json::parse(frames[i]);
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    n_logprobs += int(c["choices"][0]["logprobs"]["content"].size());
  }
  EXPECT_EQ(n_logprobs, 5);

  auto g = post("/generate", R"({"input_ids": [1, 2, 3], "sampling_params":
                                 {"max_new_tokens": 4, "ignore_eos": true, "temperature": 0}})");
  ASSERT_TRUE(g);
  ASSERT_EQ(g->status, 200) << g->body;
  json gj = json::parse(g->body);
  EXPECT_EQ(gj["meta_info"]["prompt_tokens"], 3);
  EXPECT_EQ(gj["meta_info"]["completion_tokens"], 4);
  EXPECT_EQ(gj["meta_info"]["finish_reason"]["type"], "length");
  EXPECT_EQ(gj["output_ids"].size(), 4u);
  // Greedy ids agree with the completions endpoint given the same ids.
  auto c2 = post("/v1/completions",
                 R"({"prompt": [1, 2, 3], "max_tokens": 4, "ignore_eos": true, "temperature": 0,
                     "logprobs": 0})");
  ASSERT_TRUE(c2);
  ASSERT_EQ(c2->status, 200);

  auto gs = post("/generate", R"({"text": "abc", "stream": true, "sampling_params":
                                  {"max_new_tokens": 3, "ignore_eos": true}})");
  ASSERT_TRUE(gs);
  std::vector<std::string> gf = sse_frames(gs->body);
  ASSERT_GE(gf.size(), 2u);
  EXPECT_EQ(gf.back(), "[DONE]");
  json last = json::parse(gf[gf.size() - 2]);
  EXPECT_EQ(last["meta_info"]["completion_tokens"], 3);
  EXPECT_EQ(last["meta_info"]["finish_reason"]["type"], "length");
}

TEST_F(HttpServerTest, SeedReproducesAndStopEndsText) {
  const std::string body =
      R"({"prompt": "seed test", "max_tokens": 12, "ignore_eos": true, "temperature": 1.0,
          "seed": 1234})";
  auto a = post("/v1/completions", body);
  auto b = post("/v1/completions", body);
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->status, 200);
  EXPECT_EQ(json::parse(a->body)["choices"][0]["text"], json::parse(b->body)["choices"][0]["text"]);
  // A stop string taken from a greedy answer ends the text before it.
  auto g = post("/v1/completions",
                R"({"prompt": [10, 20, 30], "max_tokens": 30, "ignore_eos": true,
                    "temperature": 0})");
  ASSERT_TRUE(g);
  const std::string text = json::parse(g->body)["choices"][0]["text"];
  // Find an ASCII letter/digit in the middle of the text to stop on.
  size_t at = std::string::npos;
  for (size_t i = 3; i < text.size(); ++i) {
    if (std::isalnum(static_cast<unsigned char>(text[i]))) {
      at = i;
      break;
    }
  }
  if (at == std::string::npos) GTEST_SKIP() << "no ASCII character in the greedy text";
  const std::string stop = text.substr(at, 1);
  auto s = post("/v1/completions", json({{"prompt", {10, 20, 30}},
                                         {"max_tokens", 30},
                                         {"ignore_eos", true},
                                         {"temperature", 0},
                                         {"stop", stop}})
                                       .dump());
  ASSERT_TRUE(s);
  json sj = json::parse(s->body);
  EXPECT_EQ(sj["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(sj["choices"][0]["stop_reason"], stop);
  EXPECT_EQ(sj["choices"][0]["text"], text.substr(0, text.find(stop)));
}

TEST_F(HttpServerTest, DisconnectCancelsAndFreesKvWithinASecond) {
  const double aborted_before =
      metric(metrics_text(), "pp_requests_finished_total{reason=\"abort\"}");
  std::atomic<int> chunks{0};
  std::chrono::steady_clock::time_point disconnected;
  std::thread t([&] {
    httplib::Client c("127.0.0.1", server_->port());
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = auth();
    req.body = R"({"prompt": "go", "max_tokens": 500, "ignore_eos": true, "stream": true})";
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      if (++chunks >= 3) {
        disconnected = std::chrono::steady_clock::now();
        return false;  // the client goes away mid-stream
      }
      return true;
    };
    httplib::Response res;
    httplib::Error err;
    c.send(req, res, err);
  });
  t.join();
  ASSERT_GE(chunks.load(), 3);
  bool freed = false;
  while (std::chrono::steady_clock::now() - disconnected < 1s) {
    const std::string m = metrics_text();
    if (metric(m, "pp_kv_blocks_used") == 0 && metric(m, "pp_requests_running") == 0) {
      freed = true;
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(freed) << metrics_text();
  const std::string m = metrics_text();
  EXPECT_EQ(metric(m, "pp_requests_finished_total{reason=\"abort\"}"), aborted_before + 1) << m;
  EXPECT_EQ(metric(m, "pp_requests_live"), 0);
  // The server goes on serving.
  auto r = post("/v1/completions", R"({"prompt": "x", "max_tokens": 2})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, MetricsHaveTheFamilies) {
  ASSERT_TRUE(post("/v1/completions", R"({"prompt": "m", "max_tokens": 3, "ignore_eos": true})"));
  const std::string m = metrics_text();
  for (const char* name :
       {"pp_requests_running", "pp_requests_waiting", "pp_kv_cache_usage_ratio",
        "pp_preemptions_total", "pp_requests_finished_total{reason=\"length\"}",
        "pp_time_to_first_token_seconds_count", "pp_inter_token_latency_seconds_count",
        "pp_e2e_request_latency_seconds_count", "pp_stage_busy_seconds_total{stage=\"0\"}",
        "pp_stage_idle_seconds_total{stage=\"1\"}"}) {
    EXPECT_GE(metric(m, name), 0) << name << "\n" << m;
  }
  EXPECT_GE(metric(m, "pp_time_to_first_token_seconds_count"), 1);
  EXPECT_GE(metric(m, "pp_request_queue_time_seconds_count"), 1);
  EXPECT_GT(metric(m, "pp_stage_busy_seconds_total{stage=\"1\"}"), 0);
  EXPECT_NE(m.find("# TYPE pp_e2e_request_latency_seconds histogram"), std::string::npos);
  EXPECT_NE(m.find("pp_e2e_request_latency_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
}

// Prefix caching through the API: a repeated prompt reports its cached tokens (OpenAI usage and
// SGLang meta_info), /metrics counts hits and cached blocks, /flush_cache is refused (409) while a
// request runs and empties the cache otherwise.
TEST_F(HttpServerTest, PrefixCacheReportsCachedTokensAndFlushes) {
  // 60 random letters: 60 tokens (one per byte), 3 full blocks of 16 cacheable.
  std::string text;
  for (int i = 0; i < 60; ++i) text += char('a' + rng()() % 26);
  const std::string body = json{{"prompt", text}, {"max_tokens", 2}, {"ignore_eos", true}}.dump();
  auto first = post("/v1/completions", body);
  ASSERT_TRUE(first);
  ASSERT_EQ(first->status, 200) << first->body;
  EXPECT_EQ(json::parse(first->body)["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  auto again = post("/v1/completions", body);
  ASSERT_TRUE(again);
  ASSERT_EQ(again->status, 200) << again->body;
  EXPECT_EQ(json::parse(again->body)["usage"]["prompt_tokens_details"]["cached_tokens"], 48);
  auto gen =
      post("/generate", json{{"text", text}, {"sampling_params", {{"max_new_tokens", 2}}}}.dump());
  ASSERT_TRUE(gen);
  ASSERT_EQ(gen->status, 200) << gen->body;
  EXPECT_EQ(json::parse(gen->body)["meta_info"]["cached_tokens"], 48);
  std::string m = metrics_text();
  EXPECT_GT(metric(m, "pp_prefix_cache_hit_ratio"), 0) << m;
  EXPECT_GE(metric(m, "pp_prefix_cache_hit_tokens_total"), 96) << m;
  EXPECT_GE(metric(m, "pp_kv_blocks_cached"), 3) << m;
  EXPECT_EQ(metric(m, "pp_kv_blocks_cached_unreferenced"), metric(m, "pp_kv_blocks_cached"));

  // A long request runs: the flush is refused.
  std::thread runner([&] {
    auto r =
        post("/v1/completions", R"({"prompt": "long", "max_tokens": 400, "ignore_eos": true})");
    EXPECT_TRUE(r && r->status == 200);
  });
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (metric(metrics_text(), "pp_requests_running") < 1 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  auto refused = client().Post("/flush_cache", auth(), "", "text/plain");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 409) << refused->body;
  runner.join();
  EXPECT_GE(metric(metrics_text(), "pp_kv_blocks_cached"), 3);
  auto flushed = client().Post("/flush_cache", auth(), "", "text/plain");
  ASSERT_TRUE(flushed);
  EXPECT_EQ(flushed->status, 200) << flushed->body;
  m = metrics_text();
  EXPECT_EQ(metric(m, "pp_kv_blocks_cached"), 0) << m;
  EXPECT_EQ(metric(m, "pp_kv_blocks_used"), 0) << m;
  auto after = post("/v1/completions", body);
  ASSERT_TRUE(after);
  EXPECT_EQ(json::parse(after->body)["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

// A server of its own: tiny queue limits, a stage to kill, SIGTERM.
class HttpServerLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = make_tiny_chat_model(dir_.path() / "tiny-chat"); }
  bool start(std::vector<std::string> extra) {
    std::vector<std::string> args = {"--model",
                                     model_.string(),
                                     "--pp",
                                     "2",
                                     "--threads-per-stage",
                                     "1",
                                     "--db",
                                     (dir_.path() / "runs.db").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return server_.start(args, dir_.path() / "serve.log");
  }
  // A streaming completion on a thread of its own; its body lands in *body.
  std::thread stream(const std::string& request, std::string* body, int* status) {
    return std::thread([this, request, body, status] {
      httplib::Client c("127.0.0.1", server_.port());
      c.set_read_timeout(60, 0);
      auto r = c.Post("/v1/completions", request, "application/json");
      *status = r ? r->status : -1;
      if (r) *body = r->body;
    });
  }
  double live() {
    httplib::Client c("127.0.0.1", server_.port());
    auto r = c.Get("/metrics");
    return r ? metric(r->body, "pp_requests_live") : -1;
  }
  bool wait_live(double n) {
    for (int i = 0; i < 500; ++i) {
      if (live() == n) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  TempDir dir_;
  std::filesystem::path model_;
  ServeProcess server_;
};

TEST_F(HttpServerLifecycleTest, FullQueueAnswers503WithRetryAfterAtOnce) {
  ASSERT_TRUE(start({"--max-running-requests", "1", "--max-queued-requests", "1"}));
  const std::string long_req =
      R"({"prompt": "q", "max_tokens": 480, "ignore_eos": true, "stream": true})";
  std::string b1, b2;
  int s1 = 0, s2 = 0;
  std::thread t1 = stream(long_req, &b1, &s1);
  std::thread t2 = stream(long_req, &b2, &s2);
  ASSERT_TRUE(wait_live(2));
  httplib::Client c("127.0.0.1", server_.port());
  const auto t0 = std::chrono::steady_clock::now();
  auto r = c.Post("/v1/completions", R"({"prompt": "q", "max_tokens": 4})", "application/json");
  const auto dt = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "service_unavailable");
  EXPECT_LT(dt, 500ms);
  t1.join();
  t2.join();
  EXPECT_EQ(s1, 200);
  EXPECT_EQ(s2, 200);
  EXPECT_EQ(sse_frames(b2).back(), "[DONE]");
  // Room again.
  auto again = c.Post("/v1/completions", R"({"prompt": "q", "max_tokens": 4})", "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(server_.terminate(), 0);
}

TEST_F(HttpServerLifecycleTest, SigtermDrainsThenStopsEverything) {
  ASSERT_TRUE(start({"--shutdown-timeout", "30"}));
  std::string body;
  int status = 0;
  std::thread t = stream(R"({"prompt": "drain", "max_tokens": 400, "ignore_eos": true,
                             "stream": true})",
                         &body, &status);
  ASSERT_TRUE(wait_live(1));
  ::kill(server_.pid(), SIGTERM);
  // New requests are refused while the running one finishes.
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    httplib::Client c("127.0.0.1", server_.port());
    auto r =
        c.Post("/v1/completions", R"({"prompt": "late", "max_tokens": 2})", "application/json");
    if (!r) break;  // already closed: the drain finished
    refused = r->status == 503;
    std::this_thread::sleep_for(5ms);
  }
  t.join();
  EXPECT_EQ(status, 200);
  std::vector<std::string> frames = sse_frames(body);
  ASSERT_GE(frames.size(), 2u);
  EXPECT_EQ(frames.back(), "[DONE]");
  EXPECT_EQ(json::parse(frames[frames.size() - 2])["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(refused);
  EXPECT_EQ(server_.wait(30s), 0) << server_.log_text();
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(server_.group_alive()) << "a stage process was left behind";
}

TEST_F(HttpServerLifecycleTest, ShutdownTimeoutCancelsWhatIsLeft) {
  ASSERT_TRUE(start({"--shutdown-timeout", "0.3"}));
  std::string body;
  int status = 0;
  std::thread t = stream(R"({"prompt": "slow", "max_tokens": 500, "ignore_eos": true,
                             "stream": true, "n": 8})",
                         &body, &status);
  ASSERT_TRUE(wait_live(8));
  const auto t0 = std::chrono::steady_clock::now();
  ::kill(server_.pid(), SIGTERM);
  EXPECT_EQ(server_.wait(30s), 0) << server_.log_text();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  t.join();
  // The stream ended cleanly: every choice finished (abort, unless it made it), then [DONE].
  std::vector<std::string> frames = sse_frames(body);
  if (status == 200) {
    ASSERT_FALSE(frames.empty());
    EXPECT_EQ(frames.back(), "[DONE]");
  }
  EXPECT_FALSE(server_.group_alive());
}

TEST_F(HttpServerLifecycleTest, LostStageGivesErrorFrameThenDoneAndHealth503) {
  // No restart allowed: the engine fails (test-serve-faults.cpp: a restarted stage).
  ASSERT_TRUE(start({"--stage-restarts", "0"}));
  std::string body;
  int status = 0;
  std::thread t = stream(R"({"prompt": "die", "max_tokens": 500, "ignore_eos": true,
                             "stream": true})",
                         &body, &status);
  ASSERT_TRUE(wait_live(1));
  // Kill stage 1 (a child of pp-serve).
  FILE* p = ::popen(("pgrep -P " + std::to_string(server_.pid())).c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::vector<int> kids;
  int pid = 0;
  while (std::fscanf(p, "%d", &pid) == 1) kids.push_back(pid);
  ::pclose(p);
  ASSERT_FALSE(kids.empty());
  ::kill(kids.back(), SIGKILL);
  t.join();
  EXPECT_EQ(status, 200);
  std::vector<std::string> frames = sse_frames(body);
  ASSERT_GE(frames.size(), 2u);
  EXPECT_EQ(frames.back(), "[DONE]");
  json err = json::parse(frames[frames.size() - 2]);
  ASSERT_TRUE(err.contains("error")) << frames[frames.size() - 2];
  EXPECT_TRUE(err["error"]["message"].is_string());
  ASSERT_GE(frames.size(), 3u);
  json last = json::parse(frames[frames.size() - 3]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "abort") << frames[frames.size() - 3];
  httplib::Client c("127.0.0.1", server_.port());
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);
  auto r = c.Post("/v1/completions", R"({"prompt": "x"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(server_.terminate(), 1);  // it reports the engine's failure
  EXPECT_FALSE(server_.group_alive());
}

// The options that `--help` lists and those the man page documents.
std::set<std::string> options_in(const std::string& text, const std::string& prefix) {
  std::set<std::string> out;
  const std::regex re(prefix + "([a-z][a-z0-9-]+)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it) {
    out.insert((*it)[1].str());
  }
  return out;
}

std::string run_capture(const std::string& cmd) {
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while (p && (n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  if (p) ::pclose(p);
  return out;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(HttpManPages, HelpAndManPageNameTheSameOptions) {
  for (const char* tool : {"pp-serve", "pp-stage"}) {
    SCOPED_TRACE(tool);
    const auto bin = std::filesystem::path(PP_BUILD_DIR) / "tools" / tool;
    const std::string help = run_capture(bin.string() + " --help 2>&1");
    const std::filesystem::path man = source_dir() / "man" / (std::string(tool) + ".1");
    ASSERT_TRUE(std::filesystem::exists(man)) << man;
    std::set<std::string> in_help = options_in(help, "--");
    // The OPTIONS section (the rest may mention other tools' options); '-' is written '\-'.
    std::string man_text = read_text(man);
    const size_t begin = man_text.find(".SH OPTIONS");
    ASSERT_NE(begin, std::string::npos);
    const size_t end = man_text.find("\n.SH ", begin + 1);
    man_text = man_text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    for (size_t at; (at = man_text.find("\\-")) != std::string::npos;) man_text.erase(at, 1);
    std::set<std::string> in_man = options_in(man_text, "--");
    ASSERT_FALSE(in_help.empty());
    for (const std::string& o : in_help) EXPECT_TRUE(in_man.count(o)) << "--" << o << " not in man";
    for (const std::string& o : in_man)
      EXPECT_TRUE(in_help.count(o)) << "--" << o << " not in help";
  }
}

}  // namespace
}  // namespace pp::test
