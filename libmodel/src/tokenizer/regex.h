// A compiled PCRE2 pattern (UTF + UCP, JIT when available) that finds all matches in a string
// that may hold invalid UTF-8: PCRE2 only ever sees the valid runs, and invalid bytes are never
// part of a match. Safe to share between threads (each call has its own match data).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/status.h"

namespace pp::model::tok {

class Regex {
 public:
  static Result<std::shared_ptr<const Regex>> compile(std::string_view pattern);
  // A pattern that matches `literal` exactly.
  static Result<std::shared_ptr<const Regex>> literal(std::string_view literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The [begin, end) byte ranges of the successive non-empty, non-overlapping matches.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;
  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  void find_in_run(std::string_view s, size_t base,
                   std::vector<std::pair<size_t, size_t>>& out) const;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code*
};

// A tokenizer.json pattern: {"String": "..."} (a literal) or {"Regex": "..."}.
Result<std::shared_ptr<const Regex>> make_pattern(const nlohmann::json& p);

}  // namespace pp::model::tok
