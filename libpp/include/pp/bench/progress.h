// A text progress bar for a running benchmark, drawn by the tool on stderr (libraries never
// print): "  37/100 [###########...................]  37%  4.1 s, eta 7.0 s".
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace pp::bench {

// Called as requests finish: done of total, from any thread (calls are serialised by the caller).
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// One line (no newline) showing `done` of `total` after `elapsed_s` seconds, `width` cells wide.
std::string render_progress(int64_t done, int64_t total, double elapsed_s, int width = 30);

}  // namespace pp::bench
