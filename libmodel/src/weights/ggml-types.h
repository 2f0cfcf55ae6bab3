// The GGML tensor types a GGUF file may name: their numeric ids, names, and block geometry
// (elements per block, bytes per block). Types we cannot dequantize are still named, so that a
// file holding one fails with a message that says which.
#pragma once

#include <cstdint>
#include <optional>

#include "pp/model/tensor-info.h"

namespace pp::model::detail {

struct GgmlBlock {
  int64_t elems = 0;  // elements per block (1 for plain types)
  int64_t bytes = 0;  // bytes per block
};

// The DType for a GGML type id, or nullopt when we do not support it.
std::optional<DType> dtype_from_ggml(uint32_t ggml_type);
// The GGML type id of a DType (F32 -> 0, Q4_1 -> 3, ...); nullopt for kU8 and kBool.
std::optional<uint32_t> ggml_from_dtype(DType t);
// "IQ2_XXS" for 16, "F32" for 0; nullptr for an id GGML never defined.
const char* ggml_type_name(uint32_t ggml_type);
// Block geometry of a DType; {0, 0} for one GGML has no layout for (kU8, kBool).
GgmlBlock ggml_block(DType t);

}  // namespace pp::model::detail
