// Writing safetensors files: pp-partition writes each stage's shard with this, and tests write
// fixtures. The output is what the reference implementation (the `safetensors` Python package)
// writes and reads: u64 little-endian header length, a JSON header padded with spaces to a
// multiple of 8 bytes, then each tensor's bytes, contiguous, wider dtypes first and then by name
// (so each tensor is aligned to its element size, as the reference implementation does).
// F8_E4M3 tensors are written from their stored bytes (their scales are tensors of their own).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "pp/model/tensor-info.h"
#include "pp/status.h"

namespace pp::model {

struct SafetensorsEntry {
  std::string name;                // unique, valid UTF-8, not "__metadata__"
  DType dtype = DType::kF32;       // stored type: kF32, kF16, kBF16, or kF8E4M3 (from `raw`)
  std::vector<int64_t> shape;      // outermost first; empty for a scalar
  std::span<const float> data;     // numel values, row-major; converted on write (round to
                                   // nearest even for F16 and BF16); empty for kF8E4M3
  std::span<const std::byte> raw;  // kF8E4M3 only: the numel stored bytes, written as they are
};

// Writes `tensors` and `metadata` (the "__metadata__" object, omitted when empty) to `path`.
// The file is written to a temporary name beside `path`, fsynced and then renamed over `path`,
// so a crash never leaves a half-written file under the final name. Errors: kInvalidArgument for
// a bad entry (named), kResourceExhausted when the disk is full, kInternal for other I/O
// failures; messages name the path.
Status write_safetensors(const std::filesystem::path& path,
                         std::span<const SafetensorsEntry> tensors,
                         const std::map<std::string, std::string>& metadata);

}  // namespace pp::model
