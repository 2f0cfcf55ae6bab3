// Normalizers of a Hugging Face tokenizer.json ("normalizer"): NFC, Prepend, Replace, Strip
// and Sequence. Each one maps a text segment (the text between added tokens)
// to its normalized form; a segment may hold invalid UTF-8, which passes through unchanged.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/status.h"

namespace pp::model::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string s) const = 0;
};

// nullptr for a null normalizer; kUnimplemented for a type we do not support.
Result<std::unique_ptr<Normalizer>> make_normalizer(const nlohmann::json& j);

// Canonical composition (Unicode NFC); invalid UTF-8 bytes are kept as they are.
std::string nfc(std::string_view s);

}  // namespace pp::model::tok
