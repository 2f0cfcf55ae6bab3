// Pre-tokenizers of a Hugging Face tokenizer.json ("pre_tokenizer"): Split, ByteLevel, Digits,
// Metaspace and Sequence. They cut a normalized segment into the words the model encodes one by
// one. Behaviour follows `tokenizers` (its SplitDelimiterBehavior for Split and Digits).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/status.h"

namespace pp::model::tok {

struct Piece {
  std::string text;
  bool at_start = false;  // begins at offset 0 of the original text (Metaspace's "first")
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
  // Whether words come out mapped through GPT-2's byte-to-unicode table.
  virtual bool byte_level() const { return false; }
};

// nullptr for a null pre-tokenizer; kUnimplemented for a type we do not support.
Result<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const nlohmann::json& j);

// The GPT-2 pattern that ByteLevel(use_regex=true) splits with.
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace pp::model::tok
