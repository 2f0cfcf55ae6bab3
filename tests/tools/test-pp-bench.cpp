// End-to-end tests of pp-bench through the binary. A fake OpenAI / SGLang server in this process
// (cpp-httplib) answers with known delays: the first chunk after `ttft`, then one token every
// `token` ms, several tokens per chunk, with known token counts. pp-bench serve must report
// TTFT, ITL, TPOT and throughput within a few percent of that truth, honour --max-concurrency,
// count failures, write the JSON line and the run store; history and compare read the store
// (regressions flagged); timeline draws a synthetic trace; offline drives the engine on the tiny
// model; --help and the man page name the same options.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include <httplib.h>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "test-util.h"

namespace pp {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

fs::path tool() { return fs::path(PP_BUILD_DIR) / "tools" / "pp-bench"; }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct ToolRun {
  int rc = -1;
  std::string out, err;
};

ToolRun run(const std::string& args) {
  static test::TempDir io;
  fs::path out = io.path() / "out", err = io.path() / "err";
  std::string cmd = quote(tool().string()) + " " + args + " >" + quote(out.string()) + " 2>" +
                    quote(err.string());
  int st = std::system(("/bin/sh -c " + quote(cmd)).c_str());
  ToolRun r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// A number from the result table: the value after "Name:".
double table_value(const std::string& out, const std::string& name) {
  const size_t p = out.find(name + ":");
  if (p == std::string::npos) return NAN;
  return std::strtod(out.c_str() + p + name.size() + 1, nullptr);
}

// The fake server. Token j of a response (0-based) is sent at ttft + max(0, j + 1 - k0) * token,
// k0 being the first chunk's size: every chunk leaves when its last token is due.
struct FakeServer {
  struct Config {
    int ttft_ms = 100;
    int token_ms = 10;
    int tokens_per_chunk = 3;
    bool usage_every_chunk = true;  // honour continuous_usage_stats
    int fail_every = 0;             // request numbers n with n % fail_every == 1 answer HTTP 500
    std::string tokenizer_path;     // GET /get_model_info names it when not empty
  };

  explicit FakeServer(Config c) : cfg(c) {
    svr.new_task_queue = [] { return new httplib::ThreadPool(64); };
    svr.set_tcp_nodelay(true);  // each SSE chunk leaves when written
    svr.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"object":"list","data":[{"id":"fake-model","object":"model"}]})",
                      "application/json");
    });
    if (!cfg.tokenizer_path.empty()) {
      svr.Get("/get_model_info", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(json{{"model_path", "/m"}, {"tokenizer_path", cfg.tokenizer_path}}.dump(),
                        "application/json");
      });
    }
    for (const char* path : {"/v1/completions", "/v1/chat/completions", "/generate"}) {
      const std::string p = path;
      svr.Post(path, [this, p](const httplib::Request& req, httplib::Response& res) {
        handle(p, req, res);
      });
    }
    port = svr.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { svr.listen_after_bind(); });
    while (!svr.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeServer() {
    svr.stop();
    thread.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }

  void handle(const std::string& path, const httplib::Request& req, httplib::Response& res) {
    const auto start = Clock::now();
    const int number = n_requests++;
    const json body = json::parse(req.body);
    if (cfg.fail_every > 0 && number % cfg.fail_every == 1) {
      res.status = 500;
      res.set_content(R"({"error":{"message":"injected failure"}})", "application/json");
      return;
    }
    const bool sglang = path == "/generate";
    const bool chat = path == "/v1/chat/completions";
    const int n = sglang ? body["sampling_params"]["max_new_tokens"].get<int>()
                         : body["max_tokens"].get<int>();
    int n_prompt = 7;
    if (sglang && body.contains("input_ids")) n_prompt = int(body["input_ids"].size());
    if (!sglang && body.contains("prompt") && body["prompt"].is_array()) {
      n_prompt = int(body["prompt"].size());
    }
    prompt_tokens_seen += n_prompt;
    if ((sglang && body.contains("text")) ||
        (!chat && body.contains("prompt") && body["prompt"].is_string())) {
      ++text_prompts;
    }
    const json& sampling = sglang ? body["sampling_params"] : body;
    if (sampling.value("ignore_eos", false)) ++ignore_eos_seen;
    const bool stream = body.value("stream", false);
    const size_t slot = begin_timing(number, start);
    const bool per_chunk_usage = cfg.usage_every_chunk && body.contains("stream_options") &&
                                 body["stream_options"].value("continuous_usage_stats", false);
    const int now_in = ++in_flight;
    int seen = max_in_flight.load();
    while (now_in > seen && !max_in_flight.compare_exchange_weak(seen, now_in)) {
    }
    const auto ttft = std::chrono::milliseconds(cfg.ttft_ms);
    const auto tok = std::chrono::milliseconds(cfg.token_ms);
    const int kpc = cfg.tokens_per_chunk;
    const int k0 = std::min(kpc, n);
    if (!stream) {
      std::this_thread::sleep_until(start + ttft + (n - k0) * tok);
      std::string text;
      for (int i = 0; i < n; ++i) text += "ab ";
      json out;
      if (sglang) {
        out = {{"text", text}, {"meta_info", {{"completion_tokens", n}}}};
      } else if (chat) {
        out = {
            {"choices", {{{"index", 0}, {"message", {{"role", "assistant"}, {"content", text}}}}}},
            {"usage", {{"prompt_tokens", n_prompt}, {"completion_tokens", n}}}};
      } else {
        out = {{"choices", {{{"index", 0}, {"text", text}}}},
               {"usage", {{"prompt_tokens", n_prompt}, {"completion_tokens", n}}}};
      }
      record_chunk(slot, n);
      --in_flight;
      res.set_content(out.dump(), "application/json");
      return;
    }
    res.set_chunked_content_provider(
        "text/event-stream", [=, this](size_t, httplib::DataSink& sink) {
          auto send = [&](const json& j) {
            const std::string s = "data: " + j.dump() + "\n\n";
            sink.write(s.data(), s.size());
          };
          std::string all;
          int sent = 0;
          while (sent < n) {
            const int k = std::min(kpc, n - sent);
            std::this_thread::sleep_until(start + ttft + (sent + k - k0) * tok);
            std::string text;
            for (int i = 0; i < k; ++i) text += "ab ";
            all += text;
            sent += k;
            json j;
            if (sglang) {
              j = {{"text", all}, {"meta_info", {{"completion_tokens", sent}}}};
            } else if (chat) {
              j = {{"choices", {{{"index", 0}, {"delta", {{"content", text}}}}}}};
            } else {
              j = {{"choices", {{{"index", 0}, {"text", text}}}}};
            }
            if (!sglang && per_chunk_usage) {
              j["usage"] = {{"prompt_tokens", n_prompt}, {"completion_tokens", sent}};
            }
            send(j);
            record_chunk(slot, k);
          }
          if (!sglang) {
            send({{"choices", json::array()},
                  {"usage", {{"prompt_tokens", n_prompt}, {"completion_tokens", n}}}});
          }
          const std::string done = "data: [DONE]\n\n";
          sink.write(done.data(), done.size());
          --in_flight;
          sink.done();
          return true;
        });
  }

  // What the server really did (its sleeps oversleep on a busy machine): per request, when it
  // arrived and when each chunk was written with how many tokens, on the steady clock.
  struct Timing {
    int number = 0;
    double recv_s = 0;
    std::vector<std::pair<double, int>> chunks;
  };
  static double secs(Clock::time_point t) {
    return std::chrono::duration<double>(t.time_since_epoch()).count();
  }
  size_t begin_timing(int number, Clock::time_point start) {
    std::lock_guard lock(mu);
    timings.push_back({number, secs(start), {}});
    return timings.size() - 1;
  }
  void record_chunk(size_t slot, int k) {
    const double now = secs(Clock::now());
    std::lock_guard lock(mu);
    timings[slot].chunks.emplace_back(now, k);
  }

  // The realized metrics of requests numbered `first` on, in ms: median TTFT, median and mean
  // ITL (per token when `per_token`, else per chunk), median E2E, and output tokens per second
  // over first arrival .. last chunk.
  struct Truth {
    double ttft = 0, itl = 0, mean_itl = 0, e2e = 0, throughput = 0;
  };
  Truth truth(int first, bool per_token) {
    std::lock_guard lock(mu);
    std::vector<double> ttft, itl, e2e;
    double t_begin = 1e300, t_end = 0;
    int64_t tokens = 0;
    for (const Timing& t : timings) {
      if (t.number < first || t.chunks.empty()) continue;
      ttft.push_back((t.chunks.front().first - t.recv_s) * 1e3);
      e2e.push_back((t.chunks.back().first - t.recv_s) * 1e3);
      for (size_t i = 1; i < t.chunks.size(); ++i) {
        const double gap = (t.chunks[i].first - t.chunks[i - 1].first) * 1e3;
        const int k = per_token ? t.chunks[i].second : 1;
        for (int j = 0; j < k; ++j) itl.push_back(gap / k);
      }
      for (const auto& c : t.chunks) tokens += c.second;
      t_begin = std::min(t_begin, t.recv_s);
      t_end = std::max(t_end, t.chunks.back().first);
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      const size_t n = v.size();
      return n == 0 ? NAN : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    };
    Truth out;
    out.ttft = median(ttft);
    out.itl = median(itl);
    double sum = 0;
    for (double x : itl) sum += x;
    out.mean_itl = itl.empty() ? NAN : sum / double(itl.size());
    out.e2e = median(e2e);
    out.throughput = double(tokens) / (t_end - t_begin);
    return out;
  }

  Config cfg;
  std::mutex mu;
  std::vector<Timing> timings;
  httplib::Server svr;
  std::thread thread;
  int port = 0;
  std::atomic<int> n_requests{0}, in_flight{0}, max_in_flight{0};
  std::atomic<int64_t> prompt_tokens_seen{0};
  std::atomic<int> text_prompts{0};     // requests whose prompt came as text (not chat)
  std::atomic<int> ignore_eos_seen{0};  // requests asking to ignore EOS
};

bool near(double got, double want, double rel, double abs_tol = 0) {
  return std::fabs(got - want) <= abs_tol + rel * std::fabs(want);
}

class PpBench : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(fs::exists(tool())) << "build pp-bench first: " << tool(); }
  std::string db() const { return quote((tmp_.path() / "runs.db").string()); }
  test::TempDir tmp_;
};

TEST_F(PpBench, ServeMeasuresTheTruthWithMultiTokenChunks) {
  FakeServer::Config cfg;
  FakeServer server(cfg);
  const fs::path jsonl = tmp_.path() / "out.jsonl";
  const int n_prompts = 16, out_len = 25, conc = 4;
  ToolRun r = run("serve --backend openai --base-url " + server.url() +
                  " --dataset-name fixed --vocab-size 5000 --num-prompts 16 --random-input-len 32 "
                  "--random-output-len 25 --max-concurrency 4 --label truth --seed " +
                  std::to_string(test::rng()() % 1000) + " --db " + db() + " --output-file " +
                  quote(jsonl.string()));
  ASSERT_EQ(r.rc, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("============ Serving Benchmark Result ============"), std::string::npos)
      << r.out;
  // The schedule: TTFT 100 ms; 10 ms per token after the first chunk of 3; E2E 100 + 22 * 10
  // = 320 ms. The truth is what the server really did (a busy machine oversleeps): pp-bench must
  // be within 5% of it, plus for TTFT and E2E a few ms of request transit the server cannot see
  // (its clock starts when httplib hands it the request; on an overloaded machine that is late),
  // and the server near its schedule.
  const double ttft = cfg.ttft_ms, d = cfg.token_ms;
  const double e2e = ttft + (out_len - cfg.tokens_per_chunk) * d;
  const FakeServer::Truth t = server.truth(1, true);  // request 0 is the warmup
  EXPECT_EQ(table_value(r.out, "Successful requests"), n_prompts);
  EXPECT_EQ(table_value(r.out, "Failed requests"), 0);
  EXPECT_EQ(table_value(r.out, "Total generated tokens"), n_prompts * out_len);
  EXPECT_EQ(table_value(r.out, "Total input tokens"), n_prompts * 32);
  EXPECT_TRUE(near(table_value(r.out, "Median TTFT (ms)"), t.ttft, 0.05, 6)) << t.ttft << r.out;
  EXPECT_TRUE(near(table_value(r.out, "Median ITL (ms)"), t.itl, 0.05, 0.3)) << t.itl << r.out;
  EXPECT_TRUE(near(table_value(r.out, "Mean ITL (ms)"), t.mean_itl, 0.05, 0.3)) << t.mean_itl;
  EXPECT_TRUE(near(table_value(r.out, "Median E2E Latency (ms)"), t.e2e, 0.05, 6)) << t.e2e;
  EXPECT_TRUE(
      near(table_value(r.out, "Median TPOT (ms)"), (t.e2e - t.ttft) / (out_len - 1), 0.05, 0.3))
      << r.out;
  EXPECT_TRUE(near(table_value(r.out, "Output token throughput (tok/s)"), t.throughput, 0.05))
      << t.throughput << r.out;
  EXPECT_TRUE(near(t.ttft, ttft, 0.25) && near(t.itl, d, 0.25) && near(t.e2e, e2e, 0.25))
      << "the fake server is far off its schedule: " << t.ttft << " " << t.itl << " " << t.e2e;
  EXPECT_TRUE(near(table_value(r.out, "Concurrency"), conc, 0.06)) << r.out;
  EXPECT_EQ(server.max_in_flight.load(), conc);
  EXPECT_EQ(server.n_requests.load(), n_prompts + 1);                 // and one warmup
  EXPECT_EQ(server.prompt_tokens_seen.load(), (n_prompts + 1) * 32);  // ids sent as ids

  // The JSON line holds the parameters and every metric.
  std::ifstream in(jsonl);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  json j = json::parse(line);
  EXPECT_EQ(j["backend"], "openai");
  EXPECT_EQ(j["max_concurrency"], conc);
  EXPECT_EQ(j["completed"], n_prompts);
  EXPECT_EQ(j["label"], "truth");
  EXPECT_EQ(j["run_id"], 1);
  EXPECT_TRUE(
      near(j["median_itl_ms"].get<double>(), table_value(r.out, "Median ITL (ms)"), 0, 0.006))
      << "the JSON line and the table disagree";
  for (const char* k : {"mean_ttft_ms", "p90_ttft_ms", "p99_tpot_ms", "std_itl_ms",
                        "median_e2e_latency_ms", "request_throughput", "total_throughput",
                        "input_throughput", "duration", "concurrency", "random_range_ratio"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_FALSE(std::getline(in, line));

  ToolRun h = run("history --db " + db());
  ASSERT_EQ(h.rc, 0) << h.err;
  EXPECT_NE(h.out.find("truth"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("16/0"), std::string::npos) << h.out;
}

TEST_F(PpBench, SglangAndChatBackendsAndUnknownChunkSizes) {
  FakeServer::Config cfg;
  cfg.ttft_ms = 80;
  cfg.token_ms = 12;
  cfg.tokens_per_chunk = 4;
  cfg.usage_every_chunk = false;  // OpenAI streams say the count only at the end
  FakeServer server(cfg);
  const std::string common =
      " --dataset-name fixed --vocab-size 300 --num-prompts 6 "
      "--random-input-len 8 --random-output-len 21 --max-concurrency 3 "
      "--warmup-requests 0 --db " +
      db();
  // Each run is checked against what the server really did for its requests (see above).
  // Bounds: the client reads each chunk a little after the server wrote it, and on a loaded
  // machine (CI runs sanitized tests two at a time on two cores) that delay varies by a few
  // milliseconds, so gaps get 2 ms besides 5%; the cases told apart differ by 4x.
  constexpr double kGapMs = 2;
  // SGLang's native API: cumulative counts give every token its gap.
  int first = server.n_requests;
  ToolRun s = run("serve --backend sglang --base-url " + server.url() + common);
  ASSERT_EQ(s.rc, 0) << s.err;
  FakeServer::Truth t = server.truth(first, true);
  EXPECT_EQ(table_value(s.out, "Total generated tokens"), 6 * 21);
  EXPECT_TRUE(near(table_value(s.out, "Median ITL (ms)"), t.itl, 0.05, kGapMs)) << t.itl << s.out;
  EXPECT_TRUE(near(t.itl, cfg.token_ms, 0.5)) << t.itl;
  EXPECT_TRUE(near(table_value(s.out, "Median TTFT (ms)"), t.ttft, 0.05, 6)) << t.ttft << s.out;
  EXPECT_TRUE(near(table_value(s.out, "Median E2E Latency (ms)"), t.e2e, 0.05, 6)) << t.e2e;
  // OpenAI without per-chunk usage: one ITL per chunk (SGLang's OpenAI rule), 4 tokens' worth;
  // TPOT and the token count (from the final usage) are still per token.
  first = server.n_requests;
  ToolRun o = run("serve --backend openai --base-url " + server.url() + common);
  ASSERT_EQ(o.rc, 0) << o.err;
  t = server.truth(first, false);
  EXPECT_EQ(table_value(o.out, "Total generated tokens"), 6 * 21);
  EXPECT_TRUE(near(table_value(o.out, "Median ITL (ms)"), t.itl, 0.05, kGapMs)) << t.itl << o.out;
  EXPECT_TRUE(near(t.itl, 4 * cfg.token_ms, 0.25)) << t.itl;
  EXPECT_TRUE(near(table_value(o.out, "Median TPOT (ms)"), (t.e2e - t.ttft) / 20, 0.05, 0.5))
      << o.out;
  // Not streaming: TTFT is the whole latency and there is no ITL.
  first = server.n_requests;
  ToolRun ns = run("serve --backend openai --disable-stream --base-url " + server.url() + common);
  ASSERT_EQ(ns.rc, 0) << ns.err;
  t = server.truth(first, true);
  // (The server's time here is taken before httplib writes the body: a looser bound.)
  EXPECT_TRUE(near(table_value(ns.out, "Median TTFT (ms)"), t.e2e, 0.1, 5)) << t.e2e << ns.out;
  EXPECT_TRUE(near(table_value(ns.out, "Median TTFT (ms)"),
                   table_value(ns.out, "Median E2E Latency (ms)"), 0, 0.011));
  EXPECT_NE(ns.out.find("Median ITL (ms):                         n/a"), std::string::npos)
      << ns.out;
  // Chat needs text: without a tokenizer the ids cannot be sent; with one it works.
  ToolRun c = run("serve --backend openai-chat --base-url " + server.url() + common);
  EXPECT_EQ(c.rc, 2);
  EXPECT_NE(c.err.find("openai-chat"), std::string::npos) << c.err;
  const fs::path tok = test::fixture_dir() / "tokenizers" / "gpt2" / "tokenizer.json";
  ToolRun c2 = run("serve --backend openai-chat --tokenizer " + quote(tok.string()) +
                   " --base-url " + server.url() + common);
  ASSERT_EQ(c2.rc, 0) << c2.err;
  EXPECT_EQ(table_value(c2.out, "Successful requests"), 6);
  EXPECT_EQ(table_value(c2.out, "Total generated tokens"), 6 * 21);
}

// SGLang's defaults: the default backend is sglang, EOS is ignored, and without --tokenizer the
// server's is taken (/get_model_info) and random-ids prompts go as text; --tokenize-prompt
// sends ids, --disable-ignore-eos stops at EOS. A server tokenizer that is not on this machine
// is an error for the text datasets only.
TEST_F(PpBench, ServeTakesTheServersTokenizerAndSglangDefaults) {
  FakeServer::Config cfg;
  cfg.ttft_ms = 5;
  cfg.token_ms = 1;
  cfg.tokenizer_path = (test::fixture_dir() / "tokenizers" / "gpt2" / "tokenizer.json").string();
  FakeServer server(cfg);
  const int64_t in_len = std::uniform_int_distribution<int64_t>(4, 40)(test::rng());
  const std::string common = " --dataset-name random-ids --num-prompts 4 --random-input-len " +
                             std::to_string(in_len) +
                             " --random-output-len 4 --random-range-ratio 1 "
                             "--warmup-requests 0 --db " +
                             db();
  ToolRun r = run("serve --base-url " + server.url() + common);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(server.text_prompts.load(), 4);
  EXPECT_EQ(server.ignore_eos_seen.load(), 4);
  EXPECT_EQ(table_value(r.out, "Total input tokens"), 4 * in_len);  // GPT-2 adds no BOS
  EXPECT_NE(r.out.find("sglang"), std::string::npos) << r.out;
  ToolRun ids =
      run("serve --tokenize-prompt --disable-ignore-eos --base-url " + server.url() + common);
  ASSERT_EQ(ids.rc, 0) << ids.err;
  EXPECT_EQ(server.text_prompts.load(), 4);
  EXPECT_EQ(server.ignore_eos_seen.load(), 4);
  EXPECT_EQ(server.prompt_tokens_seen.load(), 4 * 7 + 4 * in_len);  // text counts 7 here
  ToolRun chat = run("serve --backend sglang-oai-chat --base-url " + server.url() + common);
  ASSERT_EQ(chat.rc, 0) << chat.err;
  EXPECT_EQ(table_value(chat.out, "Successful requests"), 4);
  ToolRun both = run("serve --ignore-eos --disable-ignore-eos --base-url " + server.url() + common);
  EXPECT_EQ(both.rc, 2);

  cfg.tokenizer_path = (tmp_.path() / "elsewhere" / "model.gguf").string();
  FakeServer far(cfg);
  ToolRun text = run("serve --base-url " + far.url() +
                     " --dataset-name random --num-prompts 2 --random-input-len 8 "
                     "--random-output-len 2 --warmup-requests 0 --db " +
                     db());
  EXPECT_EQ(text.rc, 2);
  EXPECT_NE(text.err.find("not on this machine"), std::string::npos) << text.err;
  ToolRun vocab = run("serve --base-url " + far.url() + " --vocab-size 100" + common);
  ASSERT_EQ(vocab.rc, 0) << vocab.err;  // ids, as the server's tokenizer is not here
}

TEST_F(PpBench, FailuresAreCountedAndCompareFlagsRegressions) {
  FakeServer::Config cfg;
  cfg.ttft_ms = 30;
  cfg.token_ms = 5;
  cfg.fail_every = 4;  // requests 1, 5, 9, 13 (request 0 is the warmup)
  FakeServer flaky(cfg);
  const std::string common =
      " --dataset-name random-ids --vocab-size 1000 --num-prompts 16 "
      "--random-input-len 16 --random-output-len 12 "
      "--random-range-ratio 1 --max-concurrency 2 --db " +
      db();
  ToolRun a = run("serve --backend openai --base-url " + flaky.url() + common + " --label fast");
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(table_value(a.out, "Successful requests"), 12);
  EXPECT_EQ(table_value(a.out, "Failed requests"), 4);
  EXPECT_EQ(table_value(a.out, "Total input tokens"), 12 * 16);

  cfg.fail_every = 0;
  cfg.token_ms = 10;  // twice as slow per token
  FakeServer slow(cfg);
  ToolRun b = run("serve --backend openai --base-url " + slow.url() + common + " --label slow");
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(table_value(b.out, "Failed requests"), 0);

  ToolRun cmp = run("compare 1 2 --db " + db());
  ASSERT_EQ(cmp.rc, 0) << cmp.err;
  std::regex itl_line(R"(median_itl_ms \(ms\)\s+\S+\s+\S+\s+(\S+)\s+REGRESSION)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(cmp.out, m, itl_line)) << cmp.out;
  EXPECT_TRUE(near(std::stod(m[1]), 2.0, 0.1)) << cmp.out;  // B/A
  EXPECT_NE(cmp.out.find("completed (req)"), std::string::npos);
  // Completed rose from 12 to 16 and failures fell: improvements, not regressions.
  std::regex failed_line(R"(failed \(req\)\s+4\.00\s+0\.00\s+0\.000\s+better)");
  EXPECT_TRUE(std::regex_search(cmp.out, failed_line)) << cmp.out;
  EXPECT_EQ(run("compare 1 2 --fail-on-regression --db " + db()).rc, 1);
  EXPECT_EQ(run("compare 1 1 --fail-on-regression --db " + db()).rc, 0);
  // Twice the ITL is +100%: beyond 5%, within 150%. (Tail metrics are left unchecked: on a
  // busy machine one late chunk can move a max or p99 by any amount.)
  ToolRun loose = run("compare 1 2 --threshold 150% --db " + db());
  ASSERT_EQ(loose.rc, 0) << loose.err;
  std::regex itl_loose(R"(median_itl_ms \(ms\)\s+\S+\s+\S+\s+\S+\s*\n)");
  EXPECT_TRUE(std::regex_search(loose.out, itl_loose)) << loose.out;
  EXPECT_NE(loose.out.find("beyond 150%"), std::string::npos) << loose.out;
  ToolRun missing = run("compare 1 99 --db " + db());
  EXPECT_EQ(missing.rc, 2);
  EXPECT_EQ(std::count(missing.err.begin(), missing.err.end(), '\n'), 1) << missing.err;

  ToolRun h = run("history --label slow --db " + db());
  ASSERT_EQ(h.rc, 0);
  EXPECT_EQ(std::count(h.out.begin(), h.out.end(), '\n'), 2) << h.out;  // header + 1 run
}

TEST_F(PpBench, SweepRecordsPointsAndDrawsThePlot) {
  FakeServer::Config cfg;
  cfg.ttft_ms = 20;
  cfg.token_ms = 4;
  FakeServer server(cfg);
  const fs::path svg = tmp_.path() / "sweep.svg";
  ToolRun r = run("sweep --base-url " + server.url() +
                  " --grid 'max-concurrency=1,4 random-output-len=8,16' --dataset-name fixed "
                  "--vocab-size 100 --num-prompts 8 --random-input-len 4 --warmup-requests 0 "
                  "--plot " +
                  quote(svg.string()) + " --db " + db());
  ASSERT_EQ(r.rc, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("sweep 1: 4 points"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[4/4] max-concurrency=4 random-output-len=16"), std::string::npos);
  const std::string pic = slurp(svg);
  EXPECT_NE(pic.find("<svg"), std::string::npos);
  EXPECT_NE(pic.find("</svg>"), std::string::npos);
  EXPECT_NE(pic.find("max-concurrency=4"), std::string::npos);  // a series per concurrency
  ToolRun h = run("history --sweep 1 --db " + db());
  ASSERT_EQ(h.rc, 0);
  EXPECT_EQ(std::count(h.out.begin(), h.out.end(), '\n'), 5) << h.out;
  EXPECT_NE(h.out.find("[sweep 1]"), std::string::npos) << h.out;
  EXPECT_EQ(run("sweep --base-url " + server.url() + " --grid 'tp=2' --db " + db()).rc, 2);
}

TEST_F(PpBench, TimelineDrawsATrace) {
  json ev = json::array();
  const int64_t t0 = 1'700'000'000'000'000;
  for (int k = 0; k < 2; ++k) {
    ev.push_back({{"name", "process_name"},
                  {"ph", "M"},
                  {"pid", k},
                  {"args", {{"name", "stage " + std::to_string(k)}}}});
  }
  // Stage 0 computes [0, 400) and [500, 900); stage 1 [400, 800): window 0..900 µs.
  auto x = [&](int pid, int64_t b, int64_t d, int seq) {
    return json{{"name", "compute"},
                {"ph", "X"},
                {"pid", pid},
                {"tid", 0},
                {"ts", t0 + b},
                {"dur", d},
                {"args", {{"seq", seq}, {"group", seq % 3}, {"n_tokens", 4}}}};
  };
  ev.push_back(x(0, 0, 400, 0));
  ev.push_back(x(0, 500, 400, 1));
  ev.push_back(x(1, 400, 400, 0));
  const fs::path trace = tmp_.path() / "trace.json";
  std::ofstream(trace) << ev.dump();
  const fs::path svg = tmp_.path() / "timeline.svg";
  ToolRun r = run("timeline " + quote(trace.string()) + " -o " + quote(svg.string()));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("stage 0: busy 88.9%, idle 11.1% (2 micro-batches)"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("stage 1: busy 44.4%, idle 55.6% (1 micro-batches)"), std::string::npos)
      << r.out;
  const std::string pic = slurp(svg);
  EXPECT_TRUE(pic.starts_with("<svg")) << pic.substr(0, 100);
  EXPECT_NE(pic.find("</svg>"), std::string::npos);
  ToolRun bad = run("timeline " + quote((tmp_.path() / "nope.json").string()));
  EXPECT_EQ(bad.rc, 2);
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
}

TEST_F(PpBench, BadUsageIsOneLine) {
  ToolRun r =
      run("serve --base-url http://127.0.0.1:1 --vocab-size 10 --num-prompts 2 "
          "--random-input-len 4 --random-output-len 4 --model m --db " +
          db());
  EXPECT_EQ(r.rc, 1);  // nothing listens there: the warmup fails
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("warmup failed"), std::string::npos) << r.err;
  ToolRun rate = run("serve --base-url http://127.0.0.1:1 --request-rate fast --db " + db());
  EXPECT_EQ(rate.rc, 2);
  EXPECT_NE(rate.err.find("--request-rate"), std::string::npos) << rate.err;
  EXPECT_EQ(run("serve --base-url https://x --vocab-size 9 --db " + db()).rc, 2);
}

TEST_F(PpBench, OfflineDrivesTheEngine) {
  const fs::path model = test::fixture_dir() / "models" / "tiny-llama";
  const fs::path stage = fs::path(PP_BUILD_DIR) / "tools" / "pp-stage";
  if (!fs::exists(stage)) GTEST_SKIP() << "pp-stage is not built: " << stage;
  const fs::path trace = tmp_.path() / "trace.json";
  ToolRun r = run("offline --model " + quote(model.string()) +
                  " --pp 2 --async-depth 1 --threads-per-stage 1 --num-prompts 6 "
                  "--random-input-len 12 --random-output-len 5 --random-range-ratio 1 "
                  "--ignore-eos --max-concurrency 3 --trace " +
                  quote(trace.string()) + " --db " + db());
  ASSERT_EQ(r.rc, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("Offline Benchmark Result"), std::string::npos) << r.out;
  EXPECT_EQ(table_value(r.out, "Successful requests"), 6);
  EXPECT_EQ(table_value(r.out, "Total generated tokens"), 30);
  EXPECT_EQ(table_value(r.out, "Total input tokens"), 72);
  EXPECT_GT(table_value(r.out, "Median TTFT (ms)"), 0);
  EXPECT_NE(r.out.find("stage 1: busy"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(trace));
  ToolRun t = run("timeline " + quote(trace.string()));
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_NE(t.out.find("stage 1: busy"), std::string::npos) << t.out;
}

// quality: the model against itself quantized, teacher-forced; the numbers are sane (a
// quantization changes the logits a little: KL above zero, most top-1 choices kept) and recorded.
TEST_F(PpBench, QualityMeasuresAQuantization) {
  const fs::path model = test::fixture_dir() / "models" / "tiny-qwen3";
  ToolRun r =
      run("quality --model " + quote(model.string()) + " --tokens 48 --label q-fp8 --db " + db());
  ASSERT_EQ(r.rc, 0) << r.err << r.out;
  const double top1 = table_value(r.out, "Top-1 agreement"),
               kl = table_value(r.out, "KL mean (nats)");
  EXPECT_GE(top1, 0.5) << r.out;
  EXPECT_LE(top1, 1.0) << r.out;
  EXPECT_GT(kl, 0.0) << r.out;
  EXPECT_LT(kl, 0.5) << r.out;
  EXPECT_GE(table_value(r.out, "KL max (nats)"), table_value(r.out, "KL p99 (nats)")) << r.out;
  ToolRun h = run("history --db " + db());
  ASSERT_EQ(h.rc, 0) << h.err;
  EXPECT_NE(h.out.find("q-fp8"), std::string::npos) << h.out;
  ToolRun bad = run("quality --model " + quote(model.string()) + " --tokens 0 --db " + db());
  EXPECT_EQ(bad.rc, 2);
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
  EXPECT_EQ(run("quality --model " + quote(model.string()) + " --quantization int4").rc, 2);
}

TEST_F(PpBench, HelpAndManPageNameTheSameOptions) {
  std::regex opt("--([a-z][a-z0-9-]*)");
  std::set<std::string> help;
  for (const char* sub :
       {"", "serve", "offline", "sweep", "history", "compare", "quality", "timeline"}) {
    ToolRun r = run(std::string(sub) + " --help");
    ASSERT_EQ(r.rc, 0) << sub << ": " << r.err;
    for (std::sregex_iterator it(r.out.begin(), r.out.end(), opt), end; it != end; ++it) {
      help.insert((*it)[1]);
    }
  }
  std::string man = slurp(test::source_dir() / "man" / "pp-bench.1");
  ASSERT_FALSE(man.empty());
  std::string plain = std::regex_replace(man, std::regex(R"(\\-)"), "-");
  std::set<std::string> in_man;
  for (std::sregex_iterator it(plain.begin(), plain.end(), opt), end; it != end; ++it) {
    in_man.insert((*it)[1]);
  }
  for (const auto& o : help)
    EXPECT_TRUE(in_man.count(o)) << "--" << o << " missing from the man page";
  for (const auto& o : in_man)
    EXPECT_TRUE(help.count(o)) << "--" << o << " is in the man page only";
  EXPECT_GE(help.size(), 40u);
}

}  // namespace
}  // namespace pp
