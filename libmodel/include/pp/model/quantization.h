// Quantization on load (`--quantization fp8`, `pp-partition split --dtype fp8`): a model stored
// in bf16 (or f16, f32, GGUF) is served with fp8 e4m3 weights, one f32 scale per output channel,
// the way vLLM's and SGLang's `--quantization fp8` do it. Which tensors: the decoder layers'
// linear weights (q, k, v, o, gate, up, down, and every expert's); the embedding, the lm_head,
// an MoE router, norms and biases stay in their precision. A checkpoint already stored in fp8 keeps
// its own bytes and scales.
//
// quantize_on_load wraps a weight source so that every consumer sees the quantized model: find()
// reports those tensors as kF8E4M3 with per-channel scales, read_weight() returns the fp8 bytes
// (what a GPU stage uploads), read_f32() their dequantized values (what the CPU reference computes
// with), so the CPU and the GPU compute the same model.
#pragma once

#include <memory>
#include <string_view>

#include "pp/model/arch-tensors.h"
#include "pp/model/config.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

enum class Quantization : uint8_t {
  kNone,  // weights as the model stores them
  kFp8,   // fp8 e4m3 per-channel weights, activations quantized per token at run time
};

const char* quantization_name(Quantization q);  // "none", "fp8"
// "fp8" (or "none"); kInvalidArgument naming the value and the choices otherwise.
Result<Quantization> parse_quantization(std::string_view s);

// The CPU backend's weights (`--cpu-dtype`): GGUF block types stay as stored (the quantized
// linear of kernels/cpu.h runs them), or everything is dequantized to f32 on load (the reference,
// exact against transformers on the dequantized weights).
enum class CpuDtype : uint8_t {
  kAuto,  // GGUF Q4_0 ... Q8_0, Q4_K ... Q6_K kept as stored; everything else f32
  kF32,   // every weight f32
};

const char* cpu_dtype_name(CpuDtype d);  // "auto", "f32"
// "auto" or "f32"; kInvalidArgument naming the value and the choices otherwise.
Result<CpuDtype> parse_cpu_dtype(std::string_view s);

// Whether `t` is quantized on load: a decoder layer's linear weight (an expert's too).
bool quantized_on_load(const TensorSpec& t);

// `inner` with every tensor quantized_on_load() says (and that is not already fp8) quantized to
// fp8 per channel as it is read. Returns `inner` itself for kNone.
std::shared_ptr<const WeightSource> quantize_on_load(std::shared_ptr<const WeightSource> inner,
                                                     const ModelConfig& config, Quantization q);

}  // namespace pp::model
