// The config of a model to plan, read without touching its weights: a Hugging Face folder's
// config.json (and generation_config.json), or a GGUF file's metadata (the file is mapped, only
// its header is read). `pp-partition plan` needs nothing more.
#pragma once

#include <filesystem>

#include "pp/model/config.h"
#include "pp/model/model-source.h"
#include "pp/model/tensor-info.h"
#include "pp/status.h"

namespace pp::partition {

struct SourceConfig {
  model::ModelConfig config;
  model::SourceKind kind = model::SourceKind::kHfDir;
};

// kNotFound for a missing path, kInvalidArgument for a path that is neither a folder nor a .gguf
// file; the config readers' errors otherwise (an unknown architecture is named).
Result<SourceConfig> read_source_config(const std::filesystem::path& path);

// The shard dtype used when --dtype is not given: the published dtype of a Hugging Face model
// (float32 -> f32, float16 -> f16, otherwise bf16; fp8 for an FP8 checkpoint, whose
// quantization_config says so), and bf16 for a GGUF file (whose quantized
// weights dequantize without loss into neither f16 nor bf16, so the smaller one is chosen).
model::DType default_shard_dtype(const model::ModelConfig& c, model::SourceKind kind);

}  // namespace pp::partition
