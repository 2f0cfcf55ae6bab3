// Names of the run store's enums as stored in the database, and the clock used for timestamps.
#include "pp/store/records.h"

#include <chrono>

namespace pp {

int64_t unix_ms_now() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

const char* run_outcome_name(RunOutcome outcome) {
  switch (outcome) {
    case RunOutcome::kRunning:
      return "running";
    case RunOutcome::kOk:
      return "ok";
    case RunOutcome::kError:
      return "error";
    case RunOutcome::kAbnormal:
      return "abnormal";
  }
  return "?";
}

std::optional<RunOutcome> parse_run_outcome(std::string_view name) {
  for (RunOutcome o :
       {RunOutcome::kRunning, RunOutcome::kOk, RunOutcome::kError, RunOutcome::kAbnormal}) {
    if (name == run_outcome_name(o)) return o;
  }
  return std::nullopt;
}

const char* bench_kind_name(BenchKind kind) {
  switch (kind) {
    case BenchKind::kServe:
      return "serve";
    case BenchKind::kOffline:
      return "offline";
    case BenchKind::kSweep:
      return "sweep";
  }
  return "?";
}

std::optional<BenchKind> parse_bench_kind(std::string_view name) {
  for (BenchKind k : {BenchKind::kServe, BenchKind::kOffline, BenchKind::kSweep}) {
    if (name == bench_kind_name(k)) return k;
  }
  return std::nullopt;
}

}  // namespace pp
