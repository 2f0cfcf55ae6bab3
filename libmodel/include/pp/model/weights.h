// WeightSource: tensors by their Hugging Face name, dequantized to f32 on read, whatever the file
// (a safetensors checkpoint, sharded or not; a GGUF file; a pp partition's stage shard).
// GGUF names are mapped to Hugging Face names and llama.cpp's q/k row permutation is undone, so
// every architecture reads one naming and one layout.
#pragma once

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pp/kernels/host-weight.h"
#include "pp/model/tensor-info.h"
#include "pp/status.h"

namespace pp::model {

class GgufFile;

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Hugging Face names of every tensor, sorted.
  virtual std::vector<std::string> names() const = 0;
  // nullptr when absent. shape is the Hugging Face shape ([out, in] for a linear).
  virtual const TensorInfo* find(std::string_view name) const = 0;
  // Reads the whole tensor as f32, row-major in its Hugging Face shape; `out` must hold numel().
  virtual Status read_f32(std::string_view name, std::span<float> out) const = 0;
  // Convenience: allocates. kNotFound naming the tensor and the source when absent.
  Result<std::vector<float>> read_f32(std::string_view name) const;
  // The tensor as stored where the format has a HostWeight twin: an fp8 tensor with its scales
  // (find(name)->dtype == kF8E4M3); every other tensor as f32 values (read_f32). A 1-D tensor is
  // [n, 1]. GPU loaders upload fp8 weights as they are; the CPU reference dequantizes.
  virtual Result<kernels::HostWeight> read_weight(std::string_view name) const;
  // A human name for messages ("model.safetensors", "x.gguf").
  virtual std::string describe() const = 0;
};

// A folder with model.safetensors, or model.safetensors.index.json and its shards; or one
// .safetensors file.
Result<std::unique_ptr<WeightSource>> open_safetensors(const std::filesystem::path& path);
// The tensors of a GGUF file (arch "llama", "qwen2", "qwen3", ...) under Hugging Face names.
// `n_head` and `n_head_kv` are needed to undo llama.cpp's q/k permutation for llama-family files.
Result<std::unique_ptr<WeightSource>> open_gguf_weights(std::shared_ptr<const GgufFile> file,
                                                        int64_t n_head, int64_t n_head_kv);

}  // namespace pp::model
