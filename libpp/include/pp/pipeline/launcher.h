// The stage launcher: starts local pp-stage processes for pp-serve and watches them.
//
// A launched stage dies with the thread that launched it (prctl PR_SET_PDEATHSIG, SIGKILL), so
// a coordinator that crashes or is killed leaves no orphan stage behind; launch from a thread
// that lives as long as the stages (the coordinator thread does). The child's stdout and stderr
// are the parent's. When OMP_WAIT_POLICY is not set, children get PASSIVE: several stages share
// the cores of one host, and OpenMP threads spinning while their stage waits for activations
// would steal them from the stage that computes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "pp/status.h"

namespace pp::pipeline {

// The pp-stage binary: $PP_STAGE_BINARY when set, else pp-stage in the folder of the running
// executable (/proc/self/exe).
std::filesystem::path default_stage_binary();

struct StageLaunch {
  std::filesystem::path binary;  // the pp-stage executable
  std::string coordinator;       // endpoint passed as --coordinator
  int32_t stage = 0;             // --stage
  int32_t rank = -1;             // --rank in the stage's tensor-parallel group (-1: not passed)
  int32_t threads = 0;           // --threads (0: leave it to the coordinator's Assign)
  std::string log_level;         // --log-level, when not empty
  std::vector<std::string> extra_args;
};

// One child process. Not copyable; moving keeps the process. Destroying a handle whose process
// still runs kills it (SIGKILL) and reaps it.
class StageProcess {
 public:
  static Result<StageProcess> spawn(const StageLaunch& launch);

  StageProcess(StageProcess&& other) noexcept;
  StageProcess& operator=(StageProcess&& other) noexcept;
  ~StageProcess();

  pid_t pid() const { return pid_; }
  int32_t stage() const { return stage_; }
  bool running() const { return pid_ > 0 && !exit_status_; }
  // Reaps the process if it has exited (never blocks). Returns its exit description once it
  // has exited ("exited with status 1", "killed by signal 9").
  std::optional<std::string> poll();
  // Waits up to `timeout` for the process to exit; true when it has.
  bool wait(std::chrono::milliseconds timeout);
  // Sends `signal` (SIGTERM, SIGKILL) if it still runs.
  void signal(int signal);

 private:
  StageProcess(pid_t pid, int32_t stage) : pid_(pid), stage_(stage) {}
  pid_t pid_ = -1;
  int32_t stage_ = 0;
  std::optional<std::string> exit_status_;
};

}  // namespace pp::pipeline
