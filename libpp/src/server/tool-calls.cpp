// The tool-call parsers (see tool-calls.h). One scan per syntax reads the text seen so far and
// returns the content and calls already decided: when `final` is false it stops before anything
// that more text could still change (a partial marker, an unclosed call, whitespace that a call
// would swallow), so its result only ever grows as text arrives. The stream re-scans its text
// on each piece and sends what grew; the whole parse is the final scan.
#include "pp/server/tool-calls.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "pp/model/py-json.h"

namespace pp::server {

namespace {

using OJson = nlohmann::ordered_json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kMistralCalls = "[TOOL_CALLS]";

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view lstrip(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  return s;
}
std::string_view rstrip(std::string_view s) {
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}
std::string_view strip(std::string_view s) { return rstrip(lstrip(s)); }

// The length of the longest suffix of `s` that is a proper prefix of `marker`.
size_t partial_marker_suffix(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

// One call object: {"name": string, "arguments" or "parameters": object (or a string holding
// one)}. nullopt when it is not one.
std::optional<ParsedToolCall> read_call(const OJson& v) {
  if (!v.is_object()) return std::nullopt;
  auto name = v.find("name");
  if (name == v.end() || !name->is_string() || name->get<std::string>().empty()) {
    return std::nullopt;
  }
  auto args = v.find("arguments");
  if (args == v.end()) args = v.find("parameters");
  OJson a = OJson::object();
  if (args != v.end()) {
    a = *args;
    if (a.is_string()) a = OJson::parse(a.get<std::string>(), nullptr, false);
    if (!a.is_object()) return std::nullopt;
  }
  return ParsedToolCall{name->get<std::string>(), model::py_json_dumps(a)};
}

std::optional<ParsedToolCall> parse_call(std::string_view text) {
  OJson v = OJson::parse(strip(text), nullptr, false);
  if (v.is_discarded()) return std::nullopt;
  return read_call(v);
}

// A JSON array of call objects (or one call object).
std::optional<std::vector<ParsedToolCall>> parse_call_list(std::string_view text) {
  OJson v = OJson::parse(strip(text), nullptr, false);
  if (v.is_discarded()) return std::nullopt;
  std::vector<ParsedToolCall> calls;
  if (v.is_object()) v = OJson::array({std::move(v)});
  if (!v.is_array() || v.empty()) return std::nullopt;
  for (const OJson& e : v) {
    std::optional<ParsedToolCall> c = read_call(e);
    if (!c) return std::nullopt;
    calls.push_back(std::move(*c));
  }
  return calls;
}

// Where the JSON object starting at s[pos] == '{' ends (one past its '}'), or npos when it does
// not end within s.
size_t object_end(std::string_view s, size_t pos) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = pos; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string_view::npos;
}

// Llama 3.1: objects separated by ';'. nullopt unless the whole text is calls.
std::optional<std::vector<ParsedToolCall>> parse_llama3_calls(std::string_view text) {
  std::vector<ParsedToolCall> calls;
  size_t pos = 0;
  for (;;) {
    while (pos < text.size() && is_space(text[pos])) ++pos;
    if (pos >= text.size() || text[pos] != '{') return std::nullopt;
    const size_t end = object_end(text, pos);
    if (end == std::string_view::npos) return std::nullopt;
    std::optional<ParsedToolCall> c = parse_call(text.substr(pos, end - pos));
    if (!c) return std::nullopt;
    calls.push_back(std::move(*c));
    pos = end;
    while (pos < text.size() && is_space(text[pos])) ++pos;
    if (pos == text.size()) return calls;
    if (text[pos] != ';') return std::nullopt;
    ++pos;
  }
}

struct Scan {
  std::string content;
  std::vector<ParsedToolCall> calls;
};

// Text outside calls, up to an opening `marker` or the end. after_call: a call came just before
// (its leading whitespace goes). Returns where the scan stopped: at the marker, or (not final)
// before a partial marker or trailing whitespace.
size_t scan_text(std::string_view text, size_t pos, std::string_view marker, bool after_call,
                 bool final, std::string* content, size_t* marker_at) {
  const size_t m = text.find(marker, pos);
  *marker_at = m;
  std::string_view seg = text.substr(pos, m == std::string_view::npos ? text.npos : m - pos);
  if (after_call) seg = lstrip(seg);
  if (m != std::string_view::npos || !final) {
    // Before a marker (or what may become one) the whitespace waits for the call's verdict.
    if (m == std::string_view::npos) seg.remove_suffix(partial_marker_suffix(seg, marker));
    seg = rstrip(seg);
  }
  content->append(seg);
  return m;
}

Scan scan_hermes(std::string_view text, bool final) {
  Scan out;
  size_t pos = 0;
  bool after_call = false;
  for (;;) {
    size_t m = 0;
    const size_t seg_begin = pos;
    const size_t content_before = out.content.size();
    scan_text(text, pos, kHermesOpen, after_call, final, &out.content, &m);
    if (m == std::string_view::npos) return out;
    const size_t body = m + kHermesOpen.size();
    const size_t close = text.find(kHermesClose, body);
    std::optional<ParsedToolCall> call;
    size_t next = 0;
    if (close != std::string_view::npos) {
      call = parse_call(text.substr(body, close - body));
      next = close + kHermesClose.size();
    } else if (final) {
      call = parse_call(text.substr(body));  // stopped before its closing tag
      next = text.size();
    } else {
      return out;  // undecided: more text will tell
    }
    if (call) {
      out.calls.push_back(std::move(*call));
      after_call = true;
    } else {
      // Not a call: the whole span is text, its whitespace included.
      out.content.resize(content_before);
      std::string_view seg = text.substr(seg_begin, next - seg_begin);
      out.content.append(after_call ? lstrip(seg) : seg);
      after_call = false;
    }
    pos = next;
  }
}

Scan scan_llama3(std::string_view text, bool final) {
  Scan out;
  const std::string_view body = lstrip(text);
  const bool tagged = body.starts_with(kPythonTag);
  const bool maybe_call = tagged || body.starts_with("{") ||
                          (!final && kPythonTag.starts_with(body));  // empty or a partial tag
  if (!maybe_call) {
    out.content = text;
    return out;
  }
  if (!final) return out;  // a call is only known at the end
  std::optional<std::vector<ParsedToolCall>> calls =
      parse_llama3_calls(tagged ? body.substr(kPythonTag.size()) : body);
  if (calls) {
    out.calls = std::move(*calls);
  } else {
    out.content = text;
  }
  return out;
}

Scan scan_mistral(std::string_view text, bool final) {
  Scan out;
  // [TOOL_CALLS] is a special token, left out of the text when special tokens are skipped: an
  // output that is a bare JSON array may be the calls, decided at the end.
  const std::string_view body = lstrip(text);
  const bool bare =
      body.starts_with("[") && !body.starts_with(kMistralCalls) && !kMistralCalls.starts_with(body);
  if (bare && !final) return out;
  if (bare && text.find(kMistralCalls) == std::string_view::npos) {
    std::optional<std::vector<ParsedToolCall>> calls = parse_call_list(body);
    if (calls) {
      out.calls = std::move(*calls);
    } else {
      out.content = text;
    }
    return out;
  }
  size_t m = 0;
  scan_text(text, 0, kMistralCalls, false, final, &out.content, &m);
  if (m == std::string_view::npos || !final) return out;
  std::optional<std::vector<ParsedToolCall>> calls =
      parse_call_list(text.substr(m + kMistralCalls.size()));
  if (calls) {
    out.calls = std::move(*calls);
  } else {
    out.content = text;
  }
  return out;
}

Scan scan_json_array(std::string_view text, bool final) {
  Scan out;
  if (!final) return out;
  std::optional<std::vector<ParsedToolCall>> calls = parse_call_list(text);
  if (calls && strip(text).starts_with("[")) {
    out.calls = std::move(*calls);
  } else {
    out.content = text;
  }
  return out;
}

Scan scan(ToolCallSyntax syntax, std::string_view text, bool final) {
  switch (syntax) {
    case ToolCallSyntax::kHermes:
      return scan_hermes(text, final);
    case ToolCallSyntax::kLlama3Json:
      return scan_llama3(text, final);
    case ToolCallSyntax::kMistral:
      return scan_mistral(text, final);
    case ToolCallSyntax::kJsonArray:
      return scan_json_array(text, final);
  }
  return {};
}

}  // namespace

const char* tool_call_syntax_name(ToolCallSyntax s) {
  switch (s) {
    case ToolCallSyntax::kHermes:
      return "hermes";
    case ToolCallSyntax::kLlama3Json:
      return "llama3_json";
    case ToolCallSyntax::kMistral:
      return "mistral";
    case ToolCallSyntax::kJsonArray:
      return "json_array";
  }
  return "unknown";
}

ToolCallSyntax tool_call_syntax_for(model::ChatFormat f) {
  switch (f) {
    case model::ChatFormat::kLlama3:
    case model::ChatFormat::kLlama31:
      return ToolCallSyntax::kLlama3Json;
    case model::ChatFormat::kMistral:
      return ToolCallSyntax::kMistral;
    case model::ChatFormat::kChatML:
    case model::ChatFormat::kLlama2:
      break;
  }
  return ToolCallSyntax::kHermes;
}

ParsedToolOutput parse_tool_calls(ToolCallSyntax syntax, std::string_view text) {
  Scan s = scan(syntax, text, true);
  return {std::move(s.content), std::move(s.calls)};
}

ToolCallDelta ToolCallStream::feed(std::string_view piece, bool final) {
  text_.append(piece);
  Scan s = scan(syntax_, text_, final);
  ToolCallDelta d;
  // The scan only grows (see the top of the file), so what was sent is its prefix.
  if (s.content.size() > n_sent_content_) {
    d.content = s.content.substr(n_sent_content_);
    n_sent_content_ = s.content.size();
  }
  for (size_t i = n_sent_calls_; i < s.calls.size() && i < max_calls_; ++i) {
    d.calls.push_back(std::move(s.calls[i]));
  }
  n_sent_calls_ += d.calls.size();
  return d;
}

}  // namespace pp::server
