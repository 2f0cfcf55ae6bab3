// pp-bench's protocol pieces: Server-Sent Events split at any byte boundary, the chunks of the
// three backends (text, cumulative token counts, errors), request bodies, base URLs, arrival
// schedules and the progress bar.
#include <gtest/gtest.h>

#include <cmath>

#include "pp/bench/http-client.h"
#include "pp/bench/progress.h"
#include "pp/bench/serve-bench.h"
#include "test-util.h"

namespace pp::bench {
namespace {

TEST(BenchSse, AnySplitGivesTheSamePayloads) {
  const std::string stream =
      ": keep-alive comment\r\n"
      "data: {\"a\":1}\n\n"
      "event: message\n"
      "data:{\"b\":\"x y\"}\r\n\r\n"
      "data: {\"c\":[1,2]}\n\n"
      "data: [DONE]";  // no newline at the end
  const std::vector<std::string> want = {"{\"a\":1}", "{\"b\":\"x y\"}", "{\"c\":[1,2]}", "[DONE]"};
  auto& g = test::rng();
  for (int trial = 0; trial < 50; ++trial) {
    SseParser p;
    std::vector<std::string> got;
    size_t pos = 0;
    while (pos < stream.size()) {
      const size_t n = std::uniform_int_distribution<size_t>(1, 9)(g);
      for (auto& s : p.feed(std::string_view(stream).substr(pos, n))) got.push_back(s);
      pos += n;
    }
    for (auto& s : p.finish()) got.push_back(s);
    ASSERT_EQ(got, want) << "seed " << test::rng_seed();
  }
}

TEST(BenchChunks, ParsesEachBackend) {
  auto c = parse_chunk(Backend::kOpenAI,
                       R"({"choices":[{"text":"he","index":0}],"usage":{"completion_tokens":3}})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, "he");
  EXPECT_TRUE(c->has_content);
  EXPECT_EQ(c->completion_tokens, 3);

  c = parse_chunk(Backend::kOpenAI, R"({"choices":[],"usage":{"completion_tokens":17}})");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->has_content);
  EXPECT_EQ(c->completion_tokens, 17);

  c = parse_chunk(Backend::kOpenAIChat, R"({"choices":[{"delta":{"role":"assistant"}}]})");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->has_content);
  c = parse_chunk(Backend::kOpenAIChat, R"({"choices":[{"delta":{"content":"hi"}}],"usage":null})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, "hi");
  EXPECT_FALSE(c->completion_tokens.has_value());
  c = parse_chunk(
      Backend::kOpenAIChat,
      R"({"choices":[{"message":{"content":"whole"}}],"usage":{"completion_tokens":2}})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, "whole");

  c = parse_chunk(Backend::kSglang, R"({"text":"so far","meta_info":{"completion_tokens":4}})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->text, "so far");
  EXPECT_EQ(c->completion_tokens, 4);

  c = parse_chunk(Backend::kOpenAI, "[DONE]");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->done);

  c = parse_chunk(Backend::kOpenAI, R"({"error":{"message":"context too long"}})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->error, "context too long");
  c = parse_chunk(Backend::kOpenAI, R"({"object":"error","message":"bad"})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->error, "bad");

  EXPECT_EQ(parse_chunk(Backend::kSglang, "{not json").status().code(), StatusCode::kDataLoss);
}

TEST(BenchRequests, BodiesFollowEachApi) {
  BenchRequest r;
  r.prompt_ids = {5, 6, 7};
  r.prompt_text = "five six seven";
  r.prompt_len = 3;
  r.output_len = 11;
  RequestOptions o;
  o.model = "m";
  o.ignore_eos = true;
  auto b = request_body(r, o);
  EXPECT_EQ(b["prompt"], nlohmann::json({5, 6, 7}));
  EXPECT_EQ(b["max_tokens"], 11);
  EXPECT_EQ(b["temperature"], 0.0);
  EXPECT_EQ(b["stream"], true);
  EXPECT_EQ(b["ignore_eos"], true);
  EXPECT_EQ(b["model"], "m");
  EXPECT_EQ(b["stream_options"]["include_usage"], true);
  o.send_text = true;
  EXPECT_EQ(request_body(r, o)["prompt"], "five six seven");

  o.backend = Backend::kOpenAIChat;
  b = request_body(r, o);
  EXPECT_EQ(b["messages"][0]["content"], "five six seven");
  EXPECT_EQ(b["messages"][0]["role"], "user");

  o.backend = Backend::kSglang;
  o.send_text = false;
  o.stream = false;
  o.extra_body = {{"lora_path", "x"}};
  b = request_body(r, o);
  EXPECT_EQ(b["input_ids"], nlohmann::json({5, 6, 7}));
  EXPECT_FALSE(b.contains("text"));
  EXPECT_EQ(b["sampling_params"]["max_new_tokens"], 11);
  EXPECT_EQ(b["sampling_params"]["ignore_eos"], true);
  EXPECT_EQ(b["stream"], false);
  EXPECT_EQ(b["lora_path"], "x");
}

TEST(BenchRequests, BaseUrls) {
  auto u = parse_base_url("http://127.0.0.1:30000");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->scheme_host_port, "http://127.0.0.1:30000");
  EXPECT_EQ(u->path_prefix, "");
  u = parse_base_url("http://h:1/api/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->scheme_host_port, "http://h:1");
  EXPECT_EQ(u->path_prefix, "/api");
  EXPECT_FALSE(parse_base_url("https://h").ok());
  EXPECT_FALSE(parse_base_url("h:1").ok());
  EXPECT_FALSE(parse_base_url("http://").ok());
  EXPECT_EQ(parse_backend("sglang"), Backend::kSglang);
  // SGLang's bench_serving names for the same protocols.
  EXPECT_EQ(parse_backend("sglang-native"), Backend::kSglang);
  EXPECT_EQ(parse_backend("sglang-oai"), Backend::kOpenAI);
  EXPECT_EQ(parse_backend("vllm"), Backend::kOpenAI);
  EXPECT_EQ(parse_backend("sglang-oai-chat"), Backend::kOpenAIChat);
  EXPECT_EQ(parse_backend("vllm-chat"), Backend::kOpenAIChat);
  EXPECT_FALSE(parse_backend("trt").has_value());
  EXPECT_STREQ(backend_path(Backend::kOpenAIChat), "/v1/chat/completions");
}

TEST(BenchTraffic, PoissonArrivalsHaveTheAskedRate) {
  auto& g = test::rng();
  const double rate = std::uniform_real_distribution<double>(0.5, 200)(g);
  const uint64_t seed = g();
  auto t = arrival_times(4000, rate, seed);
  ASSERT_EQ(t.size(), 4000u);
  EXPECT_EQ(t[0], 0.0);
  for (size_t i = 1; i < t.size(); ++i) ASSERT_GE(t[i], t[i - 1]);
  // 3999 exponential gaps of mean 1/rate: their mean is within a few standard errors.
  const double mean_gap = t.back() / 3999.0;
  EXPECT_NEAR(mean_gap * rate, 1.0, 5.0 / std::sqrt(3999.0));
  EXPECT_EQ(arrival_times(4000, rate, seed), t);  // the seed fixes the schedule
  for (double x : arrival_times(10, INFINITY, seed)) EXPECT_EQ(x, 0.0);

  EXPECT_EQ(*n_slots(5000, 0), kMaxInFlight);
  EXPECT_EQ(*n_slots(5, 0), 5);
  EXPECT_EQ(*n_slots(100, 8), 8);
  EXPECT_FALSE(n_slots(10, kMaxInFlight + 1).ok());
  EXPECT_FALSE(n_slots(10, -1).ok());
}

TEST(BenchProgress, Renders) {
  const std::string s = render_progress(25, 100, 5.0, 20);
  EXPECT_NE(s.find(" 25/100 [#####...............]  25%"), std::string::npos) << s;
  EXPECT_NE(s.find("eta 15.0 s"), std::string::npos) << s;
  EXPECT_EQ(render_progress(100, 100, 5.0, 4).find("eta"), std::string::npos);
}

}  // namespace
}  // namespace pp::bench
