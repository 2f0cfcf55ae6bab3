// Parsing and printing of byte sizes for --device-memory and the plan tables.
#include "pp/partition/byte-size.h"

#include <cctype>
#include <charconv>
#include <cmath>

namespace pp::partition {

Result<uint64_t> parse_byte_size(std::string_view text) {
  auto bad = [&] {
    return invalid_argument("invalid size '{}' (expected e.g. 80GiB, 512MiB, 1.5GB)", text);
  };
  size_t i = 0;
  while (i < text.size() && (std::isdigit(uint8_t(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return bad();
  double value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + i, value);
  if (ec != std::errc() || ptr != text.data() + i || !std::isfinite(value)) return bad();
  std::string unit;
  for (size_t j = i; j < text.size(); ++j) {
    if (std::isspace(uint8_t(text[j]))) continue;
    unit += char(std::tolower(uint8_t(text[j])));
  }
  double mult = 0;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else {
    static constexpr std::string_view kPrefixes = "kmgt";
    size_t p = kPrefixes.find(unit[0]);
    if (p == std::string_view::npos) return bad();
    std::string_view rest = std::string_view(unit).substr(1);
    double base;
    if (rest.empty() || rest == "ib" || rest == "i") {
      base = 1024;
    } else if (rest == "b") {
      base = 1000;
    } else {
      return bad();
    }
    mult = std::pow(base, double(p + 1));
  }
  double bytes = value * mult;
  if (bytes >= 1.8e19) return bad();
  return uint64_t(std::llround(bytes));
}

std::string format_bytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (std::fabs(bytes) >= 1024 && u < 5) {
    bytes /= 1024;
    ++u;
  }
  if (u == 0) return fmt::format("{:.0f} B", bytes);
  if (std::fabs(bytes) >= 100) return fmt::format("{:.0f} {}", bytes, kUnits[u]);
  if (std::fabs(bytes) >= 10) return fmt::format("{:.1f} {}", bytes, kUnits[u]);
  return fmt::format("{:.2f} {}", bytes, kUnits[u]);
}

}  // namespace pp::partition
