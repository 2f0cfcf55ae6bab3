// DecoderLayer: the one pre-norm transformer block every family we serve shares
// (Llama, Mistral, Qwen2, Qwen3), switched by ModelConfig: q/k/v bias (Qwen2), per-head q/k
// RMSNorm before RoPE (Qwen3). Its tensors are listed once, in dense_layer_tensors (the default
// table of every family's ArchSpec); the CPU layer, the GPU stage model, random weights and the
// partitioner all read that table. Weights are typed (kernels::HostWeight, f32 on the CPU);
// q|k|v and gate|up fill one fused slot each, so a layer is four linears.
//
//   x = rmsnorm(h) ; q,k,v = x Wqkv^T (+b) ; [q,k = rmsnorm_head(q,k)] ; rope(q,k) ;
//   kv <- k,v ; a = attention(q, kv) ; h += a Wo^T ; x = rmsnorm(h) ;
//   h += (silu(x Wg^T) * x Wu^T) Wd^T                          (a dense MLP)
//   h += sum_j w_j (silu(x Wg[e_j]^T) * x Wu[e_j]^T) Wd[e_j]^T    (an MoE MLP, Qwen3-MoE, Mixtral)
//
// An MoE layer's MLP (the table gave it a router slot: moe_layer_tensors) routes each token to
// its top k experts (cpu::moe_route), runs each expert on the tokens routed to it (the same
// linear and SwiGLU kernels, whose rows are independent of the batch), and sums each token's k
// outputs in its own top-k order: a token's result never depends on the other tokens.
//
// The layer reads and writes only the residual stream h, ending with a plain add, so running
// layers in one stage or split across several gives bitwise the same h.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "arch/arch.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/host-weight.h"
#include "pp/model/arch-tensors.h"
#include "pp/model/config.h"
#include "pp/model/quantization.h"
#include "pp/model/tensor-parallel.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

// dense_layer_tensors (declared in arch.h, the default table of every family): norms, q/k/v
// (+ biases with attention_bias, q/k norms with qk_norm), o, gate/up, down, with their slots and
// tensor-parallel splits.

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
  // Tensor parallelism: the model's index of this rank's first query head and query heads per
  // KV head (cpu::AttentionParams), and the group's collectives (nullptr at TP 1).
  int64_t head_begin = 0, group = 0;
  TpComm* comm = nullptr;
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
  // MoE layers only (k = n_expert_used, F = n_ff_expert).
  std::vector<float> router;          // [n_tokens, n_expert] router logits
  std::vector<int32_t> expert_ids;    // [n_tokens, k] chosen experts
  std::vector<float> expert_weights;  // [n_tokens, k] their weights
  std::vector<int64_t> expert_rows;   // [n_tokens * k] the (token, j) pairs of one expert
  std::vector<float> expert_x;        // [n_tokens, n_embd] those tokens' inputs
  std::vector<float> expert_gate_up;  // [n_tokens, 2 F]
  std::vector<float> expert_act;      // [n_tokens, F]
  std::vector<float> expert_out;      // [n_tokens, n_embd] one expert's outputs
  std::vector<float> expert_y;        // [n_tokens, k, n_embd] each (token, j)'s expert output
  void reserve(const ModelConfig& c, int64_t n_tokens);
};

class DecoderLayer {
 public:
  // Reads one layer's tensors (its rows of the table, layer_tensors) from `w` into its slots
  // (load_cpu_slots: f32, or GGUF blocks as stored).
  static Result<DecoderLayer> load(const ModelConfig& c, const WeightSource& w,
                                   std::span<const TensorSpec> tensors, CpuDtype cpu_dtype);

  // h [n_tokens, n_embd] in place; writes the new tokens' K/V into `kv`. A rank of a
  // tensor-parallel group (ctx.comm) all-reduces o_proj's and the MLP's partial outputs; their
  // failure is the only error.
  Status forward(float* h, const LayerContext& ctx, const kernels::cpu::PagedKv& kv,
                 LayerWorkspace& ws) const;

  int64_t n_params() const;

 private:
  // ws.proj [T, n_embd] = the MoE MLP of ws.x [T, n_embd].
  void moe_mlp(int64_t n_tokens, LayerWorkspace& ws) const;

  // The owning stage's config (outlives the layer); a tensor-parallel rank's local one.
  const ModelConfig* c_ = nullptr;
  // The layer's slots (shapes in arch-tensors.h): attn_norm, qkv, qkv_bias (attention_bias),
  // q_norm and k_norm (qk_norm), o, ffn_norm, then gate_up and down (a dense MLP) or router,
  // expert_gate_up and expert_down (an MoE one); the others stay empty.
  SlotMap<kernels::HostWeight> w_;
};

}  // namespace pp::model
