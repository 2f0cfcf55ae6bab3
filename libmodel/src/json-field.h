// Typed, optional reads of config.json fields. Absent and null both read as "not given" (the
// Hugging Face configs write null for "use the default"); a value of the wrong type is an error
// naming the field, so a malformed config fails with a message rather than a json exception.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "pp/status.h"

namespace pp::model::json_field {

inline const nlohmann::json* find(const nlohmann::json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

inline Result<std::optional<int64_t>> get_int(const nlohmann::json& j, std::string_view key) {
  const nlohmann::json* v = find(j, key);
  if (!v) return std::optional<int64_t>();
  if (v->is_number_integer()) return std::optional<int64_t>(v->get<int64_t>());
  // Some exporters write integral floats (4096.0); accept those, reject 0.5.
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d)) return std::optional<int64_t>(int64_t(d));
  }
  return invalid_argument("field '{}' must be an integer, got {}", key, v->dump());
}

inline Result<std::optional<double>> get_number(const nlohmann::json& j, std::string_view key) {
  const nlohmann::json* v = find(j, key);
  if (!v) return std::optional<double>();
  if (v->is_number()) return std::optional<double>(v->get<double>());
  return invalid_argument("field '{}' must be a number, got {}", key, v->dump());
}

inline Result<std::optional<bool>> get_bool(const nlohmann::json& j, std::string_view key) {
  const nlohmann::json* v = find(j, key);
  if (!v) return std::optional<bool>();
  if (v->is_boolean()) return std::optional<bool>(v->get<bool>());
  return invalid_argument("field '{}' must be true or false, got {}", key, v->dump());
}

inline Result<std::optional<std::string>> get_string(const nlohmann::json& j,
                                                     std::string_view key) {
  const nlohmann::json* v = find(j, key);
  if (!v) return std::optional<std::string>();
  if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
  return invalid_argument("field '{}' must be a string, got {}", key, v->dump());
}

// A required positive integer ("hidden_size").
inline Result<int64_t> require_positive(const nlohmann::json& j, std::string_view key) {
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> v, get_int(j, key));
  if (!v) return invalid_argument("missing field '{}'", key);
  if (*v <= 0) return invalid_argument("field '{}' must be positive, got {}", key, *v);
  return *v;
}

}  // namespace pp::model::json_field
