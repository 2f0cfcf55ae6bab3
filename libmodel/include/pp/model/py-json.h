// JSON text as Python's json.dumps(x, ensure_ascii=False) writes it, which is what the `tojson`
// filter of transformers' chat templates and vLLM's tool-call arguments give: ", " and ": "
// between items (with an indent: "," at line ends and `indent` spaces per level), keys in their
// given order, non-ASCII characters as they are, only '"', '\\' and control characters escaped.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace pp::model {

// indent < 0: one line; indent >= 0: pretty-printed with that many spaces per level.
std::string py_json_dumps(const nlohmann::ordered_json& v, int indent = -1);

}  // namespace pp::model
