// Python's json.dumps(ensure_ascii=False) layout over nlohmann's ordered JSON (see py-json.h).
#include "pp/model/py-json.h"

#include <fmt/format.h>

namespace pp::model {

namespace {

void dump_string(const std::string& s, std::string* out) {
  *out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (c < 0x20) {
          *out += fmt::format("\\u{:04x}", c);
        } else {
          *out += ch;
        }
    }
  }
  *out += '"';
}

void dump(const nlohmann::ordered_json& v, int indent, int depth, std::string* out) {
  const bool pretty = indent >= 0;
  auto newline = [&](int d) {
    *out += '\n';
    out->append(size_t(indent) * size_t(d), ' ');
  };
  if (v.is_object()) {
    if (v.empty()) {
      *out += "{}";
      return;
    }
    *out += '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) *out += pretty ? "," : ", ";
      first = false;
      if (pretty) newline(depth + 1);
      dump_string(it.key(), out);
      *out += ": ";
      dump(it.value(), indent, depth + 1, out);
    }
    if (pretty) newline(depth);
    *out += '}';
  } else if (v.is_array()) {
    if (v.empty()) {
      *out += "[]";
      return;
    }
    *out += '[';
    bool first = true;
    for (const auto& e : v) {
      if (!first) *out += pretty ? "," : ", ";
      first = false;
      if (pretty) newline(depth + 1);
      dump(e, indent, depth + 1, out);
    }
    if (pretty) newline(depth);
    *out += ']';
  } else if (v.is_string()) {
    dump_string(v.get<std::string>(), out);
  } else if (v.is_boolean()) {
    *out += v.get<bool>() ? "true" : "false";
  } else if (v.is_null()) {
    *out += "null";
  } else {
    *out += v.dump();  // numbers: the shortest text that reads back, as Python's repr
  }
}

}  // namespace

std::string py_json_dumps(const nlohmann::ordered_json& v, int indent) {
  std::string out;
  dump(v, indent, 0, &out);
  return out;
}

}  // namespace pp::model
