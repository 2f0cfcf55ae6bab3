// StageModel: loading a layer range and running micro-batches through it.
#include "pp/model/stage-model.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "arch/decoder-layer.h"
#include "arch/tensor-load.h"
#include "pp/assert.h"

namespace pp::model {

namespace cpu = kernels::cpu;

StageModel::StageModel() : ws_(std::make_unique<LayerWorkspace>()) {}
StageModel::~StageModel() = default;

Result<std::unique_ptr<StageModel>> StageModel::load(const ModelConfig& config,
                                                     const WeightSource& weights,
                                                     int64_t layer_begin, int64_t layer_end,
                                                     CpuDtype cpu_dtype, TpRank tp,
                                                     bool presliced) {
  PP_RETURN_IF_ERROR(config.validate());
  if (layer_begin < 0 || layer_end > config.n_layer || layer_begin >= layer_end) {
    return invalid_argument("bad layer range [{}, {}) for a model of {} layers", layer_begin,
                            layer_end, config.n_layer);
  }
  std::unique_ptr<StageModel> m(new StageModel());
  m->config_ = config;
  m->layer_begin_ = layer_begin;
  m->layer_end_ = layer_end;
  PP_ASSIGN_OR_RETURN(m->tp_, model::tp_layout(config, tp));
  m->local_ = tp_local_config(config, m->tp_);
  const ModelConfig& c = m->local_;
  PP_ASSIGN_OR_RETURN(const std::vector<TpLayout> group, tp_layouts(config, tp.size));
  for (const TpLayout& l : group) m->vocab_bounds_.push_back(l.vocab_begin);
  m->vocab_bounds_.push_back(config.n_vocab);

  // The table's tensors for this stage, in order: the edges into the stage's own slots, each
  // layer's run of tensors into its layer. A rank of a group reads its slices of them, or
  // finds them already cut (presliced: the head rule then reads the rank file, whose tied
  // lm_head, if any, is its own lm_head.weight slice unless the stage holds the embedding).
  const StageTensors st = stage_tensors(config, weights, layer_begin, layer_end);
  std::vector<TensorSpec> local;
  std::unique_ptr<WeightSource> sliced;
  if (tp.size > 1) {
    std::vector<ShardedTensor> shards = shard_tensors(config, m->tp_, st.tensors);
    for (const ShardedTensor& t : shards) local.push_back(t.local);
    if (!presliced) sliced = tp_slice_source(weights, std::move(shards));
  } else {
    local = st.tensors;
  }
  const WeightSource& source = sliced ? *sliced : weights;
  const std::span<const TensorSpec> all(local);
  m->layers_.reserve(size_t(layer_end - layer_begin));
  for (size_t i = 0; i < all.size();) {
    size_t j = i + 1;
    while (j < all.size() && all[j].owner == all[i].owner && all[j].layer == all[i].layer) ++j;
    const std::span<const TensorSpec> run = all.subspan(i, j - i);
    if (all[i].owner == TensorOwner::kLayer) {
      PP_ASSIGN_OR_RETURN(DecoderLayer layer, DecoderLayer::load(c, source, run, cpu_dtype));
      m->layers_.push_back(std::move(layer));
    } else {
      PP_RETURN_IF_ERROR(load_cpu_slots(source, run, m->edges_, cpu_dtype));
    }
    i = j;
  }
  PP_ASSERT(int64_t(m->layers_.size()) == layer_end - layer_begin);
  if (m->has_lm_head() && !st.head_shares_embedding) {
    m->lm_head_ = m->edges_[WeightSlot::kLmHead].view();
  } else if (m->has_lm_head()) {
    // This rank's vocabulary rows of the (whole) embedding table.
    kernels::WeightView v = m->edges_[WeightSlot::kEmbedding].view();
    PP_ASSERT(v.scale_kind == kernels::ScaleKind::kNone);
    v.data = v.as<std::byte>() + m->tp_.vocab_begin * kernels::weight_row_bytes(v.format, v.cols);
    v.rows = m->tp_.n_vocab();
    m->lm_head_ = v;
  }

  m->inv_freq_ = rope_inv_freq_for(c);
  return m;
}

int64_t StageModel::n_params() const {
  int64_t n = 0;
  for (const kernels::HostWeight& w : edges_.all()) n += w.numel();
  for (const DecoderLayer& l : layers_) n += l.n_params();
  return n;
}

int64_t StageModel::kv_bytes_per_block(int64_t block_size) const {
  return KvCacheShape{.n_layer = n_layer(),
                      .n_blocks = 1,
                      .block_size = block_size,
                      .n_head_kv = local_.n_head_kv,
                      .head_dim = config_.head_dim}
      .bytes_per_block();
}

Status StageModel::allocate_kv(int64_t n_blocks, int64_t block_size) {
  kv_.reset();
  PP_ASSIGN_OR_RETURN(kv_, KvCache::allocate({.n_layer = n_layer(),
                                              .n_blocks = n_blocks,
                                              .block_size = block_size,
                                              .n_head_kv = local_.n_head_kv,
                                              .head_dim = config_.head_dim}));
  return ok_status();
}

Status StageModel::run_layers(const Batch& batch, float* h) {
  const int64_t T = batch.n_tokens();
  const int64_t bs = kv_->block_size();
  slots_.resize(size_t(T));
  for (int64_t s = 0; s < batch.n_seq(); ++s) {
    const int32_t* table = batch.block_table(s);
    for (int32_t t = batch.seq_start[s]; t < batch.seq_start[s + 1]; ++t) {
      const int64_t pos = batch.positions[t];
      slots_[t] = int64_t(table[pos / bs]) * bs + pos % bs;
    }
  }
  const LayerContext ctx{.positions = batch.positions.data(),
                         .slots = slots_.data(),
                         .seq_start = batch.seq_start.data(),
                         .block_tables = batch.block_tables.data(),
                         .inv_freq = inv_freq_.data(),
                         .n_tokens = T,
                         .n_seq = batch.n_seq(),
                         .max_blocks = batch.max_blocks,
                         .head_begin = tp_.head_begin,
                         .group = tp_.group,
                         .comm = comm_};
  for (size_t i = 0; i < layers_.size(); ++i) {
    PP_RETURN_IF_ERROR(layers_[i].forward(h, ctx, kv_->layer(int64_t(i)), *ws_));
  }
  return ok_status();
}

Status StageModel::forward(const Batch& batch, std::span<const float> input_hidden,
                           std::vector<float>& output) {
  if (!kv_) return make_error(StatusCode::kFailedPrecondition, "no KV cache: allocate_kv first");
  if (tp_.tp.size > 1 && !comm_) {
    return make_error(StatusCode::kFailedPrecondition,
                      "rank {} of a tensor-parallel group of {} has no collectives", tp_.tp.rank,
                      tp_.tp.size);
  }
  const int64_t T = batch.n_tokens(), E = config_.n_embd, V = config_.n_vocab;
  if (has_embedding() && int64_t(batch.token_ids.size()) != T) {
    return invalid_argument("stage 0 needs token ids: got {} for {} tokens", batch.token_ids.size(),
                            T);
  }
  PP_RETURN_IF_ERROR(batch.validate(kv_->block_size(), kv_->n_blocks(), has_embedding() ? V : 0));
  if (!has_embedding() && int64_t(input_hidden.size()) != T * E) {
    return invalid_argument("input hidden state has {} floats, expected {} x {}",
                            input_hidden.size(), T, E);
  }
  // The residual stream: the caller's output buffer for a middle stage, ours for the last.
  std::vector<float>& h = has_lm_head() ? h_ : output;
  h.resize(size_t(T * E));
  if (T == 0) {
    output.clear();
    return ok_status();
  }
  if (has_embedding()) {
    const kernels::HostWeight& table = edges_[WeightSlot::kEmbedding];
    const bool f32 = table.format() == kernels::WeightFormat::kF32;
    cpu::embedding({.table = f32 ? table.f32_data() : nullptr,
                    .ids = batch.token_ids.data(),
                    .out = h.data(),
                    .n_vocab = V,
                    .n_embd = E,
                    .n_tokens = T,
                    .blocks = f32 ? kernels::WeightView{} : table.view()});
  } else if (input_hidden.data() != h.data()) {  // a middle stage may run in place
    std::copy(input_hidden.begin(), input_hidden.end(), h.begin());
  }
  PP_RETURN_IF_ERROR(run_layers(batch, h.data()));
  if (!has_lm_head()) return ok_status();

  const int64_t R = batch.n_logit_rows();
  rows_.resize(size_t(R * E));
  for (int64_t r = 0; r < R; ++r) {
    std::copy_n(h.data() + int64_t(batch.logit_rows[r]) * E, E, rows_.data() + r * E);
  }
  const bool rank0 = tp_.tp.rank == 0;
  output.resize(rank0 ? size_t(R * V) : 0);
  if (R == 0) return ok_status();
  cpu::rms_norm({.x = rows_.data(),
                 .weight = edges_[WeightSlot::kFinalNorm].f32_data(),
                 .out = rows_.data(),
                 .n_rows = R,
                 .n = E,
                 .eps = config_.rms_norm_eps});
  if (tp_.tp.size == 1) {
    cpu::linear({.x = rows_.data(), .w = lm_head_, .out = output.data(), .m = R});
    return ok_status();
  }
  // Each rank's vocabulary slice [R, V_r], gathered on rank 0 in rank order, then laid out as
  // rows of the whole vocabulary. A row that only needs its k most likely tokens
  // (set_tp_row_top_k) travels as k (logit, id) pairs per rank instead: rank 0's row is -inf but
  // at the union of the ranks' top k, which holds the row's own top k.
  const int64_t Vr = tp_.n_vocab();
  part_.resize(size_t(R * Vr));
  cpu::linear({.x = rows_.data(), .w = lm_head_, .out = part_.data(), .m = R});
  auto row_k = [&](int64_t i) {
    const int64_t k = size_t(i) < row_top_k_.size() ? row_top_k_[size_t(i)] : 0;
    return k > 0 && 2 * k < Vr ? k : int64_t(0);
  };
  auto payload = [&](int64_t vr) {  // floats one rank sends for all rows
    int64_t n = 0;
    for (int64_t i = 0; i < R; ++i) n += row_k(i) > 0 ? 2 * row_k(i) : vr;
    return n;
  };
  send_.clear();
  send_.reserve(size_t(payload(Vr)));
  std::vector<int32_t>& ids = top_ids_;
  for (int64_t i = 0; i < R; ++i) {
    const float* row = part_.data() + i * Vr;
    const int64_t k = row_k(i);
    if (k == 0) {
      send_.insert(send_.end(), row, row + Vr);
      continue;
    }
    // The k most likely: higher logit, then lower id (the sampler's order).
    ids.resize(size_t(Vr));
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (int64_t j = 0; j < k; ++j) {
      send_.push_back(row[ids[size_t(j)]]);
      send_.push_back(float(tp_.vocab_begin + ids[size_t(j)]));  // exact below 2^24
    }
  }
  int64_t total = 0;
  for (int32_t r = 0; r < tp_.tp.size; ++r) {
    total += payload(vocab_bounds_[size_t(r) + 1] - vocab_bounds_[size_t(r)]);
  }
  gathered_.resize(rank0 ? size_t(total) : 0);
  PP_RETURN_IF_ERROR(comm_->gather(send_, gathered_));
  if (!rank0) return ok_status();
  std::fill(output.begin(), output.end(), -std::numeric_limits<float>::infinity());
  const float* at = gathered_.data();
  for (int32_t r = 0; r < tp_.tp.size; ++r) {
    const int64_t b = vocab_bounds_[size_t(r)], e = vocab_bounds_[size_t(r) + 1];
    for (int64_t i = 0; i < R; ++i) {
      float* out = output.data() + i * V;
      if (const int64_t k = row_k(i); k > 0) {
        for (int64_t j = 0; j < k; ++j, at += 2) out[int64_t(at[1])] = at[0];
      } else {
        std::copy_n(at, e - b, out + b);
        at += e - b;
      }
    }
  }
  return ok_status();
}

}  // namespace pp::model
