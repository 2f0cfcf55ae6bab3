// The shared decoder layer: loading with q|k|v and gate|up fused, and the forward pass over the
// CPU kernels.
#include "arch/decoder-layer.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "arch/tensor-load.h"

namespace pp::model {

namespace cpu = kernels::cpu;

std::vector<float> rope_inv_freq_for(const ModelConfig& c) {
  cpu::RopeFreqParams rp;
  rp.rot_dim = c.head_dim;
  rp.theta = c.rope.theta;
  switch (c.rope.scaling) {
    case RopeScaling::kNone:
      rp.scaling = cpu::RopeScalingKind::kNone;
      break;
    case RopeScaling::kLinear:
      rp.scaling = cpu::RopeScalingKind::kLinear;
      break;
    case RopeScaling::kLlama3:
      rp.scaling = cpu::RopeScalingKind::kLlama3;
      break;
  }
  rp.factor = c.rope.factor;
  rp.low_freq_factor = c.rope.low_freq_factor;
  rp.high_freq_factor = c.rope.high_freq_factor;
  rp.original_max_position = c.rope.original_max_position;
  return cpu::rope_inv_freq(rp);
}

void LayerWorkspace::reserve(const ModelConfig& c, int64_t n) {
  auto grow = [](std::vector<float>& v, int64_t size) {
    if (int64_t(v.size()) < size) v.resize(size_t(size));
  };
  grow(x, n * c.n_embd);
  grow(qkv, n * (c.q_dim() + 2 * c.kv_dim()));
  grow(q, n * c.q_dim());
  grow(k, n * c.kv_dim());
  grow(v, n * c.kv_dim());
  grow(attn, n * c.q_dim());
  grow(proj, n * c.n_embd);
  grow(gate_up, n * 2 * c.n_ff);
  grow(act, n * c.n_ff);
}

Result<DecoderLayer> DecoderLayer::load(const ModelConfig& c, const WeightSource& w, int64_t il) {
  DecoderLayer l;
  l.c_ = &c;
  const std::string p = fmt::format("model.layers.{}.", il);
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, D = c.head_dim;

  l.attn_norm_.resize(E);
  PP_RETURN_IF_ERROR(load_tensor(w, p + "input_layernorm.weight", {E}, l.attn_norm_));

  // Fused [q; k; v] rows: a row-major [out, in] matrix is the concatenation of its parts.
  l.wqkv_.resize(size_t((Q + 2 * KV) * E));
  std::span<float> wqkv(l.wqkv_);
  PP_RETURN_IF_ERROR(load_tensor(w, p + "self_attn.q_proj.weight", {Q, E}, wqkv.subspan(0, Q * E)));
  PP_RETURN_IF_ERROR(
      load_tensor(w, p + "self_attn.k_proj.weight", {KV, E}, wqkv.subspan(Q * E, KV * E)));
  PP_RETURN_IF_ERROR(
      load_tensor(w, p + "self_attn.v_proj.weight", {KV, E}, wqkv.subspan((Q + KV) * E, KV * E)));
  if (c.attention_bias) {
    l.bqkv_.resize(size_t(Q + 2 * KV));
    std::span<float> b(l.bqkv_);
    PP_RETURN_IF_ERROR(load_tensor(w, p + "self_attn.q_proj.bias", {Q}, b.subspan(0, Q)));
    PP_RETURN_IF_ERROR(load_tensor(w, p + "self_attn.k_proj.bias", {KV}, b.subspan(Q, KV)));
    PP_RETURN_IF_ERROR(load_tensor(w, p + "self_attn.v_proj.bias", {KV}, b.subspan(Q + KV, KV)));
  }
  if (c.qk_norm) {
    l.q_norm_.resize(D);
    l.k_norm_.resize(D);
    PP_RETURN_IF_ERROR(load_tensor(w, p + "self_attn.q_norm.weight", {D}, l.q_norm_));
    PP_RETURN_IF_ERROR(load_tensor(w, p + "self_attn.k_norm.weight", {D}, l.k_norm_));
  }
  l.wo_.resize(size_t(E * Q));
  PP_RETURN_IF_ERROR(load_tensor(w, p + "self_attn.o_proj.weight", {E, Q}, l.wo_));

  l.ffn_norm_.resize(E);
  PP_RETURN_IF_ERROR(load_tensor(w, p + "post_attention_layernorm.weight", {E}, l.ffn_norm_));
  l.wgate_up_.resize(size_t(2 * F * E));
  std::span<float> wgu(l.wgate_up_);
  PP_RETURN_IF_ERROR(load_tensor(w, p + "mlp.gate_proj.weight", {F, E}, wgu.subspan(0, F * E)));
  PP_RETURN_IF_ERROR(load_tensor(w, p + "mlp.up_proj.weight", {F, E}, wgu.subspan(F * E, F * E)));
  l.wdown_.resize(size_t(E * F));
  PP_RETURN_IF_ERROR(load_tensor(w, p + "mlp.down_proj.weight", {E, F}, l.wdown_));
  return l;
}

int64_t DecoderLayer::n_params() const {
  return int64_t(attn_norm_.size() + wqkv_.size() + bqkv_.size() + q_norm_.size() + k_norm_.size() +
                 wo_.size() + ffn_norm_.size() + wgate_up_.size() + wdown_.size());
}

void DecoderLayer::forward(float* h, const LayerContext& ctx, const cpu::PagedKv& kv,
                           LayerWorkspace& ws) const {
  const ModelConfig& c = *c_;
  const int64_t T = ctx.n_tokens;
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, D = c.head_dim;
  const int64_t QKV = Q + 2 * KV;
  ws.reserve(c, T);

  cpu::rms_norm({.x = h,
                 .weight = attn_norm_.data(),
                 .out = ws.x.data(),
                 .n_rows = T,
                 .n = E,
                 .eps = c.rms_norm_eps});
  cpu::matmul({.x = ws.x.data(),
               .w = wqkv_.data(),
               .bias = bqkv_.empty() ? nullptr : bqkv_.data(),
               .out = ws.qkv.data(),
               .m = T,
               .n = QKV,
               .k = E});
  // Split the fused rows into contiguous q, k, v for the head-wise kernels.
  for (int64_t t = 0; t < T; ++t) {
    const float* row = ws.qkv.data() + t * QKV;
    std::copy_n(row, Q, ws.q.data() + t * Q);
    std::copy_n(row + Q, KV, ws.k.data() + t * KV);
    std::copy_n(row + Q + KV, KV, ws.v.data() + t * KV);
  }
  if (c.qk_norm) {
    cpu::rms_norm({.x = ws.q.data(),
                   .weight = q_norm_.data(),
                   .out = ws.q.data(),
                   .n_rows = T * c.n_head,
                   .n = D,
                   .eps = c.rms_norm_eps});
    cpu::rms_norm({.x = ws.k.data(),
                   .weight = k_norm_.data(),
                   .out = ws.k.data(),
                   .n_rows = T * c.n_head_kv,
                   .n = D,
                   .eps = c.rms_norm_eps});
  }
  cpu::rope_neox({.x = ws.q.data(),
                  .pos = ctx.positions,
                  .inv_freq = ctx.inv_freq,
                  .n_tokens = T,
                  .n_head = c.n_head,
                  .head_dim = D,
                  .rot_dim = D});
  cpu::rope_neox({.x = ws.k.data(),
                  .pos = ctx.positions,
                  .inv_freq = ctx.inv_freq,
                  .n_tokens = T,
                  .n_head = c.n_head_kv,
                  .head_dim = D,
                  .rot_dim = D});
  cpu::kv_write({.kv = kv, .k = ws.k.data(), .v = ws.v.data(), .slots = ctx.slots, .n_tokens = T});
  cpu::attention({.q = ws.q.data(),
                  .out = ws.attn.data(),
                  .kv = kv,
                  .seq_start = ctx.seq_start,
                  .q_pos = ctx.positions,
                  .block_tables = ctx.block_tables,
                  .n_tokens = T,
                  .n_seq = ctx.n_seq,
                  .n_head = c.n_head,
                  .max_blocks = ctx.max_blocks,
                  .scale = 1.0f / std::sqrt(float(D))});
  cpu::matmul(
      {.x = ws.attn.data(), .w = wo_.data(), .out = ws.proj.data(), .m = T, .n = E, .k = Q});
  // h += attention output, then x = rmsnorm(h): the fused residual add.
  cpu::rms_norm({.x = ws.proj.data(),
                 .residual = h,
                 .weight = ffn_norm_.data(),
                 .out = ws.x.data(),
                 .n_rows = T,
                 .n = E,
                 .eps = c.rms_norm_eps});
  cpu::matmul({.x = ws.x.data(),
               .w = wgate_up_.data(),
               .out = ws.gate_up.data(),
               .m = T,
               .n = 2 * F,
               .k = E});
  cpu::swiglu({.gate_up = ws.gate_up.data(), .out = ws.act.data(), .n_tokens = T, .n_ff = F});
  cpu::matmul(
      {.x = ws.act.data(), .w = wdown_.data(), .out = ws.proj.data(), .m = T, .n = E, .k = F});
  // The plain residual add that ends every layer: the stage boundary carries h alone.
  const int64_t n = T * E;
  const float* mlp = ws.proj.data();
  for (int64_t i = 0; i < n; ++i) h[i] += mlp[i];
}

}  // namespace pp::model
