// Tool fields of OpenAI chat requests (see openai-tools.h). Names follow OpenAI's rule (letters,
// digits, '_' and '-', at most 64), so that a name can go into a prompt and a schema's enum
// without escaping surprises; duplicates are refused because a call could not say which one it
// meant.
#include "openai-tools.h"

#include <cctype>

#include <fmt/format.h>

namespace pp::server {

namespace {

using nlohmann::json;
using OJson = nlohmann::ordered_json;
using Err = std::optional<ApiError>;

Err want(const std::string& param, const char* what, const json& got) {
  return bad_request(fmt::format("'{}' must be {}, got {}", param, what, excerpt(dump_json(got))),
                     param);
}

bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  }
  return true;
}

const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// The function's parameters schema, or an empty-object schema when it gives none.
OJson parameters_of(const OJson& tool) {
  const OJson& f = tool["function"];
  auto p = f.find("parameters");
  if (p == f.end() || p->is_null()) return {{"type", "object"}, {"properties", OJson::object()}};
  return *p;
}

}  // namespace

Err refuse_tools(const json& body) {
  if (const json* v = field(body, "tools")) {
    if (!v->is_array()) return want("tools", "an array", *v);
    if (!v->empty()) return bad_request("'tools' needs /v1/chat/completions", "tools");
  }
  if (const json* v = field(body, "tool_choice")) {
    if (!(v->is_string() && v->get<std::string>() == "none")) {
      return bad_request("'tool_choice' needs /v1/chat/completions", "tool_choice");
    }
  }
  return std::nullopt;
}

Err read_tools(const json& body, std::string_view text, ApiRequest* r) {
  if (const json* v = field(body, "parallel_tool_calls")) {
    if (!v->is_boolean()) return want("parallel_tool_calls", "a boolean", *v);
    r->parallel_tool_calls = v->get<bool>();
  }
  const json* tools = field(body, "tools");
  if (tools && !tools->is_array()) return want("tools", "an array of tools", *tools);
  OJson ordered;  // the body again, keys in the client's order
  if (tools && !tools->empty()) {
    ordered = OJson::parse(text, nullptr, false);
    if (ordered.is_discarded() || !ordered.is_object()) return bad_request("bad body", "tools");
  }
  std::vector<OJson> defs;
  for (size_t i = 0; tools && i < tools->size(); ++i) {
    const json& t = (*tools)[i];
    const std::string pt = fmt::format("tools[{}]", i);
    if (!t.is_object()) return want(pt, "an object", t);
    const json* type = field(t, "type");
    if (!type) return bad_request(fmt::format("'{}.type' is required", pt), pt + ".type");
    if (!type->is_string() || type->get<std::string>() != "function") {
      return want(pt + ".type", "\"function\"", *type);
    }
    const json* f = field(t, "function");
    if (!f) return bad_request(fmt::format("'{}.function' is required", pt), pt + ".function");
    if (!f->is_object()) return want(pt + ".function", "an object", *f);
    const json* name = field(*f, "name");
    const std::string pn = pt + ".function.name";
    if (!name) return bad_request(fmt::format("'{}' is required", pn), pn);
    if (!name->is_string()) return want(pn, "a string", *name);
    const std::string n = name->get<std::string>();
    if (!valid_name(n)) {
      return bad_request(fmt::format("'{}' must be 1 to 64 letters, digits, '_' or '-', got {}", pn,
                                     excerpt(dump_json(*name))),
                         pn);
    }
    for (const model::ChatTool& seen : r->tools) {
      if (seen.name == n) {
        return bad_request(fmt::format("'{}': two tools are named '{}'", pn, n), pn);
      }
    }
    const json* desc = field(*f, "description");
    if (desc && !desc->is_string()) return want(pt + ".function.description", "a string", *desc);
    const json* params = field(*f, "parameters");
    if (params && !params->is_object()) {
      return want(pt + ".function.parameters", "a JSON schema (an object)", *params);
    }
    // As vLLM hands tools to the template: type, then the function's name, description and
    // parameters (the schema in the client's key order).
    const OJson& of = ordered["tools"][i]["function"];
    OJson fn = {{"name", n}};
    if (desc) fn["description"] = desc->get<std::string>();
    if (params) fn["parameters"] = of["parameters"];
    OJson def = {{"type", "function"}, {"function", std::move(fn)}};
    r->tools.push_back({n, def.dump()});
    defs.push_back(std::move(def));
  }

  r->tool_choice = r->tools.empty() ? ToolChoice::kNone : ToolChoice::kAuto;
  if (const json* v = field(body, "tool_choice")) {
    if (v->is_string()) {
      const std::string c = v->get<std::string>();
      if (c == "none") {
        r->tool_choice = ToolChoice::kNone;
      } else if (c == "auto" || c == "required") {
        if (r->tools.empty() && c == "required") {
          return bad_request("'tool_choice' \"required\" needs 'tools'", "tool_choice");
        }
        if (!r->tools.empty())
          r->tool_choice = c == "auto" ? ToolChoice::kAuto : ToolChoice::kRequired;
      } else {
        return bad_request(fmt::format("'tool_choice' must be \"none\", \"auto\", \"required\" "
                                       "or a function, got {}",
                                       excerpt(dump_json(*v))),
                           "tool_choice");
      }
    } else if (v->is_object()) {
      const json* type = field(*v, "type");
      if (!type || !type->is_string() || type->get<std::string>() != "function") {
        return bad_request("'tool_choice.type' must be \"function\"", "tool_choice.type");
      }
      const json* f = field(*v, "function");
      if (!f || !f->is_object()) {
        return bad_request("'tool_choice.function' must be an object with a name",
                           "tool_choice.function");
      }
      const json* name = field(*f, "name");
      if (!name || !name->is_string()) {
        return bad_request("'tool_choice.function.name' must be a string",
                           "tool_choice.function.name");
      }
      r->tool_choice_name = name->get<std::string>();
      bool known = false;
      for (const model::ChatTool& t : r->tools) known = known || t.name == r->tool_choice_name;
      if (!known) {
        return bad_request(fmt::format("'tool_choice.function.name' names '{}', which is not "
                                       "among 'tools'",
                                       excerpt(r->tool_choice_name)),
                           "tool_choice.function.name");
      }
      r->tool_choice = ToolChoice::kNamed;
    } else {
      return want("tool_choice", "a string or an object", *v);
    }
  }

  if (r->tool_choice == ToolChoice::kNamed || r->tool_choice == ToolChoice::kRequired) {
    if (r->params.grammar.active()) {
      return bad_request(
          "'tool_choice' \"required\" or a named function cannot be combined with "
          "another output grammar (response_format, guided_*)",
          "tool_choice");
    }
    OJson schema;
    if (r->tool_choice == ToolChoice::kNamed) {
      for (const OJson& d : defs) {
        if (d["function"]["name"] == r->tool_choice_name) schema = parameters_of(d);
      }
    } else {
      OJson any = OJson::array();
      for (const OJson& d : defs) {
        OJson props = {{"name", {{"type", "string"}, {"enum", {d["function"]["name"]}}}},
                       {"parameters", parameters_of(d)}};
        any.push_back({{"properties", std::move(props)}, {"required", {"name", "parameters"}}});
      }
      schema = {{"type", "array"},
                {"minItems", 1},
                {"items", {{"type", "object"}, {"anyOf", std::move(any)}}}};
      if (!r->parallel_tool_calls) schema["maxItems"] = 1;
    }
    r->params.grammar.kind = model::OutputGrammar::Kind::kJsonSchema;
    r->params.grammar.text = schema.dump();
  }
  return std::nullopt;
}

}  // namespace pp::server
