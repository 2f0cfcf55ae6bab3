// DType and TensorInfo: what a weight file says about one tensor, before it is read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pp/kernels/weight.h"

namespace pp::model {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kF64,
  kI8,
  kI16,
  kI32,
  kI64,
  kU8,
  kBool,
  kF8E4M3,  // OCP fp8 e4m3 ("F8_E4M3" in safetensors), with scales (TensorInfo::scale_kind)
  // GGML block-quantized types (GGUF only), dequantized on load.
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ8_0,
  kQ2_K,
  kQ3_K,
  kQ4_K,
  kQ5_K,
  kQ6_K,
};

const char* dtype_name(DType t);  // "F32", "BF16", "Q4_1", ...

struct TensorInfo {
  std::string name;  // Hugging Face name ("model.layers.0.self_attn.q_proj.weight")
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // Hugging Face order, outermost first: a linear is [out, in]
  uint64_t offset = 0;         // byte offset of the data inside its file's data section
  uint64_t nbytes = 0;         // bytes of stored (possibly quantized) data
  int file_index = 0;          // which file of a sharded checkpoint
  // How a quantized (kF8E4M3) tensor's values are scaled back; kNone for every other dtype. The
  // scale tensors themselves are not listed as tensors of a source.
  kernels::ScaleKind scale_kind = kernels::ScaleKind::kNone;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace pp::model
