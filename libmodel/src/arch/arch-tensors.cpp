// The model-level table: the stage edges (embedding, final norm, lm_head) that every family we
// serve names as Llama does, the family's layer table (ArchSpec::layer_tensors) for each layer,
// the tied-embedding rule, and what one stage reads. The layer tables themselves live with their
// layers (dense_layer_tensors in decoder-layer.cpp).
#include "pp/model/arch-tensors.h"

#include <algorithm>
#include <charconv>
#include <iterator>

#include <fmt/format.h>

#include "arch/arch.h"
#include "pp/assert.h"

namespace pp::model {
namespace {

constexpr const char* kEmbedName = "model.embed_tokens.weight";
constexpr const char* kFinalNormName = "model.norm.weight";
constexpr const char* kLmHeadName = "lm_head.weight";

TensorSpec embedding_spec(const ModelConfig& c) {
  return {.name = kEmbedName,
          .shape = {c.n_vocab, c.n_embd},
          .owner = TensorOwner::kEmbedding,
          .split = TpSplit::kReplicated,  // a lookup per token; see tensor-parallel.h
          .slot = WeightSlot::kEmbedding};
}

TensorSpec final_norm_spec(const ModelConfig& c) {
  return {.name = kFinalNormName,
          .shape = {c.n_embd},
          .owner = TensorOwner::kHead,
          .split = TpSplit::kReplicated,
          .slot = WeightSlot::kFinalNorm};
}

// The lm_head's own tensor, or (reads_embedding) the embedding table read into the head's slot.
TensorSpec lm_head_spec(const ModelConfig& c, bool reads_embedding) {
  return {.name = reads_embedding ? kEmbedName : kLmHeadName,
          .shape = {c.n_vocab, c.n_embd},
          .owner = TensorOwner::kHead,
          .split = TpSplit::kVocab,
          .slot = WeightSlot::kLmHead};
}

}  // namespace

const char* weight_slot_name(WeightSlot s) {
  // In the order of the enumerators.
  static constexpr const char* kNames[] = {"embedding", "final_norm",     "lm_head",    "attn_norm",
                                           "qkv",       "qkv_bias",       "q_norm",     "k_norm",
                                           "o",         "ffn_norm",       "gate_up",    "down",
                                           "router",    "expert_gate_up", "expert_down"};
  static_assert(std::size(kNames) == size_t(WeightSlot::kCount));
  return size_t(s) < std::size(kNames) ? kNames[size_t(s)] : "?";
}

std::string layer_prefix(int64_t il) { return fmt::format("{}{}.", kLayerPrefix, il); }

std::vector<TensorSpec> layer_tensors(const ModelConfig& c, int64_t il) {
  PP_ASSERT(il >= 0 && il < c.n_layer);
  const ArchSpec& a = arch_spec(c.arch);
  PP_ASSERT_MSG(a.layer_tensors != nullptr, "architecture without a tensor table");
  return a.layer_tensors(c, il);
}

std::vector<TensorSpec> model_tensors(const ModelConfig& c) {
  std::vector<TensorSpec> out;
  out.push_back(embedding_spec(c));
  for (int64_t il = 0; il < c.n_layer; ++il) {
    std::vector<TensorSpec> layer = layer_tensors(c, il);
    std::move(layer.begin(), layer.end(), std::back_inserter(out));
  }
  out.push_back(final_norm_spec(c));
  TensorSpec head = lm_head_spec(c, false);
  head.optional = c.tie_word_embeddings;
  out.push_back(std::move(head));
  return out;
}

std::optional<TensorSpec> find_tensor_spec(const ModelConfig& c, std::string_view name) {
  if (name == kEmbedName) return embedding_spec(c);
  if (name == kFinalNormName) return final_norm_spec(c);
  if (name == kLmHeadName) {
    TensorSpec head = lm_head_spec(c, false);
    head.optional = c.tie_word_embeddings;
    return head;
  }
  if (!name.starts_with(kLayerPrefix)) return std::nullopt;
  const std::string_view rest = name.substr(kLayerPrefix.size());
  int64_t il = -1;
  auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), il);
  if (ec != std::errc() || il < 0 || il >= c.n_layer) return std::nullopt;
  for (TensorSpec& t : layer_tensors(c, il)) {
    if (t.name == name) return std::move(t);
  }
  return std::nullopt;
}

bool head_reads_embedding(const ModelConfig& c, const WeightSource& w) {
  // Tied embeddings read embed_tokens; so does a checkpoint without lm_head.weight.
  const bool has_head = w.find(kLmHeadName) != nullptr;
  const bool has_embed = w.find(kEmbedName) != nullptr;
  return (c.tie_word_embeddings && has_embed) || !has_head;
}

StageParts stage_parts(const ModelConfig& c, int64_t layer_begin, int64_t layer_end) {
  return {.layer_begin = layer_begin,
          .layer_end = layer_end,
          .embedding = layer_begin == 0,
          .head = layer_end == c.n_layer};
}

StageTensors stage_tensors(const ModelConfig& c, const StageParts& parts,
                           bool head_reads_embedding) {
  StageTensors out;
  if (parts.embedding) out.tensors.push_back(embedding_spec(c));
  for (int64_t il = parts.layer_begin; il < parts.layer_end; ++il) {
    std::vector<TensorSpec> layer = layer_tensors(c, il);
    std::move(layer.begin(), layer.end(), std::back_inserter(out.tensors));
  }
  if (parts.head) {
    out.tensors.push_back(final_norm_spec(c));
    out.head_shares_embedding = head_reads_embedding && parts.embedding;
    if (!out.head_shares_embedding) out.tensors.push_back(lm_head_spec(c, head_reads_embedding));
  }
  return out;
}

StageTensors stage_tensors(const ModelConfig& c, const WeightSource& w, int64_t layer_begin,
                           int64_t layer_end) {
  return stage_tensors(c, stage_parts(c, layer_begin, layer_end), head_reads_embedding(c, w));
}

bool stage_owns(const StageParts& parts, const TensorSpec& t) {
  switch (t.owner) {
    case TensorOwner::kEmbedding:
      return parts.embedding;
    case TensorOwner::kLayer:
      return t.layer >= parts.layer_begin && t.layer < parts.layer_end;
    case TensorOwner::kHead:
      return parts.head;
  }
  return false;
}

std::vector<SlotSpec> slots_of(std::span<const TensorSpec> tensors) {
  std::vector<SlotSpec> out;
  for (const TensorSpec& t : tensors) {
    auto it = std::find_if(out.begin(), out.end(), [&](const SlotSpec& s) {
      return s.slot == t.slot && s.layer == t.layer;
    });
    if (it == out.end()) {
      out.push_back({.slot = t.slot, .layer = t.layer, .rows = 0, .cols = t.cols()});
      it = out.end() - 1;
    }
    PP_ASSERT_MSG(it->cols == t.cols(), "the parts of a fused slot differ in columns");
    it->rows = std::max(it->rows, t.row_offset + t.rows());
  }
  return out;
}

int64_t tensor_params(std::span<const TensorSpec> tensors) {
  int64_t n = 0;
  for (const TensorSpec& t : tensors) n += t.numel();
  return n;
}

int64_t matrix_params(std::span<const TensorSpec> tensors) {
  int64_t n = 0;
  for (const TensorSpec& t : tensors) n += t.is_matrix() ? t.numel() : 0;
  return n;
}

}  // namespace pp::model
