// The shared decoder layer: its tables of tensors (q|k|v and gate|up fused into one slot each;
// an MoE layer's experts into two), loading from a table, and the forward pass over the CPU
// kernels.
#include "arch/decoder-layer.h"

#include <algorithm>
#include <cmath>
#include <span>

#include <fmt/format.h>

#include "arch/arch.h"
#include "arch/tensor-load.h"
#include "pp/assert.h"

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
  if (c.is_moe()) {
    const int64_t k = c.n_expert_used, F = c.n_ff_expert;
    grow(router, n * c.n_expert);
    if (int64_t(expert_ids.size()) < n * k) expert_ids.resize(size_t(n * k));
    if (int64_t(expert_rows.size()) < n * k) expert_rows.resize(size_t(n * k));
    grow(expert_weights, n * k);
    grow(expert_x, n * c.n_embd);
    grow(expert_gate_up, n * 2 * F);
    grow(expert_act, n * F);
    grow(expert_out, n * c.n_embd);
    grow(expert_y, n * k * c.n_embd);
  }
}

namespace {

using S = WeightSlot;
using Tp = TpSplit;

// Appends layer tensors under one layer's prefix.
struct LayerTable {
  std::string prefix;
  int64_t il;
  std::vector<TensorSpec> t;
  void add(const std::string& suffix, std::vector<int64_t> shape, Tp split, S slot,
           int64_t row_offset = 0) {
    t.push_back({.name = prefix + suffix,
                 .shape = std::move(shape),
                 .owner = TensorOwner::kLayer,
                 .layer = il,
                 .split = split,
                 .slot = slot,
                 .row_offset = row_offset});
  }
};

// The attention half every layer shares, up to and with the MLP's norm.
LayerTable attention_tensors(const ModelConfig& c, int64_t il) {
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), D = c.head_dim;
  LayerTable lt{.prefix = layer_prefix(il), .il = il, .t = {}};
  auto add = [&](const char* suffix, std::vector<int64_t> shape, Tp split, S slot,
                 int64_t row_offset = 0) {
    lt.add(suffix, std::move(shape), split, slot, row_offset);
  };
  add("input_layernorm.weight", {E}, Tp::kReplicated, S::kAttnNorm);
  // Fused [q; k; v] rows: a row-major [out, in] matrix is the concatenation of its parts.
  add("self_attn.q_proj.weight", {Q, E}, Tp::kColumn, S::kQkv, 0);
  add("self_attn.k_proj.weight", {KV, E}, Tp::kColumn, S::kQkv, Q);
  add("self_attn.v_proj.weight", {KV, E}, Tp::kColumn, S::kQkv, Q + KV);
  if (c.attention_bias) {
    add("self_attn.q_proj.bias", {Q}, Tp::kColumn, S::kQkvBias, 0);
    add("self_attn.k_proj.bias", {KV}, Tp::kColumn, S::kQkvBias, Q);
    add("self_attn.v_proj.bias", {KV}, Tp::kColumn, S::kQkvBias, Q + KV);
  }
  if (c.qk_norm) {
    add("self_attn.q_norm.weight", {D}, Tp::kReplicated, S::kQNorm);
    add("self_attn.k_norm.weight", {D}, Tp::kReplicated, S::kKNorm);
  }
  add("self_attn.o_proj.weight", {E, Q}, Tp::kRow, S::kO);
  add("post_attention_layernorm.weight", {E}, Tp::kReplicated, S::kFfnNorm);
  return lt;
}

}  // namespace

std::vector<TensorSpec> dense_layer_tensors(const ModelConfig& c, int64_t il) {
  const int64_t E = c.n_embd, F = c.n_ff;
  LayerTable lt = attention_tensors(c, il);
  lt.add("mlp.gate_proj.weight", {F, E}, Tp::kColumn, S::kGateUp, 0);
  lt.add("mlp.up_proj.weight", {F, E}, Tp::kColumn, S::kGateUp, F);
  lt.add("mlp.down_proj.weight", {E, F}, Tp::kRow, S::kDown);
  return std::move(lt.t);
}

std::vector<TensorSpec> moe_layer_tensors(const ModelConfig& c, int64_t il,
                                          const MoeTensorNames& names) {
  PP_ASSERT(c.is_moe());
  const int64_t E = c.n_embd, F = c.n_ff_expert;
  LayerTable lt = attention_tensors(c, il);
  // Every rank routes every token, so the router is whole on each; an expert splits as a dense
  // MLP does (each rank a slice of every expert's F), which keeps all experts on all ranks.
  lt.add(names.router, {c.n_expert, E}, Tp::kReplicated, S::kRouter);
  for (int64_t e = 0; e < c.n_expert; ++e) {
    lt.add(fmt::format(fmt::runtime(names.expert_gate), e), {F, E}, Tp::kColumn, S::kExpertGateUp,
           e * 2 * F);
    lt.add(fmt::format(fmt::runtime(names.expert_up), e), {F, E}, Tp::kColumn, S::kExpertGateUp,
           e * 2 * F + F);
    lt.add(fmt::format(fmt::runtime(names.expert_down), e), {E, F}, Tp::kRow, S::kExpertDown,
           e * E);
  }
  return std::move(lt.t);
}

Result<DecoderLayer> DecoderLayer::load(const ModelConfig& c, const WeightSource& w,
                                        std::span<const TensorSpec> tensors, CpuDtype cpu_dtype) {
  DecoderLayer l;
  l.c_ = &c;
  PP_RETURN_IF_ERROR(load_cpu_slots(w, tensors, l.w_, cpu_dtype));
  return l;
}

int64_t DecoderLayer::n_params() const {
  int64_t n = 0;
  for (const kernels::HostWeight& x : w_.all()) n += x.numel();
  return n;
}

Status DecoderLayer::forward(float* h, const LayerContext& ctx, const cpu::PagedKv& kv,
                             LayerWorkspace& ws) const {
  const ModelConfig& c = *c_;
  const int64_t T = ctx.n_tokens;
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, D = c.head_dim;
  const int64_t QKV = Q + 2 * KV;
  ws.reserve(c, T);

  const SlotMap<kernels::HostWeight>& w = w_;
  cpu::rms_norm({.x = h,
                 .weight = w[WeightSlot::kAttnNorm].f32_data(),
                 .out = ws.x.data(),
                 .n_rows = T,
                 .n = E,
                 .eps = c.rms_norm_eps});
  const kernels::HostWeight& bqkv = w[WeightSlot::kQkvBias];
  cpu::linear({.x = ws.x.data(),
               .w = w[WeightSlot::kQkv].view(),
               .bias = bqkv.empty() ? nullptr : bqkv.f32_data(),
               .out = ws.qkv.data(),
               .m = T});
  // Split the fused rows into contiguous q, k, v for the head-wise kernels.
  for (int64_t t = 0; t < T; ++t) {
    const float* row = ws.qkv.data() + t * QKV;
    std::copy_n(row, Q, ws.q.data() + t * Q);
    std::copy_n(row + Q, KV, ws.k.data() + t * KV);
    std::copy_n(row + Q + KV, KV, ws.v.data() + t * KV);
  }
  if (c.qk_norm) {
    cpu::rms_norm({.x = ws.q.data(),
                   .weight = w[WeightSlot::kQNorm].f32_data(),
                   .out = ws.q.data(),
                   .n_rows = T * c.n_head,
                   .n = D,
                   .eps = c.rms_norm_eps});
    cpu::rms_norm({.x = ws.k.data(),
                   .weight = w[WeightSlot::kKNorm].f32_data(),
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
                  .scale = 1.0f / std::sqrt(float(D)),
                  .head_begin = ctx.head_begin,
                  .group = ctx.group});
  cpu::linear({.x = ws.attn.data(), .w = w[WeightSlot::kO].view(), .out = ws.proj.data(), .m = T});
  const std::span<float> proj(ws.proj.data(), size_t(T * E));
  if (ctx.comm) PP_RETURN_IF_ERROR(ctx.comm->all_reduce_sum(proj));
  // h += attention output, then x = rmsnorm(h): the fused residual add.
  cpu::rms_norm({.x = ws.proj.data(),
                 .residual = h,
                 .weight = w[WeightSlot::kFfnNorm].f32_data(),
                 .out = ws.x.data(),
                 .n_rows = T,
                 .n = E,
                 .eps = c.rms_norm_eps});
  if (!w[WeightSlot::kRouter].empty()) {
    moe_mlp(T, ws);
  } else {
    cpu::linear(
        {.x = ws.x.data(), .w = w[WeightSlot::kGateUp].view(), .out = ws.gate_up.data(), .m = T});
    cpu::swiglu({.gate_up = ws.gate_up.data(), .out = ws.act.data(), .n_tokens = T, .n_ff = F});
    cpu::linear(
        {.x = ws.act.data(), .w = w[WeightSlot::kDown].view(), .out = ws.proj.data(), .m = T});
  }
  if (ctx.comm) PP_RETURN_IF_ERROR(ctx.comm->all_reduce_sum(proj));
  // The plain residual add that ends every layer: the stage boundary carries h alone.
  const int64_t n = T * E;
  const float* mlp = ws.proj.data();
  for (int64_t i = 0; i < n; ++i) h[i] += mlp[i];
  return ok_status();
}

void DecoderLayer::moe_mlp(int64_t T, LayerWorkspace& ws) const {
  const ModelConfig& c = *c_;
  const int64_t E = c.n_embd, F = c.n_ff_expert, k = c.n_expert_used;
  const SlotMap<kernels::HostWeight>& w = w_;
  cpu::linear(
      {.x = ws.x.data(), .w = w[WeightSlot::kRouter].view(), .out = ws.router.data(), .m = T});
  cpu::moe_route({.logits = ws.router.data(),
                  .ids = ws.expert_ids.data(),
                  .weights = ws.expert_weights.data(),
                  .n_tokens = T,
                  .n_expert = c.n_expert,
                  .k = k,
                  .renormalize = c.expert_norm_topk});
  // Expert e's [2F, E] gate|up and [E, F] down: views into the layer's stacked slots.
  const kernels::WeightView gate_up_all = w[WeightSlot::kExpertGateUp].view();
  const kernels::WeightView down_all = w[WeightSlot::kExpertDown].view();
  // Expert e's rows start e * rows bytes of rows in; any format cpu::linear takes.
  const auto* gate_up_bytes = gate_up_all.as<std::byte>();
  const auto* down_bytes = down_all.as<std::byte>();
  const int64_t gate_up_row = kernels::weight_row_bytes(gate_up_all.format, gate_up_all.cols);
  const int64_t down_row = kernels::weight_row_bytes(down_all.format, down_all.cols);
  for (int64_t e = 0; e < c.n_expert; ++e) {
    // The (token, j) pairs routed to e, in token order; the linear's rows are independent, so
    // which other tokens share the expert changes nothing in a row's result.
    int64_t m = 0;
    for (int64_t r = 0; r < T * k; ++r) {
      if (ws.expert_ids[size_t(r)] == int32_t(e)) ws.expert_rows[size_t(m++)] = r;
    }
    if (m == 0) continue;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = ws.expert_rows[size_t(i)] / k;
      std::copy_n(ws.x.data() + t * E, E, ws.expert_x.data() + i * E);
    }
    kernels::WeightView gate_up = gate_up_all;
    gate_up.data = gate_up_bytes + e * 2 * F * gate_up_row;
    gate_up.rows = 2 * F;
    kernels::WeightView down = down_all;
    down.data = down_bytes + e * E * down_row;
    down.rows = E;
    cpu::linear({.x = ws.expert_x.data(), .w = gate_up, .out = ws.expert_gate_up.data(), .m = m});
    cpu::swiglu({.gate_up = ws.expert_gate_up.data(),
                 .out = ws.expert_act.data(),
                 .n_tokens = m,
                 .n_ff = F});
    cpu::linear({.x = ws.expert_act.data(), .w = down, .out = ws.expert_out.data(), .m = m});
    for (int64_t i = 0; i < m; ++i) {
      std::copy_n(ws.expert_out.data() + i * E, E,
                  ws.expert_y.data() + ws.expert_rows[size_t(i)] * E);
    }
  }
  // Each token's weighted sum in its top-k order.
  for (int64_t t = 0; t < T; ++t) {
    float* out = ws.proj.data() + t * E;
    std::fill_n(out, E, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const float wj = ws.expert_weights[size_t(t * k + j)];
      const float* y = ws.expert_y.data() + (t * k + j) * E;
      for (int64_t i = 0; i < E; ++i) out[i] += wj * y[i];
    }
  }
}

}  // namespace pp::model
