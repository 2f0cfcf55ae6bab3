// Helpers for the model tests: an in-memory WeightSource with random weights for any config,
// a WeightSource wrapper that records which tensors were read, and a plain double-precision
// reference forward pass of the decoder (full attention, no paging, no fusion) written
// straight from the Hugging Face modeling code, to check StageModel against.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include "pp/model/config.h"
#include "pp/model/weights.h"
#include "test-util.h"

namespace pp::test {

class MemoryWeights : public model::WeightSource {
 public:
  void add(const std::string& name, std::vector<int64_t> shape, std::vector<float> data) {
    model::TensorInfo info;
    info.name = name;
    info.shape = std::move(shape);
    info.nbytes = data.size() * 4;
    tensors_[name] = {info, std::move(data)};
  }
  void remove(const std::string& name) { tensors_.erase(name); }
  const std::vector<float>& data(const std::string& name) const { return tensors_.at(name).second; }

  std::vector<std::string> names() const override {
    std::vector<std::string> v;
    for (const auto& [n, t] : tensors_) v.push_back(n);
    return v;
  }
  const model::TensorInfo* find(std::string_view name) const override {
    auto it = tensors_.find(std::string(name));
    return it == tensors_.end() ? nullptr : &it->second.first;
  }
  Status read_f32(std::string_view name, std::span<float> out) const override {
    auto it = tensors_.find(std::string(name));
    if (it == tensors_.end()) return not_found("tensor '{}' not found in 'memory'", name);
    if (out.size() != it->second.second.size()) return invalid_argument("bad size for '{}'", name);
    std::copy(it->second.second.begin(), it->second.second.end(), out.begin());
    return ok_status();
  }
  std::string describe() const override { return "memory"; }

 private:
  std::map<std::string, std::pair<model::TensorInfo, std::vector<float>>> tensors_;
};

// Wraps a source and records the names read.
class RecordingWeights : public model::WeightSource {
 public:
  explicit RecordingWeights(const model::WeightSource& inner) : inner_(inner) {}
  std::vector<std::string> names() const override { return inner_.names(); }
  const model::TensorInfo* find(std::string_view name) const override { return inner_.find(name); }
  Status read_f32(std::string_view name, std::span<float> out) const override {
    std::lock_guard<std::mutex> lock(mu_);
    read_.insert(std::string(name));
    return inner_.read_f32(name, out);
  }
  std::string describe() const override { return inner_.describe(); }
  std::set<std::string> read() const { return read_; }

 private:
  const model::WeightSource& inner_;
  mutable std::mutex mu_;
  mutable std::set<std::string> read_;
};

// Reads every tensor of a source once and keeps it in memory (so that loading many stages of
// a quantized model does not dequantize it again each time).
inline MemoryWeights cache_weights(const model::WeightSource& src) {
  MemoryWeights w;
  for (const std::string& n : src.names()) {
    const model::TensorInfo* info = src.find(n);
    std::vector<float> data(static_cast<size_t>(info->numel()));
    EXPECT_TRUE(src.read_f32(n, data).ok()) << n;
    w.add(n, info->shape, std::move(data));
  }
  return w;
}

// The Hugging Face names of an MoE layer's router and expert `e`'s gate, up and down, under
// the layer prefix (written out here, not read from the table, so the table is checked).
struct MoeNames {
  std::string router, gate, up, down;
};
inline MoeNames moe_names(const model::ModelConfig& c, int64_t e) {
  const std::string x = std::to_string(e);
  if (c.arch == model::Arch::kMixtral) {
    return {"block_sparse_moe.gate.weight", "block_sparse_moe.experts." + x + ".w1.weight",
            "block_sparse_moe.experts." + x + ".w3.weight",
            "block_sparse_moe.experts." + x + ".w2.weight"};
  }
  return {"mlp.gate.weight", "mlp.experts." + x + ".gate_proj.weight",
          "mlp.experts." + x + ".up_proj.weight", "mlp.experts." + x + ".down_proj.weight"};
}

// Random weights for `c`, scaled like a trained model's (so activations stay O(1)).
inline MemoryWeights random_weights(const model::ModelConfig& c) {
  MemoryWeights w;
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff, D = c.head_dim;
  auto mat = [&](int64_t out, int64_t in) {
    const float a = 1.0f / std::sqrt(float(in));
    return random_floats(size_t(out * in), -a, a);
  };
  auto norm = [&](int64_t n) { return random_floats(size_t(n), 0.8f, 1.2f); };
  w.add("model.embed_tokens.weight", {c.n_vocab, E}, random_floats(size_t(c.n_vocab * E)));
  for (int64_t il = 0; il < c.n_layer; ++il) {
    const std::string p = "model.layers." + std::to_string(il) + ".";
    w.add(p + "input_layernorm.weight", {E}, norm(E));
    w.add(p + "self_attn.q_proj.weight", {Q, E}, mat(Q, E));
    w.add(p + "self_attn.k_proj.weight", {KV, E}, mat(KV, E));
    w.add(p + "self_attn.v_proj.weight", {KV, E}, mat(KV, E));
    if (c.attention_bias) {
      w.add(p + "self_attn.q_proj.bias", {Q}, random_floats(size_t(Q), -0.5f, 0.5f));
      w.add(p + "self_attn.k_proj.bias", {KV}, random_floats(size_t(KV), -0.5f, 0.5f));
      w.add(p + "self_attn.v_proj.bias", {KV}, random_floats(size_t(KV), -0.5f, 0.5f));
    }
    if (c.qk_norm) {
      w.add(p + "self_attn.q_norm.weight", {D}, norm(D));
      w.add(p + "self_attn.k_norm.weight", {D}, norm(D));
    }
    w.add(p + "self_attn.o_proj.weight", {E, Q}, mat(E, Q));
    w.add(p + "post_attention_layernorm.weight", {E}, norm(E));
    if (c.layer_is_moe(il)) {
      const int64_t Fe = c.n_ff_expert;
      // A router with spread, so the top k is clear of ties.
      w.add(p + moe_names(c, 0).router, {c.n_expert, E}, random_floats(size_t(c.n_expert * E)));
      for (int64_t e = 0; e < c.n_expert; ++e) {
        const MoeNames n = moe_names(c, e);
        w.add(p + n.gate, {Fe, E}, mat(Fe, E));
        w.add(p + n.up, {Fe, E}, mat(Fe, E));
        w.add(p + n.down, {E, Fe}, mat(E, Fe));
      }
      continue;
    }
    w.add(p + "mlp.gate_proj.weight", {F, E}, mat(F, E));
    w.add(p + "mlp.up_proj.weight", {F, E}, mat(F, E));
    w.add(p + "mlp.down_proj.weight", {E, F}, mat(E, F));
  }
  w.add("model.norm.weight", {E}, norm(E));
  if (!c.tie_word_embeddings) w.add("lm_head.weight", {c.n_vocab, E}, mat(c.n_vocab, E));
  return w;
}

// HF's inverse frequencies, in double.
inline std::vector<double> reference_inv_freq(const model::ModelConfig& c) {
  const int64_t D = c.head_dim;
  std::vector<double> f(size_t(D / 2));
  for (int64_t i = 0; i < D / 2; ++i)
    f[i] = 1.0 / std::pow(double(c.rope.theta), double(2 * i) / D);
  if (c.rope.scaling == model::RopeScaling::kLinear) {
    for (double& x : f) x /= c.rope.factor;
  } else if (c.rope.scaling == model::RopeScaling::kLlama3) {
    const double old_ctx = double(c.rope.original_max_position);
    const double low_wavelen = old_ctx / c.rope.low_freq_factor;
    const double high_wavelen = old_ctx / c.rope.high_freq_factor;
    for (double& x : f) {
      const double wavelen = 2 * M_PI / x;
      double scaled = wavelen > low_wavelen ? x / c.rope.factor : x;
      const double smooth = (old_ctx / wavelen - c.rope.low_freq_factor) /
                            (c.rope.high_freq_factor - c.rope.low_freq_factor);
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      if (medium) scaled = (1 - smooth) * scaled / c.rope.factor + smooth * scaled;
      x = scaled;
    }
  }
  return f;
}

// Logits [n, n_vocab] of every position of one sequence, computed plainly in double.
inline std::vector<double> reference_logits(const model::ModelConfig& c, const MemoryWeights& w,
                                            const std::vector<int32_t>& ids) {
  const int64_t n = int64_t(ids.size()), E = c.n_embd, H = c.n_head, Hkv = c.n_head_kv,
                D = c.head_dim, F = c.n_ff, V = c.n_vocab;
  using Vec = std::vector<double>;
  auto rmsnorm = [&](const double* x, const std::vector<float>& g, int64_t len, double* out) {
    double ss = 0;
    for (int64_t i = 0; i < len; ++i) ss += x[i] * x[i];
    const double r = 1.0 / std::sqrt(ss / len + c.rms_norm_eps);
    for (int64_t i = 0; i < len; ++i) out[i] = g[i] * (x[i] * r);
  };
  auto linear = [&](const double* x, const std::string& name, int64_t out, int64_t in, double* y,
                    const std::string& bias) {
    const std::vector<float>& W = w.data(name);
    for (int64_t o = 0; o < out; ++o) {
      double s = bias.empty() ? 0.0 : w.data(bias)[o];
      for (int64_t i = 0; i < in; ++i) s += double(W[o * in + i]) * x[i];
      y[o] = s;
    }
  };
  const Vec inv_freq = reference_inv_freq(c);
  auto rope = [&](double* x, int64_t pos) {  // one head, rotate_half layout
    for (int64_t i = 0; i < D / 2; ++i) {
      const double a = pos * inv_freq[i], cs = std::cos(a), sn = std::sin(a);
      const double x0 = x[i], x1 = x[i + D / 2];
      x[i] = x0 * cs - x1 * sn;
      x[i + D / 2] = x1 * cs + x0 * sn;
    }
  };

  Vec h(size_t(n * E));
  const std::vector<float>& emb = w.data("model.embed_tokens.weight");
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < E; ++i) h[t * E + i] = emb[ids[t] * E + i];

  for (int64_t il = 0; il < c.n_layer; ++il) {
    const std::string p = "model.layers." + std::to_string(il) + ".";
    Vec q(size_t(n * H * D)), k(size_t(n * Hkv * D)), v(size_t(n * Hkv * D)),
        x(static_cast<size_t>(E));
    for (int64_t t = 0; t < n; ++t) {
      rmsnorm(&h[t * E], w.data(p + "input_layernorm.weight"), E, x.data());
      const bool b = c.attention_bias;
      linear(x.data(), p + "self_attn.q_proj.weight", H * D, E, &q[t * H * D],
             b ? p + "self_attn.q_proj.bias" : "");
      linear(x.data(), p + "self_attn.k_proj.weight", Hkv * D, E, &k[t * Hkv * D],
             b ? p + "self_attn.k_proj.bias" : "");
      linear(x.data(), p + "self_attn.v_proj.weight", Hkv * D, E, &v[t * Hkv * D],
             b ? p + "self_attn.v_proj.bias" : "");
      for (int64_t hh = 0; hh < H; ++hh) {
        double* qh = &q[(t * H + hh) * D];
        if (c.qk_norm) rmsnorm(qh, w.data(p + "self_attn.q_norm.weight"), D, qh);
        rope(qh, t);
      }
      for (int64_t hh = 0; hh < Hkv; ++hh) {
        double* kh = &k[(t * Hkv + hh) * D];
        if (c.qk_norm) rmsnorm(kh, w.data(p + "self_attn.k_norm.weight"), D, kh);
        rope(kh, t);
      }
    }
    Vec attn(size_t(n * H * D), 0.0);
    const double scale = 1.0 / std::sqrt(double(D));
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t hh = 0; hh < H; ++hh) {
        const int64_t kvh = hh / (H / Hkv);
        Vec s(size_t(t + 1));
        double mx = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[(t * H + hh) * D + i] * k[(j * Hkv + kvh) * D + i];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t i = 0; i < D; ++i)
            attn[(t * H + hh) * D + i] += s[j] / sum * v[(j * Hkv + kvh) * D + i];
      }
    }
    Vec o(static_cast<size_t>(E)), g(static_cast<size_t>(F)), u(static_cast<size_t>(F)),
        a(static_cast<size_t>(F)), dn(static_cast<size_t>(E));
    for (int64_t t = 0; t < n; ++t) {
      linear(&attn[t * H * D], p + "self_attn.o_proj.weight", E, H * D, o.data(), "");
      for (int64_t i = 0; i < E; ++i) h[t * E + i] += o[i];
      rmsnorm(&h[t * E], w.data(p + "post_attention_layernorm.weight"), E, x.data());
      if (c.layer_is_moe(il)) {
        // Softmax over the router logits, the top k (stable: ties to the lower expert),
        // renormalised when expert_norm_topk; the weighted sum of those experts' SwiGLU MLPs.
        const int64_t NE = c.n_expert, Fe = c.n_ff_expert;
        Vec r(static_cast<size_t>(NE));
        linear(x.data(), p + moe_names(c, 0).router, NE, E, r.data(), "");
        const double mx = *std::max_element(r.begin(), r.end());
        double sum = 0;
        for (double& e : r) sum += (e = std::exp(e - mx));
        for (double& e : r) e /= sum;
        std::vector<int64_t> order(static_cast<size_t>(NE));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return r[a] > r[b]; });
        double top = 0;
        for (int64_t j = 0; j < c.n_expert_used; ++j) top += r[order[j]];
        Vec ge(static_cast<size_t>(Fe)), ue(static_cast<size_t>(Fe)), ae(static_cast<size_t>(Fe));
        for (int64_t j = 0; j < c.n_expert_used; ++j) {
          const int64_t e = order[j];
          const double we = c.expert_norm_topk ? r[e] / top : r[e];
          const MoeNames nm = moe_names(c, e);
          linear(x.data(), p + nm.gate, Fe, E, ge.data(), "");
          linear(x.data(), p + nm.up, Fe, E, ue.data(), "");
          for (int64_t i = 0; i < Fe; ++i) ae[i] = ge[i] / (1 + std::exp(-ge[i])) * ue[i];
          linear(ae.data(), p + nm.down, E, Fe, dn.data(), "");
          for (int64_t i = 0; i < E; ++i) h[t * E + i] += we * dn[i];
        }
        continue;
      }
      linear(x.data(), p + "mlp.gate_proj.weight", F, E, g.data(), "");
      linear(x.data(), p + "mlp.up_proj.weight", F, E, u.data(), "");
      for (int64_t i = 0; i < F; ++i) a[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      linear(a.data(), p + "mlp.down_proj.weight", E, F, dn.data(), "");
      for (int64_t i = 0; i < E; ++i) h[t * E + i] += dn[i];
    }
  }
  Vec logits(size_t(n * V)), x(static_cast<size_t>(E));
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  for (int64_t t = 0; t < n; ++t) {
    rmsnorm(&h[t * E], w.data("model.norm.weight"), E, x.data());
    linear(x.data(), head, V, E, &logits[t * V], "");
  }
  return logits;
}

// A small config of the given family for random-weight tests.
inline model::ModelConfig tiny_config(model::Arch arch) {
  model::ModelConfig c;
  c.arch = arch;
  c.n_vocab = 97;
  c.n_embd = 48;
  c.n_ff = 80;
  c.n_layer = 3;
  c.n_head = 6;
  c.n_head_kv = 2;
  c.head_dim = 8;
  c.max_position = 512;
  c.rms_norm_eps = 1e-5f;
  c.rope.theta = 10000.0f;
  c.eos_token_ids = {2};
  switch (arch) {
    case model::Arch::kLlama:
      c.model_type = "llama";
      c.rope.scaling = model::RopeScaling::kLlama3;
      c.rope.factor = 8.0f;
      c.rope.original_max_position = 32;
      c.rope.theta = 500000.0f;
      break;
    case model::Arch::kMistral:
      c.model_type = "mistral";
      c.rope.scaling = model::RopeScaling::kLinear;
      c.rope.factor = 2.0f;
      break;
    case model::Arch::kQwen2:
      c.model_type = "qwen2";
      c.attention_bias = true;
      c.tie_word_embeddings = true;
      break;
    case model::Arch::kQwen3:
      c.model_type = "qwen3";
      c.qk_norm = true;
      c.head_dim = 16;  // q_dim 96 != n_embd 48
      break;
    case model::Arch::kQwen3Moe:
      c.model_type = "qwen3_moe";
      c.qk_norm = true;
      c.n_expert = 6;
      c.n_expert_used = 2;
      c.n_ff_expert = 24;
      c.expert_norm_topk = true;
      c.moe_dense_layers = {1};  // a dense MLP between two MoE ones
      break;
    case model::Arch::kMixtral:
      c.model_type = "mixtral";
      c.n_ff = 32;
      c.n_expert = 4;
      c.n_expert_used = 2;
      c.n_ff_expert = c.n_ff;
      c.expert_norm_topk = true;
      break;
  }
  return c;
}

}  // namespace pp::test
