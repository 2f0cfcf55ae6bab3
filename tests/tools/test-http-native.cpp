// pp-serve as a drop-in for SGLang users, through the binary: started with SGLang's launch flags
// (--model-path, --pp-size, --tp-size 1, --context-length, --max-total-tokens, --chat-template,
// --tokenizer-path, ...), it answers SGLang's informational endpoints in SGLang's shapes,
// /tokenize and /detokenize, /health_generate, /version, /v1/models/{id}, 405 for a wrong
// method, an immediate 400 for a POST without a body, and logs load lines while busy. Bad flags
// end it at once with one line and exit status 2, an unknown one with a "did you mean".
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>

#include "test-http-util.h"

namespace pp::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

struct ToolRun {
  int rc = -1;
  std::string err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `pp-serve ARGS` (expected to stop by itself), its stderr captured.
ToolRun run_serve(const std::string& args, const fs::path& dir) {
  const fs::path err = dir / "err";
  const std::string cmd =
      quote(serve_binary().string()) + " " + args + " >/dev/null 2>" + quote(err.string());
  const int st = std::system(("/bin/sh -c " + quote(cmd)).c_str());
  ToolRun r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.err = slurp(err);
  return r;
}

// Sends raw bytes and returns what comes back before the server closes (or `timeout`).
std::string raw_exchange(int port, const std::string& request, std::chrono::seconds timeout) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "";
  }
  timeval tv{static_cast<time_t>(timeout.count()), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  (void)::send(fd, request.data(), request.size(), 0);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) {
    out.append(buf, size_t(n));
    if (out.find("\r\n\r\n") != std::string::npos && out.find("}") != std::string::npos) break;
  }
  ::close(fd);
  return out;
}

class HttpNativeTest : public SharedServerTest<HttpNativeTest> {
 protected:
  static void SetUpTestSuite() {
    make_model();
    // A Mistral template instead of the model's ChatML.
    std::ofstream(dir_->path() / "t.jinja")
        << "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
           "[INST] {{ message['content'] }} [/INST]{% endif %}{% endfor %}";
    start_server({"--model-path",
                  model_.string(),
                  "--pp-size",
                  "1",
                  "--tp-size",
                  "1",
                  "--pp-async-batch-depth",
                  "1",
                  "--mem-fraction-static",
                  "0.8",
                  "--chunked-prefill-size",
                  "128",
                  "--max-total-tokens",
                  "1000",
                  "--context-length",
                  "256",
                  "--dtype",
                  "auto",
                  "--trust-remote-code",
                  "--chat-template",
                  (dir_->path() / "t.jinja").string(),
                  "--tokenizer-path",
                  (model_ / "tokenizer.json").string(),
                  "--served-model-name",
                  "tiny",
                  "--threads-per-stage",
                  "1",
                  "--log-interval",
                  "0.5",
                  "--db",
                  (dir_->path() / "runs.db").string()});
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(60, 0);
    return c;
  }
  json get_json(const std::string& path, int want_status = 200) {
    auto r = client().Get(path.c_str());
    EXPECT_TRUE(r) << path;
    if (!r) return json();
    EXPECT_EQ(r->status, want_status) << path << ": " << r->body;
    return json::parse(r->body, nullptr, false);
  }
  json post_json(const std::string& path, const json& body, int want_status = 200) {
    auto r = client().Post(path.c_str(), body.dump(), "application/json");
    EXPECT_TRUE(r) << path;
    if (!r) return json();
    EXPECT_EQ(r->status, want_status) << path << ": " << r->body;
    return json::parse(r->body, nullptr, false);
  }
};

TEST_F(HttpNativeTest, InfoEndpointsHaveSglangShapes) {
  json server = get_json("/get_server_info");
  EXPECT_EQ(server["model_path"], model_.string());
  EXPECT_EQ(server["pp_size"], 1);
  EXPECT_EQ(server["tp_size"], 1);
  EXPECT_EQ(server["context_length"], 256);
  EXPECT_EQ(server["chunked_prefill_size"], 128);
  EXPECT_EQ(server["max_total_tokens"], 1000);
  EXPECT_EQ(server["max_total_num_tokens"], 1008);  // 63 blocks of 16
  EXPECT_TRUE(server["api_key"].is_null());
  ASSERT_TRUE(server["internal_states"].is_array());
  EXPECT_TRUE(server["internal_states"][0].is_object());
  EXPECT_TRUE(server["version"].is_string());
  EXPECT_EQ(get_json("/server_info")["model_path"], server["model_path"]);

  json info = get_json("/get_model_info");
  EXPECT_EQ(info["model_path"], model_.string());
  EXPECT_EQ(info["tokenizer_path"], (model_ / "tokenizer.json").string());
  EXPECT_EQ(info["is_generation"], true);
  EXPECT_EQ(info["model_type"], "llama");
  EXPECT_EQ(info["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(info["has_image_understanding"], false);
  EXPECT_EQ(get_json("/model_info"), info);

  EXPECT_EQ(get_json("/version")["version"], server["version"]);
  EXPECT_EQ(get_json("/v1/models")["data"][0]["max_model_len"], 256);
  EXPECT_EQ(get_json("/v1/models/tiny")["id"], "tiny");
  json missing = get_json("/v1/models/other", 404);
  EXPECT_EQ(missing["error"]["code"], "model_not_found");
}

TEST_F(HttpNativeTest, TokenizeDetokenizeAndContextLength) {
  json t = post_json("/tokenize", {{"prompt", "hello"}, {"add_special_tokens", false}});
  EXPECT_EQ(t["tokens"], json::array({'h', 'e', 'l', 'l', 'o'}));  // byte-level ids
  EXPECT_EQ(t["count"], 5);
  EXPECT_EQ(t["max_model_len"], 256);
  json d = post_json("/v1/detokenize", {{"tokens", t["tokens"]}});
  EXPECT_EQ(d["text"], "hello");
  EXPECT_EQ(post_json("/v1/tokenize", {{"prompt", {"a", "bc"}}})["count"].size(), 2u);
  json bad = post_json("/detokenize", {{"tokens", {9999}}}, 400);
  EXPECT_EQ(bad["error"]["param"], "tokens");

  // --context-length 256 caps the served context below the model's 512.
  json too_long = post_json("/v1/completions", {{"prompt", std::string(300, 'a')}}, 400);
  EXPECT_EQ(too_long["error"]["code"], "context_length_exceeded");
}

TEST_F(HttpNativeTest, ChatTemplateFileReplacesTheModels) {
  json r = post_json("/v1/chat/completions",
                     {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}});
  // "<|endoftext|>[INST] hi [/INST]": BOS, then one token per byte.
  EXPECT_EQ(r["usage"]["prompt_tokens"], 18);
}

TEST_F(HttpNativeTest, HealthGenerateWrongMethodAndMissingBody) {
  auto h = client().Get("/health_generate");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200) << h->body;

  auto wrong = client().Get("/generate");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 405);
  EXPECT_EQ(wrong->get_header_value("Allow"), "POST");
  EXPECT_EQ(json::parse(wrong->body)["error"]["type"], "invalid_request_error");
  auto wrong2 = client().Post("/health", "{}", "application/json");
  ASSERT_TRUE(wrong2);
  EXPECT_EQ(wrong2->status, 405);
  EXPECT_EQ(wrong2->get_header_value("Allow"), "GET");
  auto none = client().Get("/no/such/route");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 404);

  // A POST without Content-Length: 400 at once, not after the 30 s read timeout.
  const auto t0 = std::chrono::steady_clock::now();
  const std::string answer =
      raw_exchange(server_->port(), "POST /generate HTTP/1.1\r\nHost: localhost\r\n\r\n",
                   std::chrono::seconds(10));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_NE(answer.find("HTTP/1.1 400"), std::string::npos) << answer;
  EXPECT_NE(answer.find("no body"), std::string::npos) << answer;
}

TEST_F(HttpNativeTest, LogsLoadLinesWhileBusyOnly) {
  json r = post_json(
      "/generate",
      {{"text", "hello"}, {"sampling_params", {{"max_new_tokens", 200}, {"ignore_eos", true}}}});
  EXPECT_EQ(r["meta_info"]["completion_tokens"], 200);
  std::this_thread::sleep_for(1200ms);  // the next load line, over the interval that ran
  const std::string log = server_->log_text();
  EXPECT_NE(log.find("load: running"), std::string::npos) << log;
  EXPECT_NE(log.find("stage busy"), std::string::npos) << log;
  // Idle now: no new line.
  const size_t n = std::count(log.begin(), log.end(), '\n');
  std::this_thread::sleep_for(1200ms);
  const std::string later = server_->log_text();
  EXPECT_EQ(size_t(std::count(later.begin(), later.end(), '\n')), n) << later;
}

TEST(PpServeFlags, BadFlagsEndAtOnceWithOneLine) {
  TempDir dir;
  const fs::path model = make_tiny_chat_model(dir.path() / "m");
  const std::string m = "--model " + quote(model.string()) + " ";
  const fs::path unknown = dir.path() / "unknown.jinja";
  std::ofstream(unknown) << "{% for message in messages %}{{ message['content'] }}{% endfor %}";
  struct Case {
    std::string args;
    std::string says;
  };
  const Case cases[] = {
      {m + "--tp-size 300", "--tp"},
      {m + "--dtype float16", "--dtype float16 is not supported on cpu"},
      {m + "--device cuda --dtype float32", "--dtype float32 is not supported on cuda"},
      {m + "--context-length 100000", "longer than the model's context (512)"},
      {m + "--chat-template /nonexistent.jinja", "cannot open chat template"},
      {m + "--chat-template " + quote(unknown.string()), "unrecognised chat template"},
      {m + "--tokenizer-path /nonexistent", "--tokenizer-path"},
      {m + "--max-total-tokens 100 --kv-blocks 5", "--max-total-tokens"},
      {m + "--pp-sise 2", "unknown option '--pp-sise' (did you mean --pp-size?)"},
      {m + "--model-pth x", "unknown option '--model-pth' (did you mean --model-path?)"},
      {"--prompt hi", "--model"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    ToolRun r = run_serve(c.args, dir.path());
    EXPECT_EQ(r.rc, 2) << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // SGLang's flags in one-shot mode too; --trust-remote-code is accepted and changes nothing.
  ToolRun ok = run_serve("--model-path " + quote(model.string()) +
                             " --pp-size 1 --trust-remote-code --threads 1 --max-tokens 2 "
                             "--prompt hi",
                         dir.path());
  EXPECT_EQ(ok.rc, 0) << ok.err;
}

}  // namespace
}  // namespace pp::test
