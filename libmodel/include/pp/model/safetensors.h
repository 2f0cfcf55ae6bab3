// Safetensors reading: SafetensorsFile is one mmapped .safetensors file, checked against its own
// header; SafetensorsWeights is a WeightSource over one file or a sharded checkpoint
// (model.safetensors.index.json naming a shard for each tensor).
//
// A safetensors file is: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "BF16", "shape": [out, in], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// then the data section; offsets are relative to the data section. Every offset and size is
// checked before use: a truncated or lying file is a kDataLoss Status naming the file.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pp/model/tensor-info.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

// "F32" -> kF32 ... (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3); false when
// unknown. (A file holding F8_E5M2 or F8_E8M0 is refused with kUnimplemented naming the dtype.)
bool dtype_from_safetensors(std::string_view name, DType* out);
// Bytes per element of a plain dtype; 0 for the GGML block types.
int64_t dtype_size(DType t);

class SafetensorsFile {
 public:
  // Largest JSON header accepted (the format's reference implementation uses the same bound).
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

  static Result<std::unique_ptr<SafetensorsFile>> open(const std::filesystem::path& path);
  // Parses an in-memory image; `data` must outlive the object.
  static Result<std::unique_ptr<SafetensorsFile>> parse(std::span<const uint8_t> data,
                                                        std::string display_name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Tensors sorted by name; offset is relative to the data section, file_index is 0.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;
  // The "__metadata__" object (string to string); empty when the file has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The stored bytes of a tensor of this file.
  std::span<const uint8_t> tensor_bytes(const TensorInfo& t) const;
  // Converts a tensor of this file to f32 (F16, BF16, F64 and the integer types are converted;
  // F8_E4M3 needs its scale, which SafetensorsWeights finds); `out` must hold t.numel() elements.
  Status read_f32(const TensorInfo& t, std::span<float> out) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::span<const uint8_t> data_;  // the data section
  void* map_ = nullptr;
  size_t map_size_ = 0;
};

// A WeightSource over one safetensors file or a sharded checkpoint. An F8_E4M3 tensor `P.weight`
// is listed with its TensorInfo::scale_kind, from `P.weight_scale_inv` (128 x 128 blocks) or
// `P.weight_scale` (shape [] or [1]: per tensor; [rows] or [rows, 1]: per channel;
// [ceil(rows / 128), ceil(cols / 128)]: blocks), stored as F32 or BF16; those scale tensors and
// `P.input_scale` are not listed. read_f32 gives its real values (stored * scale), read_weight
// the fp8 bytes with f32 scales.
class SafetensorsWeights final : public WeightSource {
 public:
  // `path`: a .safetensors file; a model.safetensors.index.json file; or a folder holding
  // model.safetensors.index.json (preferred) or model.safetensors. Errors: kNotFound for a missing
  // file, shard, or a tensor the index names but its shard lacks; kDataLoss for a corrupt file,
  // or an F8_E4M3 tensor without a scale or with a scale of the wrong shape or dtype (naming the
  // tensor and the file); kUnimplemented for an F8_E5M2 tensor.
  static Result<std::unique_ptr<SafetensorsWeights>> open(const std::filesystem::path& path);

  std::vector<std::string> names() const override;
  const TensorInfo* find(std::string_view name) const override;
  Status read_f32(std::string_view name, std::span<float> out) const override;
  using WeightSource::read_f32;
  Result<kernels::HostWeight> read_weight(std::string_view name) const override;
  std::string describe() const override { return describe_; }

  // The files, in file_index order (one unless sharded).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // The "__metadata__" of the first file (a pp stage shard keeps its provenance there).
  const std::map<std::string, std::string>& metadata() const { return files_.front()->metadata(); }

 private:
  SafetensorsWeights() = default;
  // Finds each F8_E4M3 tensor's scale, sets its scale_kind, and unlists the scale tensors.
  Status attach_scales();
  std::string describe_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorInfo, std::less<>> tensors_;  // file_index says which file
  std::map<std::string, TensorInfo, std::less<>> scales_;   // F8_E4M3 tensor -> its scale
};

}  // namespace pp::model
