// Overload through pp-serve's HTTP API, on the tiny chat model with a KV pool of 4 blocks (64
// tokens) behind a context of 512: requests that can never fit the pool (prompt + max_tokens,
// the prompt alone, more choices than the server holds) get a 400 in OpenAI's envelope at once
// instead of waiting forever; requests without max_tokens are limited to what the pool leaves;
// and requests that each fit the pool alone but not together (concurrent ones, or n choices of
// one request) all complete, after which every KV block is free.
#include <httplib.h>

#include <atomic>
#include <thread>

#include "test-http-util.h"

namespace pp::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr int64_t kPoolTokens = 4 * 16;  // --kv-blocks 4, blocks of 16 tokens

double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

// One letter per token with the byte-level tokenizer.
std::string random_text(size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += char('a' + rng()() % 26);
  return s;
}

class HttpOverloadTest : public SharedServerTest<HttpOverloadTest> {
 protected:
  static void SetUpTestSuite() {
    make_model();
    start_server({"--model", model_.string(), "--pp", "2", "--threads-per-stage", "1",
                  "--kv-blocks", "4", "--max-running-requests", "4", "--max-queued-requests", "8",
                  "--db", (dir_->path() / "runs.db").string()});
  }
  static httplib::Result post(const std::string& path, const json& body) {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(120, 0);
    return c.Post(path.c_str(), body.dump(), "application/json");
  }
  static std::string metrics_text() {
    httplib::Client c("127.0.0.1", server_->port());
    auto r = c.Get("/metrics");
    return r ? r->body : "";
  }
  // Waits until the engine holds nothing; false after 10 s.
  static bool wait_all_free() {
    for (int i = 0; i < 1000; ++i) {
      const std::string m = metrics_text();
      if (metric(m, "pp_kv_blocks_used") == 0 && metric(m, "pp_requests_live") == 0) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  // The 400 of a request that can never fit, naming `param`, at once: within 2 s. A request that
  // was queued instead would never be answered (it can never fit), so any bound tells the two
  // apart; 2 s rather than less leaves room for a 2-core CI machine running other tests (a
  // refusal took 0.58 s there once while the soak test ran).
  static void expect_never_fits(const std::string& path, const json& body,
                                const std::string& param) {
    SCOPED_TRACE(path + " " + body.dump().substr(0, 160));
    const auto t0 = std::chrono::steady_clock::now();
    httplib::Result r = post(path, body);
    const auto dt = std::chrono::steady_clock::now() - t0;
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 400) << r->body;
    EXPECT_LT(dt, 2000ms) << "refused at once, not after waiting";
    const json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_EQ(j["error"]["param"], param) << r->body;
    if (param != "n") {
      EXPECT_EQ(j["error"]["code"], "context_length_exceeded") << r->body;
      EXPECT_NE(j["error"]["message"].get<std::string>().find("KV pool"), std::string::npos)
          << r->body;
    }
  }
};

TEST_F(HttpOverloadTest, RequestsThatCanNeverFitAre400AtOnce) {
  // prompt + max_tokens - 1 > 64 tokens of KV, though well inside the 512-token context.
  const size_t n = size_t(1 + rng()() % 40);
  expect_never_fits("/v1/completions",
                    {{"prompt", random_text(n)}, {"max_tokens", int64_t(kPoolTokens) - n + 2}},
                    "max_tokens");
  expect_never_fits(
      "/v1/chat/completions",
      {{"messages", {{{"role", "user"}, {"content", random_text(n)}}}}, {"max_tokens", 200}},
      "max_tokens");
  expect_never_fits("/generate",
                    {{"text", random_text(n)}, {"sampling_params", {{"max_new_tokens", 300}}}},
                    "sampling_params.max_new_tokens");
  // The prompt alone is larger than the pool, whatever max_tokens.
  const std::string long_prompt = random_text(size_t(kPoolTokens) + 1 + rng()() % 100);
  expect_never_fits("/v1/completions", {{"prompt", long_prompt}, {"max_tokens", 1}}, "prompt");
  expect_never_fits("/v1/completions", {{"prompt", long_prompt}}, "prompt");
  expect_never_fits("/v1/chat/completions",
                    {{"messages", {{{"role", "user"}, {"content", long_prompt}}}}}, "messages");
  // With n > 1 too: the first choice is refused, none is left running.
  expect_never_fits("/v1/completions", {{"prompt", random_text(n)}, {"n", 3}, {"max_tokens", 100}},
                    "max_tokens");
  // More choices than the server ever holds (4 running + 8 queued): 400, not a 503 to retry.
  expect_never_fits("/v1/completions", {{"prompt", "hi"}, {"n", 13}, {"max_tokens", 2}}, "n");
  EXPECT_TRUE(wait_all_free());
  const std::string m = metrics_text();
  EXPECT_GE(metric(m, "pp_requests_rejected_total{reason=\"never_fits\"}"), 7) << m;
  httplib::Client c("127.0.0.1", server_->port());
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST_F(HttpOverloadTest, WithoutMaxTokensTheLimitIsWhatThePoolLeaves) {
  // Chat without max_tokens means "until the context is full"; the pool is smaller, so it
  // runs until the pool is full instead of being refused.
  const std::string text = random_text(size_t(5 + rng()() % 20));
  auto r = post("/v1/chat/completions",
                {{"messages", {{{"role", "user"}, {"content", text}}}}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  const int64_t np = j["usage"]["prompt_tokens"], nc = j["usage"]["completion_tokens"];
  EXPECT_EQ(np + nc - 1, kPoolTokens) << r->body;  // the last token needs no KV
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  // A completion's default max_tokens (16) shrinks when prompt + 16 would not fit.
  const size_t n = size_t(kPoolTokens) - 3;
  r = post("/v1/completions", {{"prompt", random_text(n)}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  j = json::parse(r->body);
  EXPECT_EQ(int64_t(j["usage"]["prompt_tokens"]) + int64_t(j["usage"]["completion_tokens"]) - 1,
            kPoolTokens)
      << r->body;
  EXPECT_TRUE(wait_all_free());
}

TEST_F(HttpOverloadTest, ManyThatFitAloneButNotTogetherAllComplete) {
  // Each needs 33..64 tokens of KV, so no two fit the 64-token pool at once: they queue (and
  // are preempted and recomputed) but every one completes with all its tokens.
  constexpr int kClients = 8;
  std::vector<std::thread> threads;
  std::vector<int> status(kClients, 0);
  std::vector<int64_t> want(kClients), got(kClients, -1);
  std::atomic<int> n_ok{0};
  for (int i = 0; i < kClients; ++i) {
    const size_t n = size_t(2 + rng()() % 20);
    want[size_t(i)] = int64_t(33 + rng()() % 32) - int64_t(n) + 1;
    const json body = {{"prompt", random_text(n)},
                       {"max_tokens", want[size_t(i)]},
                       {"ignore_eos", true},
                       {"stream", i % 2 == 0},
                       {"stream_options", {{"include_usage", true}}}};
    threads.emplace_back([&, i, body] {
      httplib::Result r = post("/v1/completions", body);
      status[size_t(i)] = r ? r->status : -1;
      if (!r || r->status != 200) return;
      if (!body["stream"].get<bool>()) {
        got[size_t(i)] = json::parse(r->body)["usage"]["completion_tokens"];
      } else {
        // The usage chunk comes last, just before [DONE].
        const size_t at = r->body.rfind("\"completion_tokens\":");
        const bool done = r->body.find("data: [DONE]") != std::string::npos;
        if (done && at != std::string::npos) {
          got[size_t(i)] = std::stoll(r->body.substr(at + 20));
        }
      }
      n_ok.fetch_add(1);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(status[size_t(i)], 200) << "client " << i;
    EXPECT_EQ(got[size_t(i)], want[size_t(i)]) << "client " << i;
  }
  // n = 3 choices that do not fit together either.
  const size_t n = size_t(2 + rng()() % 10);
  auto r = post("/v1/completions",
                {{"prompt", random_text(n)}, {"n", 3}, {"max_tokens", 40}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 3u);
  for (const json& c : j["choices"]) EXPECT_EQ(c["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 120);
  EXPECT_TRUE(wait_all_free());
  EXPECT_GT(metric(metrics_text(), "pp_preemptions_total"), 0);
}

}  // namespace
}  // namespace pp::test
