// Decoders of a Hugging Face tokenizer.json ("decoder"): ByteLevel, Metaspace, Replace,
// ByteFallback, Fuse, Strip and Sequence. Like `tokenizers`, each step maps the list of token
// strings to a new list; the decoded text is the concatenation of the last list.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/status.h"

namespace pp::model::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // Whether the step gathers runs of <0xXX> tokens into bytes (a run's text is only final once
  // the run has ended).
  virtual bool byte_fallback() const { return false; }
};

// nullptr for a null decoder; kUnimplemented for a type we do not support.
Result<std::unique_ptr<Decoder>> make_decoder(const nlohmann::json& j);

// The byte a "<0xXX>" token stands for, or -1.
int byte_fallback_value(std::string_view token);

}  // namespace pp::model::tok
