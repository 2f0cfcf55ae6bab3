// GgufFile: a bounds-checked reader of GGUF v2/v3 files (metadata and tensor directory), mmapped.
// Every size, count and offset the file states is checked against the file's length before it is
// used, so a truncated or lying file is a kDataLoss Status, never a crash or an out-of-bounds read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "pp/kernels/weight.h"
#include "pp/model/tensor-info.h"
#include "pp/status.h"

namespace pp::model {

// One metadata value. Integers of every width are widened; arrays hold one element type.
struct GgufValue {
  using Array = std::variant<std::vector<int64_t>, std::vector<uint64_t>, std::vector<double>,
                             std::vector<bool>, std::vector<std::string>>;
  std::variant<int64_t, uint64_t, double, bool, std::string, Array> v;
};

struct GgufTensor {
  std::string name;  // GGUF name ("blk.0.attn_q.weight")
  DType dtype = DType::kF32;
  std::vector<int64_t> ne;  // GGML order, innermost first: a linear is [in, out]
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  static Result<std::unique_ptr<GgufFile>> open(const std::filesystem::path& path);
  // Parses an in-memory image (the fuzz target and tests use this); `data` must outlive the file.
  static Result<std::unique_ptr<GgufFile>> parse(std::span<const uint8_t> data,
                                                 std::string display_name);
  ~GgufFile();

  uint32_t version() const { return version_; }
  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;

  // Typed getters: kNotFound when absent, kInvalidArgument when of another type.
  Result<std::string> get_string(std::string_view key) const;
  Result<int64_t> get_int(std::string_view key) const;   // any integer type
  Result<double> get_float(std::string_view key) const;  // any float or integer type
  Result<bool> get_bool(std::string_view key) const;
  Result<std::vector<std::string>> get_string_array(std::string_view key) const;
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
  Result<std::vector<double>> get_float_array(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;
  // The raw bytes of a tensor (already checked to lie inside the file).
  std::span<const uint8_t> tensor_bytes(const GgufTensor& t) const;
  // Dequantizes (or converts) a tensor to f32 into `out` (numel elements, GGML order flattened,
  // which is the same memory layout as the row-major Hugging Face shape reversed).
  Status read_f32(const GgufTensor& t, std::span<float> out) const;

 private:
  GgufFile() = default;
  std::filesystem::path path_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensor> tensors_;
  std::span<const uint8_t> data_;  // the whole file
  uint64_t data_offset_ = 0;       // start of the tensor data section
  void* map_ = nullptr;            // mmap base when opened from a path
  size_t map_size_ = 0;
};

// Dequantizes `n` elements of GGML type `t` from `src` (which holds exactly the bytes for n
// elements) into `dst`. kUnimplemented for a type we do not know.
Status dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n);
// Bytes used by `n` elements of type `t` (n must be a multiple of the block size);
// kDataLoss when it is not.
Result<uint64_t> ggml_type_bytes(DType t, int64_t n);
// Elements per block of type `t` (32 for Q8_0, 256 for the K types, 1 for F32/F16/BF16/F64/I*);
// 0 for a type GGML has no layout for (U8, BOOL).
int64_t ggml_block_size(DType t);
// The kernels' block format of a GGML block type the CPU backend keeps quantized (Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); nullopt for every other type.
std::optional<kernels::WeightFormat> block_weight_format(DType t);

}  // namespace pp::model
