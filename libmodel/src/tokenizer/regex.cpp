// PCRE2 wrapper for the pre-tokenizer and normalizer patterns (see regex.h).
#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/unicode.h"

namespace pp::model::tok {

namespace {

// Per-thread match data and JIT stack, grown on demand, so that matching never allocates.
struct ThreadMatchState {
  pcre2_match_data* data = nullptr;
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* context = nullptr;
  ThreadMatchState() {
    data = pcre2_match_data_create(16, nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    context = pcre2_match_context_create(nullptr);
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchState() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(data);
  }
};

ThreadMatchState& match_state() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

Result<std::shared_ptr<const Regex>> Regex::compile(std::string_view pattern) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(error, buf, sizeof(buf));
    return invalid_argument("cannot compile regex '{}' at offset {}: {}", pattern, error_offset,
                            reinterpret_cast<const char*>(buf));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when it fails
  std::shared_ptr<Regex> r(new Regex());
  r->pattern_ = std::string(pattern);
  r->code_ = code;
  return std::shared_ptr<const Regex>(std::move(r));
}

Result<std::shared_ptr<const Regex>> Regex::literal(std::string_view literal) {
  std::string quoted = "\\Q";
  // \E cannot appear inside \Q...\E: split it out.
  for (size_t i = 0; i < literal.size(); ++i) {
    if (literal[i] == '\\' && i + 1 < literal.size() && literal[i + 1] == 'E') {
      quoted += "\\E\\\\\\QE";
      ++i;
    } else {
      quoted += literal[i];
    }
  }
  quoted += "\\E";
  return compile(quoted);
}

// A tokenizer.json pattern: {"String": "..."} or {"Regex": "..."}.
Result<std::shared_ptr<const Regex>> make_pattern(const nlohmann::json& p) {
  if (p.is_object() && p.contains("String")) return Regex::literal(p["String"].get<std::string>());
  if (p.is_object() && p.contains("Regex")) return Regex::compile(p["Regex"].get<std::string>());
  if (p.is_string()) return Regex::literal(p.get<std::string>());
  return invalid_argument("bad pattern '{}'", p.dump());
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_in_run(std::string_view s, size_t base,
                        std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  ThreadMatchState& st = match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
    if (rc < 0) break;  // no match (or a resource limit: treat the rest as unmatched)
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(base + b, base + e);
      pos = e;
    } else {
      if (b >= s.size()) break;
      pos = b + utf8_char_len(s, b);  // an empty match: step over one character
    }
  }
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view s) const {
  std::vector<std::pair<size_t, size_t>> out;
  size_t run = 0, i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t n = utf8_valid_len(s, i);
    if (n > 0) {
      i += n;
      continue;
    }
    if (i > run) find_in_run(s.substr(run, i - run), run, out);
    ++i;
    run = i;
  }
  if (s.size() > run || s.empty()) find_in_run(s.substr(run), run, out);
  return out;
}

}  // namespace pp::model::tok
