// Host name and process liveness for the run store (see process-info.h), from kill(pid, 0) and
// /proc/PID/stat.
#include "store/process-info.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <fstream>
#include <sstream>

namespace pp::store_detail {
namespace {

struct ProcStat {
  char state = '?';
  int64_t start_ticks = 0;
};

std::optional<ProcStat> read_proc_stat(int64_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  if (!f) return std::nullopt;
  std::string line;
  std::getline(f, line);
  // The command name (field 2) is in parentheses and may itself hold spaces and ')'.
  size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  ProcStat st;
  rest >> st.state;  // field 3
  std::string skip;
  for (int field = 4; field < 22; ++field) rest >> skip;
  rest >> st.start_ticks;  // field 22
  if (!rest) return std::nullopt;
  return st;
}

}  // namespace

std::string this_host() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return {};
  return buf;
}

std::optional<int64_t> process_start_ticks(int64_t pid) {
  auto st = read_proc_stat(pid);
  if (!st) return std::nullopt;
  return st->start_ticks;
}

bool process_alive(int64_t pid, std::optional<int64_t> start_ticks) {
  if (pid <= 0 || pid > INT_MAX) return false;
  // EPERM: the process exists but belongs to another user.
  if (kill(pid_t(pid), 0) != 0 && errno != EPERM) return false;
  auto st = read_proc_stat(pid);
  if (!st) return true;  // exists, but /proc cannot say more
  if (st->state == 'Z' || st->state == 'X') return false;
  if (start_ticks && st->start_ticks != *start_ticks) return false;  // pid reused
  return true;
}

}  // namespace pp::store_detail
