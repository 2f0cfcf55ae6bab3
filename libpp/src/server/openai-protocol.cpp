// Parsing and validation of OpenAI and SGLang-native request bodies into ApiRequest, and the
// tokenization of their prompts (text, ids, chat messages) with the context checks.
#include "pp/server/openai-protocol.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <utility>

#include <fmt/format.h>

#include "openai-tools.h"

namespace pp::server {
namespace {

using nlohmann::json;
using Err = std::optional<ApiError>;

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a float";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    default:
      return "a value";
  }
}

ApiError type_error(const std::string& param, const char* want, const json& got) {
  return bad_request(fmt::format("'{}' must be {}, got {} ({})", param, want, type_name(got),
                                 excerpt(dump_json(got))),
                     param);
}

// The field `key` of `obj`, or null when absent or null.
const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// A JSON integer (or a float with an integral value) in [lo, hi].
Err read_int(const json& v, const std::string& param, int64_t lo, int64_t hi, int64_t* out) {
  int64_t x = 0;
  if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) {
      return bad_request(fmt::format("'{}' must be in [{}, {}], got {}", param, lo, hi, u), param);
    }
    x = int64_t(u);
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9e18) {
      return type_error(param, "an integer", v);
    }
    x = int64_t(d);
  } else {
    return type_error(param, "an integer", v);
  }
  if (x < lo || x > hi) {
    return bad_request(fmt::format("'{}' must be in [{}, {}], got {}", param, lo, hi, x), param);
  }
  *out = x;
  return std::nullopt;
}

Err get_int(const json& obj, const char* key, const std::string& param, int64_t lo, int64_t hi,
            int64_t* out, bool* given = nullptr) {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  if (given) *given = true;
  return read_int(*v, param, lo, hi, out);
}

Err get_int32(const json& obj, const char* key, const std::string& param, int64_t lo, int64_t hi,
              int32_t* out) {
  int64_t x = *out;
  if (Err e = get_int(obj, key, param, lo, hi, &x)) return e;
  *out = int32_t(x);
  return std::nullopt;
}

// A finite number in [lo, hi] (lo excluded when lo_open).
Err get_float(const json& obj, const char* key, const std::string& param, double lo, double hi,
              bool lo_open, float* out) {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) return type_error(param, "a number", *v);
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi || (lo_open && d == lo)) {
    return bad_request(fmt::format("'{}' must be a finite number in {}{}, {}], got {}", param,
                                   lo_open ? "(" : "[", lo, hi, excerpt(dump_json(*v))),
                       param);
  }
  *out = float(d);
  return std::nullopt;
}

Err get_bool(const json& obj, const char* key, const std::string& param, bool* out) {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) return type_error(param, "a boolean", *v);
  *out = v->get<bool>();
  return std::nullopt;
}

Err get_string(const json& obj, const char* key, const std::string& param, std::string* out) {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) return type_error(param, "a string", *v);
  *out = v->get<std::string>();
  return std::nullopt;
}

Err read_token_ids(const json& arr, const std::string& param, const ProtocolLimits& limits,
                   bool allow_empty, std::vector<int32_t>* out) {
  if (!arr.is_array()) return type_error(param, "an array of token ids", arr);
  if (arr.empty() && !allow_empty) return bad_request(fmt::format("'{}' is empty", param), param);
  out->clear();
  out->reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& v = arr[i];
    if (!v.is_number_integer() && !v.is_number_unsigned()) {
      return type_error(fmt::format("{}[{}]", param, i), "a token id (an integer)", v);
    }
    const bool neg = v.is_number_integer() && v.get<int64_t>() < 0;
    const uint64_t id = neg ? 0 : v.get<uint64_t>();
    if (neg || id >= uint64_t(limits.n_vocab)) {
      return bad_request(fmt::format("token id {} in '{}' is outside the vocabulary [0, {})",
                                     excerpt(v.dump()), param, limits.n_vocab),
                         param, "token_id_out_of_range");
    }
    out->push_back(int32_t(id));
  }
  return std::nullopt;
}

// "stop": a string or a list of strings.
Err get_stop(const json& obj, const char* key, const std::string& param,
             const ProtocolLimits& limits, std::vector<std::string>* out) {
  const json* v = field(obj, key);
  if (!v) return std::nullopt;
  std::vector<std::string> stops;
  if (v->is_string()) {
    stops.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) {
        return type_error(fmt::format("{}[{}]", param, i), "a string", (*v)[i]);
      }
      stops.push_back((*v)[i].get<std::string>());
    }
  } else {
    return type_error(param, "a string or an array of strings", *v);
  }
  if (int64_t(stops.size()) > limits.max_stop) {
    return bad_request(
        fmt::format("'{}' has {} strings; at most {}", param, stops.size(), limits.max_stop),
        param);
  }
  for (const std::string& s : stops) {
    if (s.empty()) return bad_request(fmt::format("'{}' has an empty string", param), param);
  }
  *out = std::move(stops);
  return std::nullopt;
}

// The sampling fields shared by the OpenAI endpoints and SGLang's sampling_params.
Err read_sampling(const json& obj, const std::string& prefix, const ProtocolLimits& limits,
                  model::SamplingParams* p) {
  auto name = [&](const char* k) { return prefix + k; };
  if (Err e = get_float(obj, "temperature", name("temperature"), 0.0, 2.0, false, &p->temperature))
    return e;
  if (Err e = get_float(obj, "top_p", name("top_p"), 0.0, 1.0, true, &p->top_p)) return e;
  if (Err e = get_int32(obj, "top_k", name("top_k"), -1, limits.n_vocab, &p->top_k)) return e;
  if (Err e = get_float(obj, "min_p", name("min_p"), 0.0, 1.0, false, &p->min_p)) return e;
  if (Err e = get_float(obj, "presence_penalty", name("presence_penalty"), -2.0, 2.0, false,
                        &p->presence_penalty))
    return e;
  if (Err e = get_float(obj, "frequency_penalty", name("frequency_penalty"), -2.0, 2.0, false,
                        &p->frequency_penalty))
    return e;
  if (Err e = get_float(obj, "repetition_penalty", name("repetition_penalty"), 0.0, 10.0, true,
                        &p->repetition_penalty))
    return e;
  if (const json* v = field(obj, "seed")) {
    if (v->is_number_unsigned()) {
      p->seed = v->get<uint64_t>();
    } else if (v->is_number_integer()) {
      p->seed = uint64_t(v->get<int64_t>());  // negative seeds are valid OpenAI seeds
    } else {
      return type_error(name("seed"), "an integer", *v);
    }
  }
  if (Err e = get_stop(obj, "stop", name("stop"), limits, &p->stop)) return e;
  if (const json* v = field(obj, "stop_token_ids")) {
    if (Err e = read_token_ids(*v, name("stop_token_ids"), limits, true, &p->stop_token_ids))
      return e;
  }
  if (Err e = get_bool(obj, "ignore_eos", name("ignore_eos"), &p->ignore_eos)) return e;
  if (Err e = get_bool(obj, "skip_special_tokens", name("skip_special_tokens"),
                       &p->skip_special_tokens))
    return e;
  return std::nullopt;
}

// --- structured output and logit bias

// OpenAI logit_bias: {"token id": bias in [-100, 100]}; ids as decimal strings (or, leniently,
// the JSON numbers some clients send in maps they build themselves).
Err read_logit_bias(const json& v, const std::string& param, const ProtocolLimits& limits,
                    std::vector<std::pair<int32_t, float>>* out) {
  if (!v.is_object()) return type_error(param, "an object of token id: bias", v);
  out->clear();
  for (const auto& [key, bias] : v.items()) {
    const std::string p = fmt::format("{}.{}", param, excerpt(key));
    int64_t id = -1;
    const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
    if (ec != std::errc() || end != key.data() + key.size() || key.empty()) {
      return bad_request(fmt::format("'{}' is not a token id", p), param);
    }
    if (id < 0 || id >= limits.n_vocab) {
      return bad_request(fmt::format("token id {} in '{}' is outside the vocabulary [0, {})", id,
                                     param, limits.n_vocab),
                         param, "token_id_out_of_range");
    }
    if (!bias.is_number()) return type_error(p, "a number", bias);
    const double b = bias.get<double>();
    if (!std::isfinite(b) || b < -100.0 || b > 100.0) {
      return bad_request(
          fmt::format("'{}' must be in [-100, 100], got {}", p, excerpt(bias.dump())), param);
    }
    out->emplace_back(int32_t(id), float(b));
  }
  std::sort(out->begin(), out->end());
  for (size_t i = 1; i < out->size(); ++i) {
    if ((*out)[i].first == (*out)[i - 1].first) {
      return bad_request(fmt::format("token id {} appears twice in '{}'", (*out)[i].first, param),
                         param);
    }
  }
  return std::nullopt;
}

// A JSON schema given as an object or as its JSON text. The text is kept as given: the order of
// a schema's properties is the order of the output's keys, and `json` objects sort their keys,
// so an object's text is taken again from the body (parse_request) by `pointer`.
Err read_schema(const json& v, const std::string& param, const std::string& pointer,
                std::string* out, std::string* schema_pointer) {
  if (v.is_object() || v.is_boolean()) {
    *out = v.dump();
    *schema_pointer = pointer;
    return std::nullopt;
  }
  if (!v.is_string()) return type_error(param, "a JSON schema (an object or its JSON text)", v);
  const json parsed = json::parse(v.get<std::string>(), nullptr, false);
  if (parsed.is_discarded() || !(parsed.is_object() || parsed.is_boolean())) {
    return bad_request(fmt::format("'{}' is not a JSON schema (not a JSON object)", param), param);
  }
  *out = v.get<std::string>();
  schema_pointer->clear();
  return std::nullopt;
}

// vLLM's guided_choice: the output is exactly one of the strings (an EBNF alternation).
Err choice_grammar(const json& v, const std::string& param, std::string* out) {
  if (!v.is_array() || v.empty()) return type_error(param, "a non-empty array of strings", v);
  std::string g = "root ::= ";
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = fmt::format("{}[{}]", param, i);
    if (!v[i].is_string()) return type_error(p, "a string", v[i]);
    const std::string s = v[i].get<std::string>();
    if (s.empty()) return bad_request(fmt::format("'{}' is empty", p), param);
    std::string lit;
    for (const char c : s) {
      switch (c) {
        case '"':
          lit += "\\\"";
          break;
        case '\\':
          lit += "\\\\";
          break;
        case '\n':
          lit += "\\n";
          break;
        case '\r':
          lit += "\\r";
          break;
        case '\t':
          lit += "\\t";
          break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            return bad_request(fmt::format("'{}' has a control character", p), param);
          }
          lit += c;
      }
    }
    g += (i ? " | \"" : "\"") + lit + "\"";
  }
  *out = std::move(g);
  return std::nullopt;
}

// Sets the request's one grammar; a second is refused.
Err set_grammar(model::OutputGrammar::Kind kind, std::string text, const std::string& param,
                std::string* first_param, model::OutputGrammar* g) {
  if (g->active()) {
    return bad_request(
        fmt::format("give one output constraint: both '{}' and '{}' are set", *first_param, param),
        param);
  }
  g->kind = kind;
  g->text = std::move(text);
  *first_param = param;
  return std::nullopt;
}

// The structured-output fields of the OpenAI endpoints: response_format (json_object,
// json_schema), vLLM's guided_json / guided_regex / guided_choice / guided_grammar, and SGLang's
// regex / ebnf extras. At most one of them.
Err read_openai_grammar(const json& body, model::OutputGrammar* g, std::string* schema_pointer) {
  using Kind = model::OutputGrammar::Kind;
  std::string first;
  if (const json* v = field(body, "response_format")) {
    if (!v->is_object()) return type_error("response_format", "an object", *v);
    std::string type;
    if (Err e = get_string(*v, "type", "response_format.type", &type)) return e;
    if (type == "json_object") {
      if (Err e = set_grammar(Kind::kJsonObject, "", "response_format", &first, g)) return e;
    } else if (type == "json_schema") {
      const json* js = field(*v, "json_schema");
      if (!js) {
        return bad_request("'response_format.json_schema' is required",
                           "response_format.json_schema");
      }
      if (!js->is_object()) return type_error("response_format.json_schema", "an object", *js);
      const json* schema = field(*js, "schema");
      // OpenAI allows a json_schema without its schema: any JSON object then.
      std::string text;
      if (schema) {
        if (Err e = read_schema(*schema, "response_format.json_schema.schema",
                                "/response_format/json_schema/schema", &text, schema_pointer))
          return e;
      }
      bool strict = true;
      if (Err e = get_bool(*js, "strict", "response_format.json_schema.strict", &strict)) return e;
      if (Err e = set_grammar(schema ? Kind::kJsonSchema : Kind::kJsonObject, std::move(text),
                              "response_format", &first, g))
        return e;
      g->strict = strict;
    } else if (type != "text") {
      return bad_request(fmt::format("'response_format.type' must be text, json_object or "
                                     "json_schema, got '{}'",
                                     excerpt(type)),
                         "response_format.type");
    }
  }
  if (const json* v = field(body, "guided_json")) {
    std::string text;
    if (Err e = read_schema(*v, "guided_json", "/guided_json", &text, schema_pointer)) return e;
    if (Err e = set_grammar(Kind::kJsonSchema, std::move(text), "guided_json", &first, g)) return e;
  }
  for (const char* key : {"guided_regex", "regex"}) {
    std::string text;
    if (Err e = get_string(body, key, key, &text)) return e;
    if (!field(body, key)) continue;
    if (Err e = set_grammar(Kind::kRegex, std::move(text), key, &first, g)) return e;
  }
  if (const json* v = field(body, "guided_choice")) {
    std::string text;
    if (Err e = choice_grammar(*v, "guided_choice", &text)) return e;
    if (Err e = set_grammar(Kind::kEbnf, std::move(text), "guided_choice", &first, g)) return e;
  }
  for (const char* key : {"guided_grammar", "ebnf"}) {
    std::string text;
    if (Err e = get_string(body, key, key, &text)) return e;
    if (!field(body, key)) continue;
    if (Err e = set_grammar(Kind::kEbnf, std::move(text), key, &first, g)) return e;
  }
  if (const json* v = field(body, "guided_whitespace_pattern")) {
    if (!v->is_null()) {
      return bad_request("'guided_whitespace_pattern' is not supported",
                         "guided_whitespace_pattern");
    }
  }
  if (g->active() && g->kind != Kind::kJsonObject && g->text.empty()) {
    return bad_request(fmt::format("'{}' is empty", first), first);
  }
  return std::nullopt;
}

// SGLang's sampling_params constraints: json_schema (JSON text), regex, ebnf; structural_tag is
// not supported.
Err read_sglang_grammar(const json& sp, model::OutputGrammar* g, std::string* schema_pointer) {
  using Kind = model::OutputGrammar::Kind;
  std::string first;
  if (const json* v = field(sp, "json_schema")) {
    std::string text;
    if (Err e = read_schema(*v, "sampling_params.json_schema", "/sampling_params/json_schema",
                            &text, schema_pointer))
      return e;
    if (Err e = set_grammar(Kind::kJsonSchema, std::move(text), "sampling_params.json_schema",
                            &first, g))
      return e;
  }
  for (auto [key, kind] : {std::pair{"regex", Kind::kRegex}, std::pair{"ebnf", Kind::kEbnf}}) {
    const std::string param = std::string("sampling_params.") + key;
    std::string text;
    if (Err e = get_string(sp, key, param, &text)) return e;
    if (!field(sp, key)) continue;
    if (text.empty()) return bad_request(fmt::format("'{}' is empty", param), param);
    if (Err e = set_grammar(kind, std::move(text), param, &first, g)) return e;
  }
  return std::nullopt;
}

// SGLang refuses sampling parameters it does not know (they are keyword arguments there); pp does
// too, and refuses the ones it knows but does not honour when they would change the output.
Err check_sglang_sampling_keys(const json& sp) {
  static const char* const kHonoured[] = {
      "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
      "repetition_penalty", "seed", "sampling_seed", "stop", "stop_token_ids", "ignore_eos",
      "skip_special_tokens", "max_new_tokens", "n", "json_schema", "regex", "ebnf", "logit_bias",
      // How often a stream sends: pp sends every token, which any interval's client accepts.
      "stream_interval"};
  // SGLang's, not honoured: refused unless at their defaults.
  static const char* const kKnown[] = {
      "min_new_tokens", "no_stop_trim",   "spaces_between_special_tokens",
      "custom_params",  "structural_tag", "stop_regex"};
  const auto listed = [](const std::string& key, const auto& names) {
    return std::find_if(std::begin(names), std::end(names),
                        [&](const char* k) { return key == k; }) != std::end(names);
  };
  for (const auto& item : sp.items()) {
    // (Not a structured binding: clang 14 cannot capture one in a lambda.)
    const std::string& key = item.key();
    const json& v = item.value();
    if (listed(key, kHonoured)) continue;
    const std::string param = "sampling_params." + key;
    const bool harmless = v.is_null() || (key == "min_new_tokens" && v == json(0)) ||
                          (key == "no_stop_trim" && v == json(false)) ||
                          (key == "spaces_between_special_tokens" && v == json(true)) ||
                          (key == "custom_params" && (v.is_object() && v.empty()));
    if (harmless) continue;
    return bad_request(listed(key, kKnown)
                           ? fmt::format("'{}' is not supported", param)
                           : fmt::format("unknown sampling parameter '{}'", excerpt(key)),
                       param);
  }
  return std::nullopt;
}

// A text prompt: a non-empty string.
Err check_text(const std::string& s, const std::string& param) {
  if (s.empty()) return bad_request(fmt::format("'{}' is empty", param), param);
  return std::nullopt;
}

// OpenAI's "prompt", or SGLang's "text" / "input_ids": one prompt or a batch.
Err read_prompts(const json& v, const std::string& param, const ProtocolLimits& limits,
                 std::vector<PromptInput>* out, bool* batched) {
  out->clear();
  *batched = false;
  if (v.is_string()) {
    PromptInput p;
    p.text = v.get<std::string>();
    if (Err e = check_text(p.text, param)) return e;
    out->push_back(std::move(p));
    return std::nullopt;
  }
  if (!v.is_array()) {
    return type_error(param, "a string, an array of strings or an array of token ids", v);
  }
  if (v.empty()) return bad_request(fmt::format("'{}' is empty", param), param);
  if (v[0].is_number()) {  // one prompt of token ids
    PromptInput p;
    p.is_ids = true;
    if (Err e = read_token_ids(v, param, limits, false, &p.ids)) return e;
    out->push_back(std::move(p));
    return std::nullopt;
  }
  if (int64_t(v.size()) > limits.max_prompts) {
    return bad_request(
        fmt::format("'{}' has {} prompts; at most {}", param, v.size(), limits.max_prompts), param);
  }
  *batched = true;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string pi = fmt::format("{}[{}]", param, i);
    PromptInput p;
    if (v[i].is_string()) {
      p.text = v[i].get<std::string>();
      if (Err e = check_text(p.text, pi)) return e;
    } else if (v[i].is_array()) {
      p.is_ids = true;
      if (Err e = read_token_ids(v[i], pi, limits, false, &p.ids)) return e;
    } else {
      return type_error(pi, "a string or an array of token ids", v[i]);
    }
    out->push_back(std::move(p));
  }
  return std::nullopt;
}

// An assistant message's tool_calls: [{id, type: "function", function: {name, arguments}}].
Err read_tool_calls(const json& m, const std::string& pm, std::vector<model::ChatToolCall>* out) {
  const json* calls = field(m, "tool_calls");
  if (!calls) return std::nullopt;
  const std::string pc = pm + ".tool_calls";
  if (!calls->is_array()) return type_error(pc, "an array of tool calls", *calls);
  for (size_t k = 0; k < calls->size(); ++k) {
    const json& c = (*calls)[k];
    const std::string pk = fmt::format("{}[{}]", pc, k);
    if (!c.is_object()) return type_error(pk, "an object", c);
    model::ChatToolCall tc;
    if (Err e = get_string(c, "id", pk + ".id", &tc.id)) return e;
    std::string type = "function";
    if (Err e = get_string(c, "type", pk + ".type", &type)) return e;
    if (type != "function") {
      return bad_request(fmt::format("'{}.type' must be 'function', got '{}'", pk, excerpt(type)),
                         pk + ".type");
    }
    const json* f = field(c, "function");
    if (!f) return bad_request(fmt::format("'{}.function' is required", pk), pk + ".function");
    if (!f->is_object()) return type_error(pk + ".function", "an object", *f);
    const json* name = field(*f, "name");
    if (!name) {
      return bad_request(fmt::format("'{}.function.name' is required", pk), pk + ".function.name");
    }
    if (!name->is_string()) return type_error(pk + ".function.name", "a string", *name);
    tc.name = name->get<std::string>();
    tc.arguments = "{}";
    if (Err e = get_string(*f, "arguments", pk + ".function.arguments", &tc.arguments)) return e;
    out->push_back(std::move(tc));
  }
  return std::nullopt;
}

Err read_messages(const json& body, std::vector<model::ChatMessage>* out) {
  const json* v = field(body, "messages");
  if (!v) return bad_request("'messages' is required", "messages");
  if (!v->is_array()) return type_error("messages", "an array of messages", *v);
  if (v->empty()) return bad_request("'messages' is empty", "messages");
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string pm = fmt::format("messages[{}]", i);
    if (!m.is_object()) return type_error(pm, "an object", m);
    model::ChatMessage cm;
    const json* role = field(m, "role");
    if (!role) return bad_request(fmt::format("'{}.role' is required", pm), pm + ".role");
    if (!role->is_string()) return type_error(pm + ".role", "a string", *role);
    cm.role = role->get<std::string>();
    if (cm.role == "developer") cm.role = "system";
    if (cm.role != "system" && cm.role != "user" && cm.role != "assistant" && cm.role != "tool") {
      return bad_request(fmt::format("'{}.role' must be system, developer, user, assistant or "
                                     "tool, got '{}'",
                                     pm, excerpt(cm.role)),
                         pm + ".role");
    }
    if (cm.role == "tool") {
      const std::string pid = pm + ".tool_call_id";
      const json* id = field(m, "tool_call_id");
      if (!id) return bad_request(fmt::format("'{}' is required", pid), pid);
      if (!id->is_string()) return type_error(pid, "a string", *id);
      cm.tool_call_id = id->get<std::string>();
    }
    if (cm.role == "assistant") {
      if (Err e = read_tool_calls(m, pm, &cm.tool_calls)) return e;
    }
    const json* content = field(m, "content");
    if (!content) {
      if (cm.role != "assistant") {
        return bad_request(fmt::format("'{}.content' is required", pm), pm + ".content");
      }
    } else if (content->is_string()) {
      cm.content = content->get<std::string>();
    } else if (content->is_array()) {
      // Content parts: only text parts; several are joined by newlines (as vLLM does).
      for (size_t k = 0; k < content->size(); ++k) {
        const json& part = (*content)[k];
        const std::string pp = fmt::format("{}.content[{}]", pm, k);
        if (!part.is_object()) return type_error(pp, "an object", part);
        std::string type, text;
        if (Err e = get_string(part, "type", pp + ".type", &type)) return e;
        if (type != "text") {
          return bad_request(fmt::format("'{}.type' must be 'text' (this model reads text only), "
                                         "got '{}'",
                                         pp, excerpt(type)),
                             pp + ".type");
        }
        const json* t = field(part, "text");
        if (!t) return bad_request(fmt::format("'{}.text' is required", pp), pp + ".text");
        if (!t->is_string()) return type_error(pp + ".text", "a string", *t);
        if (k > 0) cm.content += "\n";
        cm.content += t->get<std::string>();
      }
    } else {
      return type_error(pm + ".content", "a string or an array of content parts", *content);
    }
    out->push_back(std::move(cm));
  }
  return std::nullopt;
}

// vLLM's and SGLang's extra sampling fields of the OpenAI routes that pp does not honour, with
// the value that means "off": any other value is refused (a vLLM user's min_tokens must not be
// dropped in silence). Other unknown top-level fields are ignored, as OpenAI's clients send some.
struct UnhonouredExtra {
  const char* key;
  json off;
};
const UnhonouredExtra kUnhonouredExtras[] = {
    {"min_tokens", 0},
    {"min_new_tokens", 0},
    {"allowed_token_ids", nullptr},
    {"bad_words", json::array()},
    {"prompt_logprobs", nullptr},
    {"include_stop_str_in_output", false},
    {"use_beam_search", false},
    {"length_penalty", 1.0},
    {"truncate_prompt_tokens", nullptr},
    {"no_stop_trim", false},
    {"structural_tag", nullptr},
    {"spaces_between_special_tokens", true},
    {"continue_final_message", false},
    {"return_hidden_states", false},
};

// Fields whose meaning we cannot honour: refusing beats ignoring.
Err refuse_unsupported(const json& body, int32_t n) {
  for (const UnhonouredExtra& x : kUnhonouredExtras) {
    const json* v = field(body, x.key);
    if (!v || v->is_null() || *v == x.off) continue;
    return bad_request(fmt::format("'{}' is not supported (only {})", x.key, x.off.dump()), x.key);
  }
  if (const json* v = field(body, "guided_decoding_backend")) {
    // The backend is pp's choice (--grammar-backend); naming xgrammar, or letting pp choose, is
    // fine.
    if (!v->is_null() && !(v->is_string() && (*v == "xgrammar" || *v == "auto" || *v == ""))) {
      return bad_request("'guided_decoding_backend' must be xgrammar or auto",
                         "guided_decoding_backend");
    }
  }
  if (const json* v = field(body, "suffix")) {
    if (!v->is_string() || !v->get<std::string>().empty())
      return bad_request("'suffix' is not supported", "suffix");
  }
  int64_t best_of = n;
  if (Err e = get_int(body, "best_of", "best_of", 1, 64, &best_of)) return e;
  if (best_of != n) return bad_request("'best_of' other than n is not supported", "best_of");
  return std::nullopt;
}

Err parse_openai(ApiKind kind, const json& body, std::string_view text,
                 const ProtocolLimits& limits, ApiRequest* r, std::string* schema_pointer) {
  if (Err e = get_string(body, "model", "model", &r->model)) return e;
  model::SamplingParams& p = r->params;
  p.max_tokens = kind == ApiKind::kCompletion ? 16 : 0;  // chat: until the context is full
  if (Err e = read_sampling(body, "", limits, &p)) return e;
  const int64_t max_ctx = std::max<int64_t>(limits.max_context, 1);
  if (Err e = get_int(body, "max_tokens", "max_tokens", 1, max_ctx, &p.max_tokens,
                      &r->max_tokens_given))
    return e;
  if (kind == ApiKind::kChat) {
    if (Err e = get_int(body, "max_completion_tokens", "max_completion_tokens", 1, max_ctx,
                        &p.max_tokens, &r->max_tokens_given))
      return e;
  }
  if (Err e = get_int32(body, "n", "n", 1, limits.max_n, &r->n)) return e;
  if (Err e = get_bool(body, "stream", "stream", &r->stream)) return e;
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) return type_error("stream_options", "an object", *so);
    if (Err e = get_bool(*so, "include_usage", "stream_options.include_usage", &r->include_usage))
      return e;
  }
  if (Err e = refuse_unsupported(body, r->n)) return e;
  if (const json* v = field(body, "logit_bias")) {
    if (Err e = read_logit_bias(*v, "logit_bias", limits, &p.logit_bias)) return e;
  }
  if (Err e = read_openai_grammar(body, &p.grammar, schema_pointer)) return e;

  if (kind == ApiKind::kCompletion) {
    // logprobs: an integer, the number of alternatives (0: only the chosen token's).
    if (const json* v = field(body, "logprobs")) {
      int64_t k = 0;
      if (Err e = read_int(*v, "logprobs", 0, model::kMaxTopLogprobs, &k)) return e;
      p.logprobs = true;
      p.top_logprobs = int32_t(k);
    }
    if (Err e = get_bool(body, "echo", "echo", &r->echo)) return e;
    if (r->echo && p.logprobs) {
      // The prompt's logprobs would have to come with it, and pp does not compute them.
      return bad_request("echo with logprobs is not supported", "echo");
    }
    if (Err e = refuse_tools(body)) return e;
    const json* prompt = field(body, "prompt");
    if (!prompt) return bad_request("'prompt' is required", "prompt");
    bool batched = false;
    if (Err e = read_prompts(*prompt, "prompt", limits, &r->prompts, &batched)) return e;
    r->batched = batched;
  } else {
    if (Err e = get_bool(body, "logprobs", "logprobs", &p.logprobs)) return e;
    if (Err e = get_int32(body, "top_logprobs", "top_logprobs", 0, model::kMaxTopLogprobs,
                          &p.top_logprobs))
      return e;
    if (p.top_logprobs > 0 && !p.logprobs) {
      return bad_request("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
    }
    if (Err e = read_messages(body, &r->messages)) return e;
    if (Err e = get_bool(body, "add_generation_prompt", "add_generation_prompt",
                         &r->add_generation_prompt))
      return e;
    if (Err e = read_tools(body, text, r)) return e;
  }
  return std::nullopt;
}

Err parse_generate(const json& body, const ProtocolLimits& limits, ApiRequest* r,
                   std::string* schema_pointer) {
  model::SamplingParams& p = r->params;
  p.max_tokens = 128;  // SGLang's default max_new_tokens
  const json* text = field(body, "text");
  const json* ids = field(body, "input_ids");
  if (text && ids) return bad_request("give either 'text' or 'input_ids', not both", "text");
  if (!text && !ids) return bad_request("'text' or 'input_ids' is required", "text");
  bool batched = false;
  if (text) {
    if (text->is_array() && !text->empty() && !(*text)[0].is_string()) {
      return type_error("text[0]", "a string", (*text)[0]);
    }
    if (Err e = read_prompts(*text, "text", limits, &r->prompts, &batched)) return e;
  } else {
    if (ids->is_array() && !ids->empty() && (*ids)[0].is_string()) {
      return type_error("input_ids[0]", "a token id or an array of token ids", (*ids)[0]);
    }
    if (Err e = read_prompts(*ids, "input_ids", limits, &r->prompts, &batched)) return e;
  }
  r->batched = batched;
  if (const json* sp = field(body, "sampling_params")) {
    if (!sp->is_object()) return type_error("sampling_params", "an object", *sp);
    if (Err e = check_sglang_sampling_keys(*sp)) return e;
    if (Err e = read_sampling(*sp, "sampling_params.", limits, &p)) return e;
    if (const json* v = field(*sp, "sampling_seed")) {
      if (field(*sp, "seed")) {
        return bad_request("give one of 'sampling_params.seed' and 'sampling_params.sampling_seed'",
                           "sampling_params.sampling_seed");
      }
      if (!v->is_number_integer() && !v->is_number_unsigned()) {
        return type_error("sampling_params.sampling_seed", "an integer", *v);
      }
      p.seed = v->is_number_unsigned() ? v->get<uint64_t>() : uint64_t(v->get<int64_t>());
    }
    if (const json* v = field(*sp, "logit_bias")) {
      if (Err e = read_logit_bias(*v, "sampling_params.logit_bias", limits, &p.logit_bias))
        return e;
    }
    if (Err e = read_sglang_grammar(*sp, &p.grammar, schema_pointer)) return e;
    const int64_t max_ctx = std::max<int64_t>(limits.max_context, 1);
    if (Err e = get_int(*sp, "max_new_tokens", "sampling_params.max_new_tokens", 1, max_ctx,
                        &p.max_tokens, &r->max_tokens_given))
      return e;
    if (Err e = get_int32(*sp, "n", "sampling_params.n", 1, limits.max_n, &r->n)) return e;
  }
  if (Err e = get_bool(body, "stream", "stream", &r->stream)) return e;
  if (Err e = get_bool(body, "return_logprob", "return_logprob", &p.logprobs)) return e;
  if (Err e = get_int32(body, "top_logprobs_num", "top_logprobs_num", 0, model::kMaxTopLogprobs,
                        &p.top_logprobs))
    return e;
  if (p.top_logprobs > 0) p.logprobs = true;
  return std::nullopt;
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

ParseResult parse_request(ApiKind kind, std::string_view body, const ProtocolLimits& limits) {
  if (!is_valid_utf8(body)) {
    return bad_request("the request body is not valid UTF-8", "", "invalid_utf8");
  }
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    // The parser's own message may quote a long token: say where instead.
    return bad_request(fmt::format("the request body is not valid JSON (at byte {})", e.byte), "",
                       "invalid_json");
  } catch (const json::exception&) {  // a number beyond double's range
    return bad_request("the request body has a number out of range", "", "invalid_json");
  }
  if (!j.is_object()) return bad_request("the request body must be a JSON object", "");
  ApiRequest r;
  r.kind = kind;
  std::string schema_pointer;  // where a schema given as an object is (see read_schema)
  Err e = kind == ApiKind::kGenerate ? parse_generate(j, limits, &r, &schema_pointer)
                                     : parse_openai(kind, j, body, limits, &r, &schema_pointer);
  if (e) return *e;
  if (!schema_pointer.empty()) {
    const auto ordered = nlohmann::ordered_json::parse(body);
    r.params.grammar.text = ordered.at(nlohmann::ordered_json::json_pointer(schema_pointer)).dump();
  }
  if (Status s = r.params.validate(limits.n_vocab); !s.ok()) return bad_request(s.message());
  return r;
}

std::variant<std::vector<std::vector<int32_t>>, ApiError> tokenize_prompts(
    const ApiRequest& req, const model::Tokenizer* tokenizer, const model::ChatTemplate* chat,
    const ProtocolLimits& limits) {
  std::vector<std::vector<int32_t>> out;
  const std::string prompt_param = req.kind == ApiKind::kChat       ? "messages"
                                   : req.kind == ApiKind::kGenerate ? "text"
                                                                    : "prompt";
  if (req.kind == ApiKind::kChat) {
    if (!tokenizer || !chat) {
      return bad_request("this model has no chat template; use /v1/completions", "messages",
                         "no_chat_template");
    }
    // tool_choice "none" tells the model nothing of the tools (its output is read as text).
    std::span<const model::ChatTool> tools;
    if (req.tool_choice != ToolChoice::kNone) tools = req.tools;
    Result<std::string> text = chat->apply(req.messages, req.add_generation_prompt, tools);
    if (!text.ok()) return bad_request(text.status().message(), "messages");
    // The template writes BOS itself where the format wants one.
    out.push_back(tokenizer->encode(*text, /*add_special=*/false));
  } else {
    for (const PromptInput& p : req.prompts) {
      if (p.is_ids) {
        out.push_back(p.ids);
        continue;
      }
      if (!tokenizer) {
        return bad_request("this model has no tokenizer: send token ids", prompt_param);
      }
      out.push_back(tokenizer->encode(p.text, /*add_special=*/true));
    }
  }
  const std::string max_param =
      req.kind == ApiKind::kGenerate ? "sampling_params.max_new_tokens" : "max_tokens";
  for (size_t i = 0; i < out.size(); ++i) {
    const std::string param =
        out.size() > 1 ? fmt::format("{}[{}]", prompt_param, i) : prompt_param;
    const int64_t n = int64_t(out[i].size());
    if (n == 0) return bad_request(fmt::format("'{}' encodes to no tokens", param), param);
    for (int32_t id : out[i]) {
      if (id < 0 || id >= limits.n_vocab) {
        return bad_request(fmt::format("'{}' encodes to token id {}, outside the model's "
                                       "vocabulary [0, {})",
                                       param, id, limits.n_vocab),
                           param, "token_id_out_of_range");
      }
    }
    if (n >= limits.max_context) {
      return bad_request(fmt::format("'{}' has {} tokens, which leaves no room in the context of "
                                     "{} tokens",
                                     param, n, limits.max_context),
                         param, "context_length_exceeded");
    }
    if (req.max_tokens_given && n + req.params.max_tokens > limits.max_context) {
      return bad_request(
          fmt::format("'{}' of {} tokens plus {} {} exceeds the context of {} tokens", param, n,
                      max_param, req.params.max_tokens, limits.max_context),
          max_param, "context_length_exceeded");
    }
  }
  return out;
}

}  // namespace pp::server
