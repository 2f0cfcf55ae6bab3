// DecoderLayer: the one pre-norm transformer block every family we serve shares
// (Llama, Mistral, Qwen2, Qwen3), switched by ModelConfig: q/k/v bias (Qwen2), per-head q/k
// RMSNorm before RoPE (Qwen3). Weights are f32; q|k|v and gate|up are fused at load into one
// matrix each, so a layer is four matmuls.
//
//   x = rmsnorm(h) ; q,k,v = x Wqkv^T (+b) ; [q,k = rmsnorm_head(q,k)] ; rope(q,k) ;
//   kv <- k,v ; a = attention(q, kv) ; h += a Wo^T ; x = rmsnorm(h) ;
//   h += (silu(x Wg^T) * x Wu^T) Wd^T
//
// The layer reads and writes only the residual stream h, ending with a plain add, so running
// layers in one stage or split across several gives bitwise the same h.
#pragma once

#include <cstdint>
#include <vector>

#include "pp/kernels/cpu.h"
#include "pp/model/config.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

// The model's RoPE inverse frequencies [head_dim / 2] (both backends compute them on the host).
std::vector<float> rope_inv_freq_for(const ModelConfig& c);

// Per-forward metadata shared by every layer of a stage (built once per micro-batch).
struct LayerContext {
  const int32_t* positions = nullptr;     // [n_tokens]
  const int64_t* slots = nullptr;         // [n_tokens] KV slot of each new token
  const int32_t* seq_start = nullptr;     // [n_seq + 1]
  const int32_t* block_tables = nullptr;  // [n_seq, max_blocks]
  const float* inv_freq = nullptr;        // [head_dim / 2]
  int64_t n_tokens = 0, n_seq = 0, max_blocks = 0;
};

// Scratch buffers reused by every layer and every forward (grown, never shrunk).
struct LayerWorkspace {
  std::vector<float> x;        // [n_tokens, n_embd] normed input
  std::vector<float> qkv;      // [n_tokens, q_dim + 2 kv_dim]
  std::vector<float> q;        // [n_tokens, n_head, head_dim]
  std::vector<float> k;        // [n_tokens, n_head_kv, head_dim]
  std::vector<float> v;        // [n_tokens, n_head_kv, head_dim]
  std::vector<float> attn;     // [n_tokens, n_head, head_dim]
  std::vector<float> proj;     // [n_tokens, n_embd] output of o_proj, then of down_proj
  std::vector<float> gate_up;  // [n_tokens, 2 n_ff]
  std::vector<float> act;      // [n_tokens, n_ff]
  void reserve(const ModelConfig& c, int64_t n_tokens);
};

class DecoderLayer {
 public:
  // Reads layer `il`'s tensors (Hugging Face names, model.layers.<il>.*) from `w`.
  static Result<DecoderLayer> load(const ModelConfig& c, const WeightSource& w, int64_t il);

  // h [n_tokens, n_embd] in place; writes the new tokens' K/V into `kv`.
  void forward(float* h, const LayerContext& ctx, const kernels::cpu::PagedKv& kv,
               LayerWorkspace& ws) const;

  int64_t n_params() const;

 private:
  const ModelConfig* c_ = nullptr;  // the owning stage's config (outlives the layer)
  std::vector<float> attn_norm_;    // [n_embd]
  std::vector<float> wqkv_;         // [q_dim + 2 kv_dim, n_embd]
  std::vector<float> bqkv_;         // [q_dim + 2 kv_dim] (attention_bias) or empty
  std::vector<float> q_norm_;       // [head_dim] (qk_norm) or empty
  std::vector<float> k_norm_;       // [head_dim] (qk_norm) or empty
  std::vector<float> wo_;           // [n_embd, q_dim]
  std::vector<float> ffn_norm_;     // [n_embd]
  std::vector<float> wgate_up_;     // [2 n_ff, n_embd]
  std::vector<float> wdown_;        // [n_embd, n_ff]
};

}  // namespace pp::model
