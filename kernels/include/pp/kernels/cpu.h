// The CPU kernels: the reference implementation of every op in pp. Each later backend (CUDA)
// has a twin with the same params struct and is tested against these.
//
// Everything here is f32, row-major, and batch-invariant: a row's result never depends on which
// other rows share its call (so outputs are the same however the scheduler batches requests or
// the pipeline splits the model). Kernels never allocate on hot paths except where noted.
// Threads: OpenMP over rows/heads/column chunks, the count set process-wide by set_num_threads
// (which also sets OpenBLAS's, for any other user of it); no result depends on the count.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "pp/kernels/weight.h"

namespace pp::kernels::cpu {

void set_num_threads(int n);  // n <= 0: all cores
int num_threads();

// out[t, :] = table[ids[t], :]. ids must be < n_vocab (checked by the caller).
struct EmbeddingParams {
  const float* table = nullptr;  // [n_vocab, n_embd]
  const int32_t* ids = nullptr;  // [n_tokens]
  float* out = nullptr;          // [n_tokens, n_embd]
  int64_t n_vocab = 0, n_embd = 0, n_tokens = 0;
  // Instead of `table`: a table in a GGUF block format [n_vocab, n_embd], each row looked up
  // dequantized (gguf-blocks.h, bit-exact with dequantizing the whole table).
  WeightView blocks;
};
void embedding(const EmbeddingParams& p);

// RMSNorm over the last dimension. With `residual` set, first residual += x, then
// out = rmsnorm(residual) * weight (the fused residual add of a pre-norm decoder).
// out may alias x. Rows: n_rows of n elements each (Qwen3's q/k norm: rows = tokens*heads).
struct RmsNormParams {
  const float* x = nullptr;       // [n_rows, n]
  float* residual = nullptr;      // [n_rows, n] or nullptr
  const float* weight = nullptr;  // [n]
  float* out = nullptr;           // [n_rows, n]
  int64_t n_rows = 0, n = 0;
  float eps = 1e-6f;
};
void rms_norm(const RmsNormParams& p);

// RoPE frequencies, NeoX layout (rotate_half: pairs (i, i + rot_dim/2)), with optional scaling.
enum class RopeScalingKind : uint8_t { kNone, kLinear, kLlama3 };
struct RopeFreqParams {
  int64_t rot_dim = 0;  // dimensions rotated (== head_dim for every family we serve)
  float theta = 10000.0f;
  RopeScalingKind scaling = RopeScalingKind::kNone;
  float factor = 1.0f, low_freq_factor = 1.0f, high_freq_factor = 4.0f;
  int64_t original_max_position = 8192;
};
// [rot_dim / 2] inverse frequencies, computed once per model.
std::vector<float> rope_inv_freq(const RopeFreqParams& p);

// In-place rotation of x[t, h, :] by angle pos[t] * inv_freq[i].
struct RopeParams {
  float* x = nullptr;               // [n_tokens, n_head, head_dim]
  const int32_t* pos = nullptr;     // [n_tokens]
  const float* inv_freq = nullptr;  // [rot_dim / 2]
  int64_t n_tokens = 0, n_head = 0, head_dim = 0, rot_dim = 0;
};
void rope_neox(const RopeParams& p);

// out = x @ w^T (+ bias): the linear layer, weights in Hugging Face [out, in] layout. Every
// element is one fixed-order AVX2 dot product (OpenBLAS's sgemm is not batch-invariant: see
// matmul.cpp), so each row's result is independent of m, its position and the thread count.
struct MatmulParams {
  const float* x = nullptr;     // [m, k]
  const float* w = nullptr;     // [n, k]
  const float* bias = nullptr;  // [n] or nullptr
  float* out = nullptr;         // [m, n]
  int64_t m = 0, n = 0, k = 0;
};
void matmul(const MatmulParams& p);

// out = x @ w^T (+ bias) for a typed weight: the layers' entry point, dispatching on w.format.
// An f32 weight without scales runs matmul above (the reference); a GGUF block weight (Q4_0 ...
// Q6_K) stays quantized: each row of x is quantized to 8-bit blocks of 32 and every element is
// an integer dot product in a fixed order (kernels/src/cpu/quant-dot.h), batch-invariant like
// matmul and the same bits on every instruction set. Any other format is a bug of the loader
// (linear_supports says what to hand over) and aborts naming the format.
struct LinearParams {
  const float* x = nullptr;     // [m, k]
  WeightView w;                 // [n, k]: n = w.rows, k = w.cols
  const float* bias = nullptr;  // [n] or nullptr
  float* out = nullptr;         // [m, n]
  int64_t m = 0;
};
void linear(const LinearParams& p);
// Whether linear takes weights of this format and scale kind.
bool linear_supports(WeightFormat f, ScaleKind s);

// The instruction sets of the quantized linear's kernels. They give the same bits (quant-dot.h),
// so the choice is speed only; the best the CPU has is chosen at the first call.
enum class QuantIsa {
  kScalar,      // plain C++: the reference
  kAvx2,        // maddubs + madd
  kAvxVnni,     // dpbusd (AVX-VNNI, 256-bit)
  kAvx512Vnni,  // dpbusd (AVX-512 VNNI on 256-bit registers)
};
const char* quant_isa_name(QuantIsa isa);  // "scalar", "avx2", "avx-vnni", "avx512-vnni"
bool quant_isa_supported(QuantIsa isa);    // whether this CPU (and OS) runs it
QuantIsa quant_isa();                      // the variant in use
void set_quant_isa(QuantIsa isa);          // for tests and benchmarks; must be supported

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, n_ff + i]: SwiGLU over the fused gate|up output.
struct SwigluParams {
  const float* gate_up = nullptr;  // [n_tokens, 2 * n_ff]
  float* out = nullptr;            // [n_tokens, n_ff]
  int64_t n_tokens = 0, n_ff = 0;
};
void swiglu(const SwigluParams& p);

// Mixture-of-experts routing, one token (row) at a time: the softmax of its router logits over
// the experts (f32), the k most probable experts, most probable first, ties to the lower expert
// index (what torch.topk gives in practice), and their probabilities as weights, renormalised to
// sum to 1 when `renormalize` (Qwen3-MoE's norm_topk_prob; Mixtral's softmax over the chosen
// logits is the same). A row's result depends on that row alone.
struct MoeRouteParams {
  const float* logits = nullptr;  // [n_tokens, n_expert]
  int32_t* ids = nullptr;         // [n_tokens, k] chosen experts
  float* weights = nullptr;       // [n_tokens, k] their weights
  int64_t n_tokens = 0, n_expert = 0, k = 0;
  bool renormalize = false;
};
void moe_route(const MoeRouteParams& p);

// One layer's paged KV pool. Slot s = block * block_size + offset holds one token.
struct PagedKv {
  float* k = nullptr;  // [n_blocks, block_size, n_head_kv, head_dim]
  float* v = nullptr;  // [n_blocks, block_size, n_head_kv, head_dim]
  int64_t n_blocks = 0, block_size = 0, n_head_kv = 0, head_dim = 0;
};

// Writes new tokens' K and V into their slots. A negative slot marks a padding token: skipped.
struct KvWriteParams {
  PagedKv kv;
  const float* k = nullptr;        // [n_tokens, n_head_kv, head_dim]
  const float* v = nullptr;        // [n_tokens, n_head_kv, head_dim]
  const int64_t* slots = nullptr;  // [n_tokens]
  int64_t n_tokens = 0;
};
void kv_write(const KvWriteParams& p);

// Causal attention with GQA over the paged cache. Query token t of sequence s (tokens
// seq_start[s] .. seq_start[s+1]) sits at position q_pos[t] and attends to the keys at
// positions 0 .. q_pos[t] of its sequence, found through block_tables[s]. The keys of the new
// tokens must already be written (kv_write). Online softmax over keys in position order, so
// the result does not depend on chunking or batching.
struct AttentionParams {
  const float* q = nullptr;  // [n_tokens, n_head, head_dim]
  float* out = nullptr;      // [n_tokens, n_head, head_dim]
  PagedKv kv;
  const int32_t* seq_start = nullptr;     // [n_seq + 1]
  const int32_t* q_pos = nullptr;         // [n_tokens]
  const int32_t* block_tables = nullptr;  // [n_seq, max_blocks]
  int64_t n_tokens = 0, n_seq = 0, n_head = 0, max_blocks = 0;
  float scale = 1.0f;  // usually 1 / sqrt(head_dim)
  // A tensor-parallel rank's slice of the model's heads: query head h here is the model's head
  // head_begin + h, which reads the model's KV head (head_begin + h) / group, stored here as KV
  // head (head_begin + h) / group - head_begin / group. group 0: n_head / n_head_kv, and
  // head_begin 0 (the whole model, or a rank whose heads cover whole KV groups).
  int64_t head_begin = 0, group = 0;
};
void attention(const AttentionParams& p);

// Penalties on one row of logits, in place, from the counts of tokens seen so far:
// repetition (HF/vLLM: divide positive / multiply negative logits of every seen token),
// presence (subtract once per seen output token) and frequency (subtract count times).
struct PenaltyParams {
  float* logits = nullptr;  // [n_vocab]
  int64_t n_vocab = 0;
  const int32_t* prompt_ids = nullptr;  // repetition penalty also covers the prompt
  int64_t n_prompt = 0;
  const int32_t* output_ids = nullptr;
  int64_t n_output = 0;
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
};
void apply_penalties(const PenaltyParams& p);

// Logit bias and the allowed-token mask of structured output on one row, in place, after the
// penalties: logits[bias_ids[i]] += bias_values[i]; then, with `allowed`, every token whose bit
// is clear (bit t % 32 of word t / 32) becomes -inf. Bias ids must be distinct and in range.
struct LogitConstraints {
  const int32_t* bias_ids = nullptr;   // [n_bias]
  const float* bias_values = nullptr;  // [n_bias]
  int64_t n_bias = 0;
  const uint32_t* allowed = nullptr;  // [ceil(n_vocab / 32)]; null: every token allowed
  bool active() const { return n_bias > 0 || allowed != nullptr; }
};
void apply_logit_constraints(float* logits, int64_t n_vocab, const LogitConstraints& c);

// Sampling of one row. temperature <= 0 (or top_k == 1) is greedy (lowest id wins ties).
// Otherwise: logits / temperature, then top-k, top-p, min-p filters, then one draw from a
// counter-based RNG keyed by (seed, step), so a seed reproduces its output whatever the batch.
struct SampleParams {
  const float* logits = nullptr;  // [n_vocab], after penalties
  int64_t n_vocab = 0;
  float temperature = 1.0f;
  int32_t top_k = 0;   // 0 = off
  float top_p = 1.0f;  // 1 = off
  float min_p = 0.0f;  // 0 = off
  uint64_t seed = 0;
  uint64_t step = 0;           // index of the token being generated in its request
  int32_t n_top_logprobs = 0;  // how many top alternatives to report (0 = none)
};
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};
struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;           // log_softmax of the raw logits (before temperature) at token
  std::vector<TokenLogprob> top;  // the n_top_logprobs most likely tokens, most likely first
};
// `scratch` is caller-owned workspace reused across calls (resized as needed).
SampleResult sample(const SampleParams& p, std::vector<float>& scratch);

// What every caller of sample() does with a request's row: when `pen` sets a penalty, copy
// s.logits into `penalized`, apply the penalties there, and sample from the copy (the row itself
// is left untouched); otherwise sample the row as it is. pen.logits and pen.n_vocab are ignored.
SampleResult sample_with_penalties(PenaltyParams pen, SampleParams s, std::vector<float>& penalized,
                                   std::vector<float>& scratch);
// The same, then logit bias and the allowed-token mask (apply_logit_constraints) on the copy.
SampleResult sample_constrained(PenaltyParams pen, const LogitConstraints& c, SampleParams s,
                                std::vector<float>& penalized, std::vector<float>& scratch);

// A uniform float in [0, 1) from (seed, step); the same on every backend.
float philox_uniform(uint64_t seed, uint64_t step);

// The generator behind philox_uniform: Philox4x32-10 (Salmon et al. 2011, as in Random123),
// multipliers 0xD2511F53 / 0xCD9E8D57, key increments 0x9E3779B9 / 0xBB67AE85, 10 rounds.
// philox_uniform(seed, step) = (r[0] >> 8) * 2^-24 where
// r = philox4x32_10({uint32(step), uint32(step >> 32), 0, 0}, {uint32(seed), uint32(seed >> 32)}).
// sample() then walks the kept tokens in ascending id order, summing exp(logit/T - max) in f64,
// and takes the first token whose running sum exceeds u * total (the last kept one if none).
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key);

}  // namespace pp::kernels::cpu
