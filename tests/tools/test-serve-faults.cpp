// Stage faults through pp-serve's HTTP API (the binaries, the tiny chat model, P = 3): a load
// of streaming completions during which a stage is killed with SIGKILL still completes every
// request, with the text a fault-free run gives and no error frame (streams only pause); and a
// pp-serve killed with SIGKILL leaves no pp-stage behind, its run marked abnormal by the next
// start.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "pp/store/run-store.h"
#include "test-http-util.h"

namespace pp::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Whether `pid` is a live process (a zombie is not).
bool alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

// The children of `pid` whose command line has `needle`.
std::vector<pid_t> children(pid_t pid, const std::string& needle = "") {
  std::vector<pid_t> out;
  FILE* p = ::popen(("pgrep -P " + std::to_string(pid)).c_str(), "r");
  if (!p) return out;
  int child = 0;
  while (std::fscanf(p, "%d", &child) == 1) {
    std::ifstream in("/proc/" + std::to_string(child) + "/cmdline");
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (needle.empty() || cmd.find(needle) != std::string::npos) out.push_back(child);
  }
  ::pclose(p);
  return out;
}

struct StreamResult {
  std::string text;
  std::string finish_reason;
  int n_errors = 0;   // error frames
  bool done = false;  // ended with [DONE]
  int status = 0;
};

// One streaming completion; the text is the deltas, concatenated.
StreamResult stream_completion(int port, const std::string& prompt, bool ignore_eos) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120, 0);
  const json req = {{"prompt", prompt},
                    {"max_tokens", 16},
                    {"temperature", 0},
                    {"ignore_eos", ignore_eos},
                    {"stream", true}};
  StreamResult out;
  auto r = c.Post("/v1/completions", req.dump(), "application/json");
  std::string buf = r ? r->body : std::string();
  size_t end;
  while ((end = buf.find("\n\n")) != std::string::npos) {
    std::string frame = buf.substr(0, end);
    buf.erase(0, end + 2);
    if (frame.rfind("data: ", 0) != 0) continue;
    frame = frame.substr(6);
    if (frame == "[DONE]") {
      out.done = true;
      continue;
    }
    const json j = json::parse(frame, nullptr, false);
    if (j.is_discarded()) continue;
    if (j.contains("error")) {
      ++out.n_errors;
      continue;
    }
    for (const json& ch : j["choices"]) {
      out.text += ch.value("text", "");
      if (ch.contains("finish_reason") && ch["finish_reason"].is_string()) {
        out.finish_reason = ch["finish_reason"].get<std::string>();
      }
    }
  }
  out.status = r ? r->status : -1;
  return out;
}

// `n` streaming completions from `n_clients` threads; `on_progress(done)` after each.
std::vector<StreamResult> load(int port, int n, int n_clients,
                               const std::function<void(int)>& on_progress = {}) {
  std::vector<StreamResult> out(static_cast<size_t>(n));
  std::atomic<int> next{0}, finished{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < n_clients; ++t) {
    clients.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < n;) {
        const std::string prompt = fmt::format("request {} says {}", i, i * 7919 % 1000);
        out[size_t(i)] = stream_completion(port, prompt, i % 2 == 0);
        const int d = finished.fetch_add(1) + 1;
        if (on_progress) on_progress(d);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  return out;
}

class ServeFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = make_tiny_chat_model(dir_.path() / "tiny-chat"); }
  bool start(ServeProcess& server, const std::string& log, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {
        "--model", model_.string(), "--pp", "3", "--threads-per-stage", "1", "--db", db().string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return server.start(args, dir_.path() / log);
  }
  std::filesystem::path db() const { return dir_.path() / "runs.db"; }

  TempDir dir_;
  std::filesystem::path model_;
};

TEST_F(ServeFaultsTest, StreamingLoadSurvivesAKilledStage) {
  ServeProcess server;
  ASSERT_TRUE(start(server, "serve.log"));
  const int n = 200, n_clients = 16;
  // The fault-free answers first, from the same server.
  const std::vector<StreamResult> want = load(server.port(), n, n_clients);
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(want[size_t(i)].status, 200) << "request " << i;
    ASSERT_TRUE(want[size_t(i)].done) << "request " << i;
    ASSERT_EQ(want[size_t(i)].n_errors, 0) << "request " << i;
  }

  // Those that ignore eos generate text (the others may end at once).
  for (int i = 0; i < n; i += 2) ASSERT_FALSE(want[size_t(i)].text.empty()) << "request " << i;

  // Again, killing the middle stage once a quarter of the requests have finished.
  std::atomic<pid_t> killed{0};
  std::atomic<int> n_503{0};
  std::thread health;
  const std::vector<StreamResult> got = load(server.port(), n, n_clients, [&](int done) {
    if (done != n / 4) return;
    const std::vector<pid_t> stage = children(server.pid(), "--stage 1");
    if (stage.size() != 1u) return;
    killed = stage[0];
    ::kill(stage[0], SIGKILL);
    health = std::thread([&] {
      // While it recovers, /health says 503 (recovering); it soon says 200 again.
      httplib::Client c("127.0.0.1", server.port());
      for (int i = 0; i < 400; ++i) {
        auto h = c.Get("/health");
        if (h && h->status == 503) ++n_503;
        if (h && h->status == 200 && n_503.load() > 0) break;
        std::this_thread::sleep_for(5ms);
      }
    });
  });
  ASSERT_NE(killed.load(), 0) << "no stage 1 to kill";
  if (health.joinable()) health.join();
  EXPECT_GT(n_503.load(), 0) << "/health never said 503 while recovering";
  for (int i = 0; i < n; ++i) {
    const StreamResult& g = got[size_t(i)];
    const StreamResult& w = want[size_t(i)];
    ASSERT_EQ(g.status, 200) << "request " << i;
    EXPECT_TRUE(g.done) << "request " << i;
    EXPECT_EQ(g.n_errors, 0) << "request " << i;
    EXPECT_EQ(g.finish_reason, w.finish_reason) << "request " << i;
    EXPECT_EQ(g.text, w.text) << "request " << i;
  }
  EXPECT_FALSE(alive(killed.load()));
  const std::vector<pid_t> now = children(server.pid(), "--stage 1");
  ASSERT_EQ(now.size(), 1u);
  EXPECT_NE(now[0], killed.load());
  httplib::Client c("127.0.0.1", server.port());
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200) << h->body;
  const std::string log = server.log_text();
  EXPECT_NE(log.find("restarted stage 1"), std::string::npos) << log;
  EXPECT_EQ(log.find(" 0 requests are recomputed"), std::string::npos) << log;
  if (std::getenv("PP_TEST_VERBOSE")) fmt::print("{}", log);
  EXPECT_EQ(server.terminate(), 0) << server.log_text();
  EXPECT_FALSE(server.group_alive());
}

TEST_F(ServeFaultsTest, KilledServerLeavesNoStageAndItsRunIsMarkedAbnormal) {
  ServeProcess server;
  ASSERT_TRUE(start(server, "serve-1.log"));
  const std::vector<pid_t> stages = children(server.pid(), "pp-stage");
  ASSERT_EQ(stages.size(), 3u);
  // A request in flight, so that the stages are busy when their coordinator dies.
  std::thread client([&] { (void)stream_completion(server.port(), "busy", true); });
  std::this_thread::sleep_for(200ms);
  ::kill(server.pid(), SIGKILL);
  EXPECT_EQ(server.wait(10s), 128 + SIGKILL);
  client.join();
  const auto t0 = std::chrono::steady_clock::now();
  for (pid_t pid : stages) {
    while (alive(pid) && std::chrono::steady_clock::now() - t0 < 5s)
      std::this_thread::sleep_for(10ms);
    EXPECT_FALSE(alive(pid)) << "pp-stage pid " << pid << " outlived its coordinator";
  }

  // The next start finds the run without an end and marks it abnormal.
  ServeProcess next;
  ASSERT_TRUE(start(next, "serve-2.log"));
  {
    auto store = RunStore::open(db(), RunStore::OpenMode::kReadOnly);
    ASSERT_TRUE(store.ok()) << store.status().message();
    auto runs = (*store)->list_serving_runs();
    ASSERT_TRUE(runs.ok());
    ASSERT_EQ(runs->size(), 2u);
    std::map<RunOutcome, int> outcomes;
    for (const auto& r : *runs) ++outcomes[r.outcome];
    EXPECT_EQ(outcomes[RunOutcome::kAbnormal], 1);
    EXPECT_EQ(outcomes[RunOutcome::kRunning], 1);
  }
  EXPECT_EQ(next.terminate(), 0);
  EXPECT_FALSE(next.group_alive());
}

}  // namespace
}  // namespace pp::test
