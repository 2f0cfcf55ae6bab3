// Shared helpers of the tokenizer tests: loading the reference fixtures written by
// scripts/make-tokenizer-fixtures.py and checking UTF-8 validity.
#pragma once

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "test-util.h"

namespace pp::test {

inline nlohmann::json load_tokenizer_fixture(const std::string& rel) {
  std::ifstream in(fixture_dir() / "tokenizers" / rel);
  if (!in) return nullptr;
  return nlohmann::json::parse(in);
}

// Strict UTF-8 validity (no overlongs, surrogates or code points above U+10FFFF).
inline bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0, n = s.size(); i < n;) {
    const unsigned c = p[i];
    size_t len = c < 0x80                   ? 1
                 : (c >= 0xC2 && c <= 0xDF) ? 2
                 : (c >= 0xE0 && c <= 0xEF) ? 3
                 : (c >= 0xF0 && c <= 0xF4) ? 4
                                            : 0;
    if (len == 0 || i + len > n) return false;
    for (size_t k = 1; k < len; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return false;
    if (c == 0xE0 && p[i + 1] < 0xA0) return false;
    if (c == 0xED && p[i + 1] >= 0xA0) return false;
    if (c == 0xF0 && p[i + 1] < 0x90) return false;
    if (c == 0xF4 && p[i + 1] >= 0x90) return false;
    i += len;
  }
  return true;
}

}  // namespace pp::test
