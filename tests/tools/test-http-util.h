// Helpers for the HTTP tests (tests/tools/test-http*.cpp): a tiny chat model whose tokenizer fits
// its 256-token vocabulary, a pp-serve process started on a free port and stopped with SIGTERM
// (or killed, stages included, when a test fails midway), and the fixture of a suite sharing one.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test-util.h"

namespace pp::test {

// GPT-2's byte-to-unicode map: the printable character standing for each byte.
inline std::string byte_char(int b) {
  int cp = b;
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// A copy of tests/fixtures/models/tiny-llama (vocabulary 256) with a byte-level tokenizer: ids
// 0..252 are the bytes 0x00..0xFC (the rest never occur in UTF-8), 253 <|endoftext|> (BOS),
// 254 <|im_start|>, 255 <|im_end|> (EOS), and a ChatML chat template.
inline std::filesystem::path make_tiny_chat_model(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const fs::path src = fixture_dir() / "models" / "tiny-llama";
  fs::copy_file(src / "model.safetensors", dir / "model.safetensors",
                fs::copy_options::overwrite_existing);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(src / "config.json"));
  config["bos_token_id"] = 253;
  config["eos_token_id"] = 255;
  std::ofstream(dir / "config.json") << config.dump(2);
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 253; ++b) vocab[byte_char(b)] = b;
  nlohmann::json added = nlohmann::json::array();
  const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int i = 0; i < 3; ++i) {
    vocab[specials[i]] = 253 + i;
    added.push_back({{"id", 253 + i},
                     {"content", specials[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  nlohmann::json tok = {{"version", "1.0"},
                        {"added_tokens", added},
                        {"normalizer", nullptr},
                        {"pre_tokenizer",
                         {{"type", "ByteLevel"},
                          {"add_prefix_space", false},
                          {"trim_offsets", true},
                          {"use_regex", true}}},
                        {"post_processor", nullptr},
                        {"decoder",
                         {{"type", "ByteLevel"},
                          {"add_prefix_space", true},
                          {"trim_offsets", true},
                          {"use_regex", true}}},
                        {"model",
                         {{"type", "BPE"},
                          {"dropout", nullptr},
                          {"unk_token", nullptr},
                          {"fuse_unk", false},
                          {"byte_fallback", false},
                          {"vocab", vocab},
                          {"merges", nlohmann::json::array()}}}};
  std::ofstream(dir / "tokenizer.json") << tok.dump();
  nlohmann::json tc = {
      {"bos_token", "<|endoftext|>"},
      {"eos_token", "<|im_end|>"},
      {"chat_template",
       "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
       "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
       "{{ '<|im_start|>assistant\\n' }}{% endif %}"}};
  std::ofstream(dir / "tokenizer_config.json") << tc.dump(2);
  return dir;
}

inline std::filesystem::path serve_binary() {
  return std::filesystem::path(PP_BUILD_DIR) / "tools" / "pp-serve";
}

// pp-serve in server mode on a free port. Its stderr goes to a file; start() waits for the
// "listening on" line.
class ServeProcess {
 public:
  ServeProcess() = default;
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;
  ~ServeProcess() { kill_all(); }

  // Starts `pp-serve --port 0 ARGS...`; false (with the log) when it does not come up.
  bool start(const std::vector<std::string>& args, const std::filesystem::path& log,
             std::chrono::seconds timeout = std::chrono::seconds(90)) {
    log_ = log;
    std::vector<std::string> argv = {serve_binary().string(), "--port", "0"};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = ::fork();
    pgid_ = pid_;
    if (pid_ == 0) {
      ::setpgid(0, 0);  // its own process group: kill_all() reaches the stages too
      FILE* f = std::freopen(log.c_str(), "w", stderr);
      (void)f;
      std::freopen("/dev/null", "w", stdout);
      std::vector<char*> cargv;
      for (std::string& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    const std::regex re("listening on http://[^:]+:([0-9]+)");
    while (std::chrono::steady_clock::now() < deadline) {
      std::smatch m;
      const std::string text = log_text();
      if (std::regex_search(text, m, re)) {
        port_ = std::stoi(m[1].str());
        return true;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        ADD_FAILURE() << "pp-serve exited early:\n" << log_text();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "pp-serve did not start:\n" << log_text();
    return false;
  }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string log_text() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Sends SIGTERM; returns the exit status (or -1 when it did not exit within `timeout`).
  int terminate(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    return wait(timeout);
  }
  int wait(std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  // Whether any process of its group (the server, its stages) is still alive.
  bool group_alive() const { return pgid_ > 0 && ::kill(-pgid_, 0) == 0; }

  void kill_all() {
    if (pgid_ > 0) ::kill(-pgid_, SIGKILL);
    if (pid_ > 0) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  pid_t pgid_ = -1;
  int port_ = 0;
  std::filesystem::path log_;
};

// The fixture of a test suite that shares one pp-serve on the tiny chat model (Suite: the derived
// class, so each suite has its own). Its SetUpTestSuite calls make_model(), then start_server();
// TearDownTestSuite stops the server, expecting a clean SIGTERM exit, and removes the directory.
template <typename Suite>
class SharedServerTest : public ::testing::Test {
 protected:
  // A fresh temporary directory (dir_) holding the tiny chat model (model_).
  static void make_model() {
    dir_ = new TempDir();
    model_ = make_tiny_chat_model(dir_->path() / "tiny-chat");
  }
  // Starts `pp-serve --port 0 ARGS...` (server_), its log in dir_; a fatal failure when it does
  // not come up.
  static void start_server(const std::vector<std::string>& args) {
    server_ = new ServeProcess();
    ASSERT_TRUE(server_->start(args, dir_->path() / "serve.log"));
  }
  static void TearDownTestSuite() {
    if (server_) EXPECT_EQ(server_->terminate(), 0) << server_->log_text();
    delete server_;
    delete dir_;
    server_ = nullptr;
    dir_ = nullptr;
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::filesystem::path model_;
  static inline ServeProcess* server_ = nullptr;
};

}  // namespace pp::test
