// The progress bar's text (see progress.h).
#include "pp/bench/progress.h"

#include <algorithm>

#include <fmt/format.h>

namespace pp::bench {

std::string render_progress(int64_t done, int64_t total, double elapsed_s, int width) {
  total = std::max<int64_t>(total, 1);
  done = std::clamp<int64_t>(done, 0, total);
  const double frac = double(done) / double(total);
  const int filled = int(frac * width + 1e-9);
  std::string bar = std::string(size_t(filled), '#') + std::string(size_t(width - filled), '.');
  std::string eta =
      done > 0 && done < total
          ? fmt::format(", eta {:.1f} s", elapsed_s / double(done) * double(total - done))
          : std::string();
  const int digits = int(std::to_string(total).size());
  return fmt::format("{:>{}}/{} [{}] {:3.0f}%  {:.1f} s{}", done, digits, total, bar, frac * 100.0,
                     elapsed_s, eta);
}

}  // namespace pp::bench
