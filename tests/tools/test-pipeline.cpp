// The pipeline through its binaries: pp-stage's --help and man page agree; pp-serve's one-shot
// mode (through the engine, one stage or two) prints what the in-process Generator makes; and the
// coordinator with stages on different "hosts": distinct loopback addresses over tcp://, and
// (when network namespaces can be made) separate network namespaces joined by veth pairs.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "../pp/test-engine-util.h"
#include "pp/model/chat-template.h"
#include "pp/partition/model-resolver.h"
#include "pp/pipeline/launcher.h"
#include "pp/transport/channel.h"

namespace pp::test {
namespace {

namespace fs = std::filesystem;

std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  *rc = ::pclose(p);
  return out;
}

fs::path tool(const std::string& name) { return fs::path(PP_BUILD_DIR) / "tools" / name; }

std::set<std::string> long_options(const std::string& text) {
  std::set<std::string> out;
  std::regex re(R"((?:^|[\s,\[])--([a-z][a-z0-9-]+))");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it) {
    out.insert((*it)[1]);
  }
  return out;
}

TEST(PpStage, HelpAndManPageNameTheSameOptions) {
  int rc = 0;
  const std::string help = run_capture(tool("pp-stage").string() + " --help", &rc);
  ASSERT_EQ(rc, 0) << help;
  std::ifstream f(source_dir() / "man" / "pp-stage.1");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string all = std::regex_replace(ss.str(), std::regex(R"(\\-)"), "-");
  ASSERT_FALSE(all.empty());
  // The synopsis and the options section (the description also names pp-serve's options).
  auto section = [&](const std::string& from, const std::string& to) {
    const size_t a = all.find(from), b = all.find(to);
    return a == std::string::npos || b == std::string::npos ? std::string() : all.substr(a, b - a);
  };
  const std::string man =
      section(".SH SYNOPSIS", ".SH DESCRIPTION") + section(".SH OPTIONS", ".SH EXIT STATUS");
  ASSERT_FALSE(man.empty());
  auto in_help = long_options(help), in_man = long_options(man);
  in_help.erase("help");
  in_man.erase("help");
  for (const auto& o : in_help) EXPECT_TRUE(in_man.count(o)) << "--" << o << " missing from man";
  for (const auto& o : in_man)
    EXPECT_TRUE(in_help.count(o)) << "--" << o << " only in the man page";
}

TEST(PpStage, ExitsWhenTheCoordinatorIsUnreachable) {
  int rc = 0;
  const std::string out =
      run_capture(tool("pp-stage").string() +
                      " --coordinator tcp://127.0.0.1:1 --stage 0 --connect-timeout 0.3 2>&1",
                  &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("coordinator"), std::string::npos) << out;
}

// A stage whose coordinator vanishes (here: its socket closes after the Hello) exits on its own,
// with an error, instead of waiting forever.
TEST(PpStage, ExitsWhenTheCoordinatorGoesAway) {
  TempDir dir;
  auto server = transport::ControlServer::bind("ipc://" + (dir.path() / "control").string());
  ASSERT_TRUE(server.ok()) << server.status().message();
  pipeline::StageLaunch l;
  l.binary = stage_binary();
  l.coordinator = server->endpoint();
  l.stage = 0;
  l.log_level = "warn";
  l.extra_args = {"--timeout", "2"};
  auto p = pipeline::StageProcess::spawn(l);
  ASSERT_TRUE(p.ok()) << p.status().message();
  bool hello = false;
  const auto t0 = std::chrono::steady_clock::now();
  while (!hello && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)) {
    auto got = server->receive(std::chrono::milliseconds(100));
    ASSERT_TRUE(got.ok());
    hello = got->has_value() && std::holds_alternative<transport::Hello>((*got)->message);
  }
  ASSERT_TRUE(hello);
  server = transport::ControlServer::bind("ipc://" + (dir.path() / "other").string());
  ASSERT_TRUE(p->wait(std::chrono::milliseconds(8000))) << "the stage is still running";
  EXPECT_EQ(p->poll().value_or(""), "exited with status 1");
}

// What the in-process Generator (the reference) writes for `prompt` through the model's chat
// template, greedy, as pp-serve's one-shot mode prints it: the text, then a newline.
std::string reference_one_shot(const fs::path& model, const std::string& prompt,
                               int64_t max_tokens) {
  auto m = partition::resolve_model(model);
  EXPECT_TRUE(m.ok()) << m.status().message();
  if (!m.ok()) return {};
  auto tok = m->load_tokenizer();
  EXPECT_TRUE(tok.ok()) << tok.status().message();
  if (!tok.ok()) return {};
  const model::Tokenizer& t = **tok;
  auto tmpl = model::ChatTemplate::from_jinja(m->chat_template(), t.id_to_token(*t.bos_id()),
                                              t.id_to_token(*t.eos_id()));
  EXPECT_TRUE(tmpl.ok()) << tmpl.status().message();
  if (!tmpl.ok()) return {};
  const std::vector<model::ChatMessage> messages = {{"user", prompt}};
  auto text = tmpl->apply(messages, /*add_generation_prompt=*/true);
  EXPECT_TRUE(text.ok());
  if (!text.ok()) return {};
  auto src = model::open_model(model);
  EXPECT_TRUE(src.ok()) << src.status().message();
  if (!src.ok()) return {};
  auto sm = model::StageModel::load(src->config, *src->weights, 0, src->config.n_layer);
  EXPECT_TRUE(sm.ok()) << sm.status().message();
  if (!sm.ok()) return {};
  model::GenerationRequest req;
  req.prompt_ids = t.encode(*text, /*add_special=*/false);
  req.params.max_tokens = max_tokens;
  req.params.temperature = 0.0f;
  model::Generator gen(**sm, &t);
  auto out = gen.generate(std::span(&req, 1));
  EXPECT_TRUE(out.ok()) << out.status().message();
  if (!out.ok()) return {};
  std::string printed = (*out)[0].text;
  if (!printed.empty() && printed.back() != '\n') printed += '\n';
  return printed;
}

// pp-serve's one-shot mode runs through the engine, one stage unless --pp says otherwise; its
// text is the in-process Generator's, token for token, with one stage or two, and its summary is
// one line on stderr.
TEST(PpServe, OneShotThroughTheEngineMatchesTheInProcessGenerator) {
  const fs::path model = default_model_path();
  if (!fs::exists(model)) GTEST_SKIP() << "default model missing: " << model;
  const std::string expected = reference_one_shot(model, "Name three colours.", 24);
  ASSERT_FALSE(expected.empty());
  TempDir dir;
  const std::string base = tool("pp-serve").string() + " --model '" + model.string() +
                           "' --prompt 'Name three colours.' --max-tokens 24 --db '" +
                           (dir.path() / "runs.db").string() + "'";
  int rc = 0;
  const fs::path err = dir.path() / "stderr.txt";
  const std::string single = run_capture(base + " --threads 1 2>'" + err.string() + "'", &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(single, expected);
  std::ifstream f(err);
  std::stringstream summary;
  summary << f.rdbuf();
  EXPECT_TRUE(std::regex_search(summary.str(),
                                std::regex(R"(^pp-serve: \d+ prompt tokens, 24 generated tokens )"
                                           R"(\(length\), prefill [0-9.]+ tok/s, decode [0-9.]+ )"
                                           R"(tok/s, 1 threads, 1 stage \(async depth 1\))")))
      << summary.str();
  for (int P : {1, 2}) {
    const fs::path trace = dir.path() / fmt::format("trace-{}.json", P);
    const std::string piped =
        run_capture(base +
                        fmt::format(" --pp {} --async-depth 1 --threads-per-stage 1 --trace '{}'",
                                    P, trace.string()) +
                        " 2>/dev/null",
                    &rc);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(piped, expected) << P << " stages";
    EXPECT_TRUE(fs::exists(trace));
  }
}

// The loopback "hosts": coordinator on 127.0.0.1, stage 0 receiving on 127.0.0.2, stage 1 on
// 127.0.0.3, everything over tcp://.
TEST(Pipeline, StagesOnDistinctLoopbackAddresses) {
  const fs::path model = fixture_dir() / "models" / "tiny-llama";
  auto src = model::open_model(model);
  ASSERT_TRUE(src.ok());
  auto reqs = make_requests(24, src->config.n_vocab, 30, 16, rng());
  const auto ref = reference_outputs(model, reqs);

  auto o = engine_options(model, 2, 1);
  o.listen = "tcp://127.0.0.1:0";
  o.launch_local_stages = false;
  o.register_timeout = std::chrono::milliseconds(30000);
  std::vector<pipeline::StageProcess> stages;
  Status spawned;
  o.on_listening = [&](const std::string& endpoint) {
    for (int k = 0; k < 2; ++k) {
      pipeline::StageLaunch l;
      l.binary = stage_binary();
      l.coordinator = endpoint;
      l.stage = k;
      l.threads = 1;
      l.log_level = "warn";
      l.extra_args = {"--data-address", fmt::format("127.0.0.{}", 2 + k)};
      auto p = pipeline::StageProcess::spawn(l);
      if (!p.ok()) {
        spawned = p.status();
        return;
      }
      stages.push_back(std::move(*p));
    }
  };
  auto engine = pipeline::Engine::start(o);
  ASSERT_TRUE(spawned.ok()) << spawned.message();
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  EXPECT_EQ((*engine)->endpoint().rfind("tcp://127.0.0.1:", 0), 0u) << (*engine)->endpoint();
  ASSERT_EQ((*engine)->stages().size(), 2u);
  EXPECT_EQ((*engine)->stages()[0].data_endpoint.rfind("tcp://127.0.0.2:", 0), 0u);
  EXPECT_EQ((*engine)->stages()[1].data_endpoint.rfind("tcp://127.0.0.3:", 0), 0u);
  const auto out = run_requests(**engine, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    EXPECT_EQ(out[i].tokens, ref[i]) << "request " << i;
  }
  ASSERT_TRUE((*engine)->shutdown().ok());
  // Remote stages exit on the coordinator's Shutdown.
  for (auto& p : stages) EXPECT_TRUE(p.wait(std::chrono::milliseconds(5000))) << p.stage();
}

// Runs a shell command; true when it exits 0.
bool sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

// Starts `argv` as a child; returns its pid.
pid_t spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// Two network namespaces, each with a veth pair to a bridge in this namespace: the coordinator
// listens on the bridge's address, each stage runs in its own namespace with its own address.
class NetnsPair {
 public:
  NetnsPair() {
    const int n = int(::getpid() % 200) + 20;
    tag_ = std::to_string(::getpid() % 100000);
    subnet_ = fmt::format("10.213.{}", n);
    ok_ = sh("ip netns add ppa" + tag_) && sh("ip netns add ppb" + tag_) &&
          sh("ip link add ppbr" + tag_ + " type bridge") &&
          sh(fmt::format("ip addr add {}.1/24 dev ppbr{}", subnet_, tag_)) &&
          sh("ip link set ppbr" + tag_ + " up") && join("a", 2) && join("b", 3);
  }
  ~NetnsPair() {
    sh("ip netns del ppa" + tag_);
    sh("ip netns del ppb" + tag_);
    sh("ip link del ppbr" + tag_);
  }
  bool ok() const { return ok_; }
  std::string ns(const char* which) const { return std::string("pp") + which + tag_; }
  std::string address(int host) const { return fmt::format("{}.{}", subnet_, host); }

 private:
  bool join(const std::string& which, int host) {
    const std::string ns = "pp" + which + tag_, outer = "pv" + which + tag_ + "o",
                      inner = "pv" + which + tag_ + "i";
    return sh(fmt::format("ip link add {} type veth peer name {}", outer, inner)) &&
           sh(fmt::format("ip link set {} netns {}", inner, ns)) &&
           sh(fmt::format("ip link set {} master ppbr{} up", outer, tag_)) &&
           sh(fmt::format("ip netns exec {} ip addr add {}.{}/24 dev {}", ns, subnet_, host,
                          inner)) &&
           sh(fmt::format("ip netns exec {} ip link set {} up", ns, inner)) &&
           sh(fmt::format("ip netns exec {} ip link set lo up", ns));
  }
  std::string tag_, subnet_;
  bool ok_ = false;
};

TEST(Pipeline, StagesInSeparateNetworkNamespaces) {
  NetnsPair net;
  if (!net.ok()) GTEST_SKIP() << "cannot create network namespaces (needs root and iproute2)";
  const fs::path model = fixture_dir() / "models" / "tiny-qwen2";
  auto src = model::open_model(model);
  ASSERT_TRUE(src.ok());
  auto reqs = make_requests(16, src->config.n_vocab, 30, 16, rng());
  const auto ref = reference_outputs(model, reqs);

  auto o = engine_options(model, 2, 1);
  o.listen = "tcp://" + net.address(1) + ":0";
  o.launch_local_stages = false;
  o.register_timeout = std::chrono::milliseconds(30000);
  std::vector<pid_t> pids;
  o.on_listening = [&](const std::string& endpoint) {
    const char* names[] = {"a", "b"};
    for (int k = 0; k < 2; ++k) {
      pids.push_back(
          spawn({"ip", "netns", "exec", net.ns(names[k]), stage_binary().string(), "--coordinator",
                 endpoint, "--stage", std::to_string(k), "--threads", "1", "--log-level", "warn"}));
    }
  };
  auto engine = pipeline::Engine::start(o);
  if (!engine.ok()) {
    for (pid_t p : pids) ::kill(p, SIGKILL), ::waitpid(p, nullptr, 0);
    FAIL() << engine.status().message();
  }
  // Each stage registered from its own namespace: its activations arrive on its own address.
  ASSERT_EQ((*engine)->stages().size(), 2u);
  EXPECT_EQ((*engine)->stages()[0].data_endpoint.rfind("tcp://" + net.address(2) + ":", 0), 0u)
      << (*engine)->stages()[0].data_endpoint;
  EXPECT_EQ((*engine)->stages()[1].data_endpoint.rfind("tcp://" + net.address(3) + ":", 0), 0u)
      << (*engine)->stages()[1].data_endpoint;
  const auto out = run_requests(**engine, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    EXPECT_EQ(out[i].tokens, ref[i]) << "request " << i;
  }
  EXPECT_TRUE((*engine)->shutdown().ok());
  for (pid_t p : pids) {
    int status = 0;
    for (int i = 0; i < 100 && ::waitpid(p, &status, WNOHANG) == 0; ++i) ::usleep(50000);
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, WNOHANG);
  }
}

}  // namespace
}  // namespace pp::test
