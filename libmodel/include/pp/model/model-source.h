// ModelSource: a model as found on disk, opened but not loaded: its normalized config, its
// tensors under Hugging Face names, and where its tokenizer and chat template come from.
// Accepts a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or one GGUF file.
// (A pp partition folder is opened by libpp's partition reader, one stage at a time.)
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "pp/model/config.h"
#include "pp/model/gguf.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

enum class SourceKind : uint8_t { kHfDir, kGguf };

struct ModelSource {
  std::filesystem::path path;  // what the user named
  SourceKind kind = SourceKind::kHfDir;
  ModelConfig config;
  std::shared_ptr<const WeightSource> weights;  // every tensor, Hugging Face names
  std::shared_ptr<const GgufFile> gguf;         // set when kind == kGguf (tokenizer, template)
  std::filesystem::path tokenizer_json;         // kHfDir: DIR/tokenizer.json when present
  std::string chat_template;                    // the model's own Jinja template, when known
};

// Opens a model folder or .gguf file. Errors: missing files, unknown architecture (named),
// malformed config or weights.
Result<ModelSource> open_model(const std::filesystem::path& path);

// Config from GGUF metadata (general.architecture = llama | qwen2 | qwen3 | mistral ...).
Result<ModelConfig> config_from_gguf(const GgufFile& f);

}  // namespace pp::model
