// What the run store needs to know about processes on this host: the host name, and whether a
// recorded coordinator process is still alive. A pid alone can be reused by an unrelated process
// after the first one died, so the store also keeps the process's start time (field 22 of
// /proc/PID/stat, clock ticks since boot) and compares it when the process is checked.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pp::store_detail {

// This machine's host name (gethostname), "" when unknown.
std::string this_host();

// The start time of process `pid` in clock ticks since boot, or nullopt when the process does
// not exist or /proc cannot tell (not Linux).
std::optional<int64_t> process_start_ticks(int64_t pid);

// Whether process `pid` on this host is alive and, when `start_ticks` is given, is the same
// process that had that start time. A zombie (dead, not yet reaped) counts as dead.
bool process_alive(int64_t pid, std::optional<int64_t> start_ticks);

}  // namespace pp::store_detail
