// Starting and watching local stage processes (see launcher.h): fork, PR_SET_PDEATHSIG, execv.
// Everything the child needs is prepared before fork(), since after fork in a threaded process
// only async-signal-safe calls are allowed until exec.
#include "pp/pipeline/launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

extern char** environ;

namespace pp::pipeline {

std::filesystem::path default_stage_binary() {
  if (const char* env = std::getenv("PP_STAGE_BINARY"); env && *env) return env;
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "pp-stage";
  return self.parent_path() / "pp-stage";
}

namespace {

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("ended with wait status {}", status);
}

}  // namespace

Result<StageProcess> StageProcess::spawn(const StageLaunch& launch) {
  if (::access(launch.binary.c_str(), X_OK) != 0) {
    return not_found("cannot run stage binary '{}': {}", launch.binary.string(),
                     std::strerror(errno));
  }
  std::vector<std::string> args = {launch.binary.string(), "--coordinator", launch.coordinator,
                                   "--stage", std::to_string(launch.stage)};
  if (launch.rank >= 0) {
    args.push_back("--rank");
    args.push_back(std::to_string(launch.rank));
  }
  if (launch.threads > 0) {
    args.push_back("--threads");
    args.push_back(std::to_string(launch.threads));
  }
  if (!launch.log_level.empty()) {
    args.push_back("--log-level");
    args.push_back(launch.log_level);
  }
  args.insert(args.end(), launch.extra_args.begin(), launch.extra_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_strings;
  for (char** e = environ; e && *e; ++e) env_strings.emplace_back(*e);
  if (!std::getenv("OMP_WAIT_POLICY")) env_strings.emplace_back("OMP_WAIT_POLICY=PASSIVE");
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0)
    return internal_error("cannot fork stage {}: {}", launch.stage, std::strerror(errno));
  if (pid == 0) {
    // The child: die with the launching thread; if it is already gone, do not start at all.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return StageProcess(pid, launch.stage);
}

StageProcess::StageProcess(StageProcess&& other) noexcept
    : pid_(other.pid_), stage_(other.stage_), exit_status_(std::move(other.exit_status_)) {
  other.pid_ = -1;
}

StageProcess& StageProcess::operator=(StageProcess&& other) noexcept {
  if (this != &other) {
    if (running()) {
      signal(SIGKILL);
      wait(std::chrono::milliseconds(2000));
    }
    pid_ = other.pid_;
    stage_ = other.stage_;
    exit_status_ = std::move(other.exit_status_);
    other.pid_ = -1;
  }
  return *this;
}

StageProcess::~StageProcess() {
  if (running()) {
    signal(SIGKILL);
    wait(std::chrono::milliseconds(2000));
  }
}

std::optional<std::string> StageProcess::poll() {
  if (pid_ <= 0 || exit_status_) return exit_status_;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_status_ = describe_wait_status(status);
  } else if (r < 0 && errno == ECHILD) {
    exit_status_ = "exited (reaped elsewhere)";
  }
  return exit_status_;
}

bool StageProcess::wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (poll()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void StageProcess::signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

}  // namespace pp::pipeline
