// GpuStageModel: the table's slots laid out in one device allocation, the layer sequence over
// gpu.h's ops, metadata uploads through a ring of pinned staging buffers, decode graphs, and
// sampling.
//
// One layer, with the residual adds fused into the output GEMMs (cuBLASLt beta = 1):
//   x = rmsnorm(h) ; qkv = x Wqkv^T (+b) ; q, kv <- rope(norm(q, k)), v ; a = attention(q, kv)
//   h += a Wo^T ; x = rmsnorm(h) ; gu = x Wgu^T ; act = silu(g) * u ; h += act Wd^T
// A tensor-parallel rank (N > 1) cannot fuse h += into its GEMM: its output is a partial sum. It
// writes p = a Wo^T into x (free until the next norm), all-reduces p in place, then adds it into
// h in the next RMSNorm's fused residual add (rms_norm(p, h, ...)); down's sum waits likewise
// for the next layer's first norm (or, after the stage's last layer, a norm whose output nobody
// reads: one kernel, as a plain add would be).
#include "pp/model/gpu-stage-model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "arch/decoder-layer.h"
#include "arch/tensor-load.h"
#include "pp/assert.h"
#include "pp/model/quantization.h"
#include "pp/model/random-weights.h"

namespace pp::model {

namespace gpu = kernels::gpu;
using gpu::Bf16;

namespace {

using kernels::WeightView;

constexpr size_t kAlign = 256;  // bytes: every slot and buffer slice starts on this boundary
size_t align_up(size_t n, size_t a = kAlign) { return (n + a - 1) / a * a; }

// The bf16 values of a norm or bias slot (nullptr when the slot is empty).
const Bf16* bf16(const WeightView& w) {
  PP_ASSERT(w.empty() || w.format == kernels::WeightFormat::kBF16);
  return w.as<Bf16>();
}

// The context buckets of decode graphs: powers of two from 512 keys.
int64_t kv_bucket(int64_t kv_len) {
  int64_t b = 512;
  while (b < kv_len) b *= 2;
  return b;
}

// Decode graphs' batch buckets (padded sequence counts).
int64_t batch_bucket(int64_t n) {
  static constexpr int64_t kBuckets[] = {1,   2,   4,   8,   12,  16,  24,  32,  48,
                                         64,  80,  96,  112, 128, 160, 192, 224, 256,
                                         320, 384, 448, 512, 640, 768, 896, 1024};
  for (int64_t b : kBuckets) {
    if (b >= n) return b;
  }
  return (n + 127) / 128 * 128;
}

// Byte offsets of the metadata of one forward in the staging buffer and on the device: a pure
// function of the counts, so a graph's pointers stay valid for every batch of its bucket.
struct MetaLayout {
  size_t ids = 0, pos = 0, slots = 0, seq_start = 0, logit_rows = 0, tables = 0, bytes = 0;
  MetaLayout(int64_t n_tokens, int64_t n_seq, int64_t n_logit_rows, int64_t width) {
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t here = at;
      at = align_up(at + bytes, 16);
      return here;
    };
    ids = take(size_t(n_tokens) * 4);
    pos = take(size_t(n_tokens) * 4);
    slots = take(size_t(n_tokens) * 8);
    seq_start = take(size_t(n_seq + 1) * 4);
    logit_rows = take(size_t(std::max<int64_t>(n_logit_rows, 1)) * 4);
    tables = take(size_t(n_seq) * size_t(width) * 4);
    bytes = at;
  }
};

}  // namespace

// --- SampleSlot

Result<SampleSlot> SampleSlot::create(int64_t max_rows) {
  SampleSlot s;
  s.max_rows_ = max_rows;
  // tokens, logprobs, then top ids and top logprobs at kMaxTopLogprobs per row.
  const size_t bytes = size_t(max_rows) * 4 * 2 + size_t(max_rows) * gpu::kMaxTopLogprobs * 4 * 2;
  PP_ASSIGN_OR_RETURN(s.host_, gpu::HostBuffer::allocate(bytes));
  PP_ASSIGN_OR_RETURN(s.ready_, gpu::Event::create());
  return s;
}

Status SampleSlot::wait() { return ready_.synchronize(); }

// --- loading

GpuStageModel::GpuStageModel() = default;
GpuStageModel::~GpuStageModel() {
  // Let queued work finish before the buffers it uses go away.
  if (stream_.native()) (void)stream_.synchronize();
  if (copy_stream_.native()) (void)copy_stream_.synchronize();
  if (prof_.on && (profile_collect().ok()) && prof_.n_forward > 0) {
    spdlog::warn(
        "layers [{}, {}): {} forwards, {:.3f} ms each on average; {} samplings, {:.3f} ms "
        "each; {} graph replays (PP_GPU_PROFILE)",
        layer_begin_, layer_end_, prof_.n_forward, prof_.forward_ms / double(prof_.n_forward),
        prof_.n_sample, prof_.n_sample ? prof_.sample_ms / double(prof_.n_sample) : 0.0,
        graph_replays_);
  }
  if (prof_.ops && prof_.op_steps > 0) {
    static constexpr const char* kNames[kOpKinds] = {
        "embedding",        "rms_norm", "qkv",  "rope+kv", "attention",    "o_proj",
        "gate_up(+swiglu)", "swiglu",   "down", "tp-comm", "lm_head+norm", ""};
    std::string parts;
    double total = 0;
    for (int k = 0; k < kOpEnd; ++k) {
      const double ms = prof_.op_ms[size_t(k)] / double(prof_.op_steps);
      total += ms;
      if (ms > 0) parts += fmt::format("{} {:.3f}, ", kNames[k], ms);
    }
    spdlog::warn(
        "layers [{}, {}): decode step GPU time by op over {} eager steps, ms: {}total {:.3f} "
        "(PP_GPU_PROFILE=ops)",
        layer_begin_, layer_end_, prof_.op_steps, parts, total);
  }
}

Status GpuStageModel::op_mark(OpKind kind) {
  if (!prof_.ops_step) return ok_status();
  if (prof_.n_ops == prof_.op_events.size()) {
    PP_ASSIGN_OR_RETURN(gpu::Event e, gpu::Event::create(true));
    prof_.op_events.push_back(std::move(e));
    prof_.op_kinds.push_back(0);
  }
  PP_RETURN_IF_ERROR(prof_.op_events[prof_.n_ops].record(stream_));
  prof_.op_kinds[prof_.n_ops++] = kind;
  return ok_status();
}

Status GpuStageModel::profile_collect() {
  if (prof_.pending_forward) {
    PP_RETURN_IF_ERROR(prof_.f1.synchronize());
    PP_ASSIGN_OR_RETURN(float ms, prof_.f1.elapsed_since(prof_.f0));
    prof_.forward_ms += ms;
    ++prof_.n_forward;
    prof_.pending_forward = false;
  }
  if (prof_.n_ops > 1) {
    PP_RETURN_IF_ERROR(prof_.op_events[prof_.n_ops - 1].synchronize());
    for (size_t i = 0; i + 1 < prof_.n_ops; ++i) {
      PP_ASSIGN_OR_RETURN(float ms, prof_.op_events[i + 1].elapsed_since(prof_.op_events[i]));
      prof_.op_ms[size_t(prof_.op_kinds[i])] += ms;
    }
    ++prof_.op_steps;
  }
  prof_.n_ops = 0;
  if (prof_.pending_sample) {
    PP_RETURN_IF_ERROR(prof_.s1.synchronize());
    PP_ASSIGN_OR_RETURN(float ms, prof_.s1.elapsed_since(prof_.s0));
    prof_.sample_ms += ms;
    ++prof_.n_sample;
    prof_.pending_sample = false;
  }
  return ok_status();
}

Status GpuStageModel::init(const ModelConfig& config, int64_t layer_begin, int64_t layer_end,
                           const GpuStageOptions& options, TpRank tp) {
  PP_RETURN_IF_ERROR(config.validate());
  // Before anything is allocated: the GPU layer has no router or expert ops (the CPU has).
  if (config.is_moe()) {
    return unimplemented("mixture-of-experts layers are not supported on the GPU yet");
  }
  if (layer_begin < 0 || layer_end > config.n_layer || layer_begin >= layer_end) {
    return invalid_argument("bad layer range [{}, {}) for a model of {} layers", layer_begin,
                            layer_end, config.n_layer);
  }
  if (config.head_dim != 64 && config.head_dim != 128 && config.head_dim != 256) {
    return invalid_argument("head_dim {} is not supported on the GPU (64, 128 or 256)",
                            config.head_dim);
  }
  if (config.n_embd % 8 != 0 || config.n_ff % 8 != 0) {
    return invalid_argument(
        "hidden size {} and intermediate size {} must be multiples of 8 on "
        "the GPU",
        config.n_embd, config.n_ff);
  }
  PP_ASSIGN_OR_RETURN(tp_, model::tp_layout(config, tp));
  // Every rank checks the whole group, so that all refuse together rather than some waiting in
  // a collective for a rank that never loaded.
  PP_ASSIGN_OR_RETURN(const std::vector<TpLayout> group, tp_layouts(config, tp.size));
  for (const TpLayout& l : group) {
    // The attention kernels read KV head h / (n_head / n_head_kv) for local query head h.
    const int64_t n_q = l.n_head(), n_kv = l.n_head_kv();
    bool plain = n_q % n_kv == 0;
    for (int64_t h = 0; plain && h < n_q; ++h) {
      plain = (l.head_begin + h) / l.group - l.kv_head_begin == h / (n_q / n_kv);
    }
    if (!plain) {
      return invalid_argument(
          "tensor-parallel size {}: rank {}'s query heads [{}, {}) do not split evenly over its "
          "KV heads [{}, {}), which the GPU attention needs",
          tp.size, l.tp.rank, l.head_begin, l.head_end, l.kv_head_begin, l.kv_head_end);
    }
    const int64_t ff = l.ff_end - l.ff_begin;
    if (ff < 8 || ff % 8 != 0) {
      return invalid_argument(
          "tensor-parallel size {}: rank {}'s share of the intermediate size {} is {} rows, not "
          "a positive multiple of 8 as the GPU needs",
          tp.size, l.tp.rank, config.n_ff, ff);
    }
    vocab_bounds_.push_back(l.vocab_begin);
    vocab_max_ = std::max(vocab_max_, l.n_vocab());
  }
  vocab_bounds_.push_back(config.n_vocab);
  local_ = tp_local_config(config, tp_);
  if (options.max_tokens < 1 || options.max_seqs < 1) {
    return invalid_argument("max_tokens and max_seqs must be positive");
  }
  config_ = config;
  options_ = options;
  options_.max_seqs = std::min(options_.max_seqs, options_.max_tokens);
  if (options_.max_logit_rows <= 0) options_.max_logit_rows = options_.max_seqs;
  options_.max_logit_rows = std::min(options_.max_logit_rows, options_.max_tokens);
  layer_begin_ = layer_begin;
  layer_end_ = layer_end;
  PP_RETURN_IF_ERROR(gpu::set_device(options.device));
  PP_ASSIGN_OR_RETURN(stream_, gpu::Stream::create(true));
  PP_ASSIGN_OR_RETURN(copy_stream_, gpu::Stream::create(false));
  PP_ASSIGN_OR_RETURN(blas_, gpu::Blas::create());
  blas_->set_fp8_activations(options_.fp8_activations);
  // PP_GPU_FUSE=0 and PP_GPU_PDL=0 turn the decode fusions and programmatic launches off, to
  // measure what each brings (docs/perf.md).
  auto env_off = [](const char* name) {
    const char* e = std::getenv(name);
    return e && std::string(e) == "0";
  };
  fuse_decode_ = options_.fuse_decode && !env_off("PP_GPU_FUSE");
  blas_->set_programmatic_launch(options_.programmatic_launch && !env_off("PP_GPU_PDL"));
  const std::vector<float> inv = rope_inv_freq_for(config_);
  PP_ASSIGN_OR_RETURN(inv_freq_, gpu::DeviceBuffer::allocate(inv.size() * sizeof(float)));
  PP_RETURN_IF_ERROR(
      gpu::copy_async(inv_freq_.data(), inv.data(), inv.size() * sizeof(float), stream_));
  PP_RETURN_IF_ERROR(stream_.synchronize());
  staging_.resize(kStaging);
  staging_done_.resize(kStaging);
  for (int i = 0; i < kStaging; ++i) {
    PP_ASSIGN_OR_RETURN(staging_done_[size_t(i)], gpu::Event::create());
  }
  sample_staging_.resize(kStaging);
  sample_staging_done_.resize(kStaging);
  for (int i = 0; i < kStaging; ++i) {
    PP_ASSIGN_OR_RETURN(sample_staging_done_[size_t(i)], gpu::Event::create());
  }
  PP_ASSIGN_OR_RETURN(sampled_, gpu::Event::create());
  PP_ASSIGN_OR_RETURN(copied_, gpu::Event::create());
  if (const char* e = std::getenv("PP_GPU_PROFILE"); e && *e && std::string(e) != "0") {
    prof_.on = true;
    prof_.ops = std::string(e) == "ops";
    PP_ASSIGN_OR_RETURN(prof_.f0, gpu::Event::create(true));
    PP_ASSIGN_OR_RETURN(prof_.f1, gpu::Event::create(true));
    PP_ASSIGN_OR_RETURN(prof_.s0, gpu::Event::create(true));
    PP_ASSIGN_OR_RETURN(prof_.s1, gpu::Event::create(true));
  }
  return ok_status();
}

// Lays out every slot of this stage's table in one buffer (each slot's data, then its scales),
// points the layers and edges at their slices, and says where each tensor goes (a fused slot's
// parts at their row offsets, their scales at the matching scale rows).
Status GpuStageModel::alloc_weights(const StageTensors& st, const WeightSource& source,
                                    std::vector<TensorPlace>& where) {
  using kernels::ScaleKind;
  using kernels::WeightFormat;
  const std::vector<SlotSpec> slots = slots_of(st.tensors);
  auto same_slot = [](const SlotSpec& sl, const TensorSpec& t) {
    return sl.slot == t.slot && sl.layer == t.layer;
  };
  // Each slot's format and scale kind, from its parts.
  struct Typed {
    WeightFormat format = WeightFormat::kBF16;
    ScaleKind scale_kind = ScaleKind::kNone;
  };
  std::vector<Typed> typed(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    const SlotSpec& sl = slots[i];
    bool first = true;
    for (const TensorSpec& t : st.tensors) {
      if (!same_slot(sl, t)) continue;
      Typed part;
      if (quantized_on_load(t)) {
        PP_ASSIGN_OR_RETURN(const TensorInfo* info, find_tensor(source, t));
        if (info->dtype == DType::kF8E4M3) {
          part.format = WeightFormat::kFp8E4M3;
          // A per-tensor scale is per-channel scales that happen to be equal (exact).
          part.scale_kind =
              info->scale_kind == ScaleKind::kPerTensor ? ScaleKind::kPerChannel : info->scale_kind;
          if (part.scale_kind == ScaleKind::kNone) {
            return invalid_argument("fp8 tensor '{}' has no scales", t.name);
          }
        }
      }
      if (first) {
        typed[i] = part;
        first = false;
      } else if (part.format != typed[i].format || part.scale_kind != typed[i].scale_kind) {
        return invalid_argument(
            "tensor '{}' is {} with {} scales but the other parts of its fused slot are {} "
            "with {} scales",
            t.name, kernels::weight_format_name(part.format),
            kernels::scale_kind_name(part.scale_kind), kernels::weight_format_name(typed[i].format),
            kernels::scale_kind_name(typed[i].scale_kind));
      }
      if (part.scale_kind == ScaleKind::kBlock128x128 && t.row_offset + t.rows() < sl.rows &&
          t.rows() % 128 != 0) {
        return invalid_argument(
            "tensor '{}' has 128x128 block scales and {} rows, not a multiple of 128: it cannot "
            "be fused with the tensors after it",
            t.name, t.rows());
      }
    }
  }
  // Byte offsets: each slot's data, then its scales, each on a kAlign boundary.
  std::vector<size_t> data_at, scales_at;
  size_t at = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    const SlotSpec& sl = slots[i];
    data_at.push_back(at);
    at = align_up(at + size_t(sl.numel() * kernels::weight_format_bytes(typed[i].format)));
    scales_at.push_back(at);
    at = align_up(at + size_t(kernels::scale_count(typed[i].scale_kind, sl.rows, sl.cols)) *
                           sizeof(float));
  }
  PP_ASSIGN_OR_RETURN(weights_, gpu::DeviceBuffer::allocate(at));
  char* base = weights_.as<char>();
  layers_.assign(size_t(n_layer()), Layer{});
  auto slot_map = [&](int64_t layer) -> SlotMap<WeightView>& {
    return layer < 0 ? edges_ : layers_[size_t(layer - layer_begin_)];
  };
  for (size_t i = 0; i < slots.size(); ++i) {
    const SlotSpec& sl = slots[i];
    const bool scaled = typed[i].scale_kind != ScaleKind::kNone;
    slot_map(sl.layer)[sl.slot] = {
        .format = typed[i].format,
        .data = base + data_at[i],
        .rows = sl.rows,
        .cols = sl.cols,
        .scale_kind = typed[i].scale_kind,
        .scales = scaled ? reinterpret_cast<const float*>(base + scales_at[i]) : nullptr};
  }
  if (st.head_shares_embedding) {
    // This rank's vocabulary rows of the (whole, bf16) embedding table.
    WeightView v = edges_[WeightSlot::kEmbedding];
    PP_ASSERT(v.scale_kind == ScaleKind::kNone);
    v.data = static_cast<const char*>(v.data) +
             tp_.vocab_begin * kernels::weight_row_bytes(v.format, v.cols);
    v.rows = tp_.n_vocab();
    edges_[WeightSlot::kLmHead] = v;
  }
  where.clear();
  for (const TensorSpec& t : st.tensors) {
    const auto it = std::find_if(slots.begin(), slots.end(),
                                 [&](const SlotSpec& sl) { return same_slot(sl, t); });
    PP_ASSERT(it != slots.end());
    const size_t i = size_t(it - slots.begin());
    TensorPlace p;
    p.format = typed[i].format;
    p.scale_kind = typed[i].scale_kind;
    p.data = base + data_at[i] +
             size_t(t.row_offset * it->cols * kernels::weight_format_bytes(p.format));
    auto* scales = reinterpret_cast<float*>(base + scales_at[i]);
    if (p.scale_kind == ScaleKind::kPerChannel) {
      p.scales = scales + t.row_offset;
    } else if (p.scale_kind == ScaleKind::kBlock128x128) {
      p.scales = scales + (t.row_offset / 128) * ((it->cols + 127) / 128);
    }
    where.push_back(p);
  }
  return ok_status();
}

namespace {

// Uploads an fp8 tensor's bytes and scales (read_weight) to its place; a per-tensor scale goes
// out as one per row (the slot is per-channel).
Status upload_fp8(const WeightSource& source, const TensorSpec& t, const void* data, float* scales,
                  kernels::ScaleKind slot_kind, gpu::Stream& s) {
  PP_ASSIGN_OR_RETURN(kernels::HostWeight w, source.read_weight(t.name));
  if (w.format() != kernels::WeightFormat::kFp8E4M3 || w.rows() != t.rows() ||
      w.cols() != t.cols()) {
    return data_loss("tensor '{}' in '{}' reads as {} [{}, {}], expected fp8_e4m3 [{}, {}]", t.name,
                     source.describe(), kernels::weight_format_name(w.format()), w.rows(), w.cols(),
                     t.rows(), t.cols());
  }
  std::vector<float> expanded;
  std::span<const float> sc = w.scales();
  if (w.scale_kind() == kernels::ScaleKind::kPerTensor) {
    PP_ASSERT(slot_kind == kernels::ScaleKind::kPerChannel);
    expanded.assign(size_t(t.rows()), sc[0]);
    sc = expanded;
  } else if (w.scale_kind() != slot_kind) {
    return data_loss("tensor '{}' reads with {} scales, listed with {}", t.name,
                     kernels::scale_kind_name(w.scale_kind()), kernels::scale_kind_name(slot_kind));
  }
  PP_RETURN_IF_ERROR(
      gpu::copy_async(const_cast<void*>(data), w.bytes().data(), w.bytes().size(), s));
  PP_RETURN_IF_ERROR(gpu::copy_async(scales, sc.data(), sc.size_bytes(), s));
  return s.synchronize();  // the host copies go away here
}

}  // namespace

Result<std::unique_ptr<GpuStageModel>> GpuStageModel::load(const ModelConfig& config,
                                                           const WeightSource& weights,
                                                           int64_t layer_begin, int64_t layer_end,
                                                           const GpuStageOptions& options,
                                                           TpRank tp, bool presliced) {
  std::unique_ptr<GpuStageModel> m(new GpuStageModel());
  PP_RETURN_IF_ERROR(m->init(config, layer_begin, layer_end, options, tp));
  // A rank of a group reads its slices of the stage's tensors, in their local shapes, or finds
  // them already cut (presliced: a tensor-parallel partition's rank file, as StageModel::load).
  StageTensors st = stage_tensors(config, weights, layer_begin, layer_end);
  std::unique_ptr<WeightSource> sliced;
  if (tp.size > 1) {
    std::vector<ShardedTensor> shards = shard_tensors(config, m->tp_, st.tensors);
    for (size_t i = 0; i < shards.size(); ++i) st.tensors[i] = shards[i].local;
    if (!presliced) sliced = tp_slice_source(weights, std::move(shards));
  }
  const WeightSource& source = sliced ? *sliced : weights;
  std::vector<TensorPlace> where;
  PP_RETURN_IF_ERROR(m->alloc_weights(st, source, where));
  std::vector<float> host;
  for (size_t i = 0; i < st.tensors.size(); ++i) {
    const TensorSpec& t = st.tensors[i];
    if (where[i].format == kernels::WeightFormat::kFp8E4M3) {
      PP_RETURN_IF_ERROR(
          upload_fp8(source, t, where[i].data, where[i].scales, where[i].scale_kind, m->stream_));
      continue;
    }
    host.resize(size_t(t.numel()));
    PP_RETURN_IF_ERROR(load_tensor(source, t, host));
    PP_RETURN_IF_ERROR(
        gpu::upload_bf16(static_cast<Bf16*>(where[i].data), host.data(), host.size()));
  }
  PP_RETURN_IF_ERROR(m->alloc_scratch());
  return m;
}

Result<std::unique_ptr<GpuStageModel>> GpuStageModel::random(const ModelConfig& config,
                                                             uint64_t seed, int64_t layer_begin,
                                                             int64_t layer_end,
                                                             const GpuStageOptions& options,
                                                             TpRank tp) {
  std::unique_ptr<GpuStageModel> m(new GpuStageModel());
  PP_RETURN_IF_ERROR(m->init(config, layer_begin, layer_end, options, tp));
  // The same tensors (and head rule, and formats, and a rank's slices) as a load from
  // quantize_on_load(random_weights(config, seed)), filled on the device with that source's
  // values.
  PP_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> random, random_weights(config, seed));
  const std::shared_ptr<const WeightSource> source = quantize_on_load(
      std::shared_ptr<const WeightSource>(std::move(random)), config, options.quantization);
  StageTensors st = stage_tensors(config, *source, layer_begin, layer_end);
  const std::vector<ShardedTensor> shards = shard_tensors(config, m->tp_, st.tensors);
  const std::vector<TensorSpec> full = st.tensors;
  std::unique_ptr<WeightSource> sliced;
  if (tp.size > 1) {
    for (size_t i = 0; i < shards.size(); ++i) st.tensors[i] = shards[i].local;
    sliced = tp_slice_source(*source, shards);
  }
  std::vector<TensorPlace> where;
  PP_RETURN_IF_ERROR(m->alloc_weights(st, sliced ? *sliced : *source, where));
  // A tensor that is fp8 or a slice is generated whole into a temporary buffer first (bf16, then
  // fp8 bytes and per-row scales), quantized whole (a row's scale is the whole row's, as the
  // sliced source keeps it), and its slice copied into place.
  int64_t max_tmp = 0, max_q = 0, max_rows = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    const bool fp8 = where[i].format == kernels::WeightFormat::kFp8E4M3;
    const bool part = !shards[i].slice.whole(full[i]);
    if (fp8 || part) max_tmp = std::max(max_tmp, full[i].numel());
    if (fp8 && part) {
      max_q = std::max(max_q, full[i].numel());
      max_rows = std::max(max_rows, full[i].rows());
    }
  }
  gpu::DeviceBuffer tmp, tmp_q;
  if (max_tmp > 0) {
    PP_ASSIGN_OR_RETURN(tmp, gpu::DeviceBuffer::allocate(size_t(max_tmp) * sizeof(Bf16)));
  }
  if (max_q > 0) {
    PP_ASSIGN_OR_RETURN(tmp_q, gpu::DeviceBuffer::allocate(align_up(size_t(max_q)) +
                                                           size_t(max_rows) * sizeof(float)));
  }
  for (size_t i = 0; i < full.size(); ++i) {
    const TensorSpec& f = full[i];
    const TpSlice& sl = shards[i].slice;
    const RandomRange r = random_weight_range(f.name, f.shape);
    const bool fp8 = where[i].format == kernels::WeightFormat::kFp8E4M3;
    const bool part = !sl.whole(f);
    Bf16* values = fp8 || part ? tmp.as<Bf16>() : static_cast<Bf16*>(where[i].data);
    PP_RETURN_IF_ERROR(gpu::fill_random(
        values, size_t(f.numel()), random_weight_key_for(seed, f.name), r.lo, r.hi, m->stream_));
    if (fp8) PP_ASSERT(where[i].scale_kind == kernels::ScaleKind::kPerChannel);
    if (fp8 && !part) {
      PP_RETURN_IF_ERROR(gpu::quantize_fp8_rows(values, where[i].data, where[i].scales, f.rows(),
                                                f.cols(), m->stream_));
    } else if (fp8) {
      auto* q = tmp_q.as<uint8_t>();
      auto* scales = reinterpret_cast<float*>(tmp_q.as<char>() + align_up(size_t(max_q)));
      PP_RETURN_IF_ERROR(gpu::quantize_fp8_rows(values, q, scales, f.rows(), f.cols(), m->stream_));
      PP_RETURN_IF_ERROR(gpu::copy_2d_async(
          where[i].data, size_t(sl.cols()), q + sl.row_begin * f.cols() + sl.col_begin,
          size_t(f.cols()), size_t(sl.cols()), size_t(sl.rows()), m->stream_));
      PP_RETURN_IF_ERROR(gpu::copy_async(where[i].scales, scales + sl.row_begin,
                                         size_t(sl.rows()) * sizeof(float), m->stream_));
    } else if (part) {
      PP_RETURN_IF_ERROR(gpu::copy_2d_async(
          where[i].data, size_t(sl.cols()) * sizeof(Bf16),
          values + sl.row_begin * f.cols() + sl.col_begin, size_t(f.cols()) * sizeof(Bf16),
          size_t(sl.cols()) * sizeof(Bf16), size_t(sl.rows()), m->stream_));
    }
  }
  PP_RETURN_IF_ERROR(m->stream_.synchronize());
  PP_RETURN_IF_ERROR(m->alloc_scratch());
  return m;
}

Status GpuStageModel::alloc_scratch() {
  const ModelConfig& c = local_;
  const int64_t T = options_.max_tokens, S = options_.max_seqs;
  const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at = align_up(at + bytes);
    return here;
  };
  const size_t h = take(size_t(T * E) * 2), x = take(size_t(T * E) * 2),
               qkv = take(size_t(T * (Q + 2 * KV)) * 2), q = take(size_t(T * Q) * 2),
               attn = take(size_t(T * Q) * 2), gu = take(size_t(T * 2 * F) * 2),
               act = take(size_t(T * F) * 2);
  // Logit rows: the most a forward asks for, or a padded decode batch's.
  const int64_t R = std::max(options_.max_logit_rows, std::min(T, batch_bucket(S)));
  const bool tp = tp_.tp.size > 1, rank0 = tp_.tp.rank == 0;
  const size_t rows = has_lm_head() ? take(size_t(R * E) * 2) : 0;
  const size_t logits = has_lm_head() && rank0 ? take(size_t(R * c.n_vocab) * 4) : 0;
  const size_t gathered =
      has_lm_head() && tp ? take(size_t(tp_.tp.size) * size_t(R * vocab_max_) * 4) : 0;
  PP_ASSIGN_OR_RETURN(scratch_, gpu::DeviceBuffer::allocate(at));
  scratch_bytes_ = int64_t(at);
  char* base = scratch_.as<char>();
  h_ = reinterpret_cast<Bf16*>(base + h);
  x_ = reinterpret_cast<Bf16*>(base + x);
  qkv_ = reinterpret_cast<Bf16*>(base + qkv);
  q_ = reinterpret_cast<Bf16*>(base + q);
  attn_ = reinterpret_cast<Bf16*>(base + attn);
  gate_up_ = reinterpret_cast<Bf16*>(base + gu);
  act_ = reinterpret_cast<Bf16*>(base + act);
  if (has_lm_head()) {
    rows_ = reinterpret_cast<Bf16*>(base + rows);
    if (tp) gathered_ = reinterpret_cast<float*>(base + gathered);
  }
  if (has_lm_head() && rank0) {
    logits_ = reinterpret_cast<float*>(base + logits);
    // Sampling: per-row params, penalty rows and entries, results.
    PP_ASSIGN_OR_RETURN(sample_dev_, gpu::DeviceBuffer::allocate(size_t(S) * 1024));
  }
  return reserve_fp8();
}

// fp8 linears of more than 8 rows quantize their activations into scratch the Blas owns, sized
// here for max_tokens rows. The dequantizing fallback's bf16 weight (as large as the largest
// fp8 slot) is reserved only when cuBLASLt refuses one of this model's linears outright.
Status GpuStageModel::reserve_fp8() {
  int64_t max_n = 0, max_k = 0, max_elems = 0;
  for (const Layer& l : layers_) {
    for (WeightSlot s :
         {WeightSlot::kQkv, WeightSlot::kO, WeightSlot::kGateUp, WeightSlot::kDown}) {
      const WeightView& w = l[s];
      if (w.format != kernels::WeightFormat::kFp8E4M3) continue;
      max_n = std::max(max_n, w.rows);
      max_k = std::max(max_k, w.cols);
      max_elems = std::max(max_elems, w.numel());
    }
  }
  if (max_n == 0) return ok_status();
  // One info line per linear variant and path (the first m that takes it), the rest at debug.
  blas_->set_log([begin = layer_begin_, end = layer_end_,
                  seen = std::make_shared<std::set<std::string>>()](const std::string& line) {
    std::string key = line;
    if (const size_t m = key.find(" m="); m != std::string::npos) {
      key.erase(m, key.find(' ', m + 1) - m);
    }
    if (seen->insert(key).second) {
      spdlog::info("layers [{}, {}): {}", begin, end, line);
    } else {
      spdlog::debug("layers [{}, {}): {}", begin, end, line);
    }
  });
  const int64_t T = options_.max_tokens;
  PP_RETURN_IF_ERROR(blas_->reserve_fp8(T, max_n, max_k, 0));
  if (T <= gpu::kFp8GemvMaxRows) return ok_status();
  // The linears forward() runs, at the smallest and largest m beyond the GEMV.
  const Layer& l = layers_.front();
  bool need_dequant = !options_.fp8_activations;
  const bool tp = tp_.tp.size > 1;  // run()'s row-parallel outputs: partial sums into x_
  for (int64_t m : {gpu::kFp8GemvMaxRows + 1, T}) {
    const gpu::LinearArgs calls[] = {
        {.x = x_,
         .w = l[WeightSlot::kQkv],
         .bias = bf16(l[WeightSlot::kQkvBias]),
         .out = qkv_,
         .m = m},
        {.x = attn_, .w = l[WeightSlot::kO], .out = tp ? x_ : h_, .m = m, .accumulate = !tp},
        {.x = x_, .w = l[WeightSlot::kGateUp], .out = gate_up_, .m = m},
        {.x = act_, .w = l[WeightSlot::kDown], .out = tp ? x_ : h_, .m = m, .accumulate = !tp}};
    for (const gpu::LinearArgs& a : calls) {
      if (a.w.format != kernels::WeightFormat::kFp8E4M3) continue;
      Result<gpu::LinearPath> path = blas_->path_for(a);
      if (path.ok()) continue;
      if (path.status().code() != StatusCode::kUnimplemented) return path.status();
      need_dequant = true;
    }
  }
  if (!need_dequant) return ok_status();
  if (options_.fp8_activations)
    spdlog::warn(
        "layers [{}, {}): cuBLASLt refuses some fp8 linears; reserving {} MiB for their "
        "dequantized weights",
        layer_begin_, layer_end_, max_elems * 2 >> 20);
  return blas_->reserve_fp8(T, max_n, max_k, max_elems);
}

// --- KV

int64_t GpuStageModel::kv_bytes_per_block(int64_t block_size) const {
  return 2 * n_layer() * block_size * local_.kv_dim() * int64_t(sizeof(Bf16));
}

Status GpuStageModel::allocate_kv(int64_t n_blocks, int64_t block_size) {
  if (n_blocks < 1 || block_size < 1) {
    return invalid_argument("bad KV pool: {} blocks of {} tokens", n_blocks, block_size);
  }
  PP_RETURN_IF_ERROR(stream_.synchronize());
  graphs_.clear();
  kv_ = {};
  attn_ws_ = {};
  meta_ = {};
  const int64_t per_layer = n_blocks * block_size * local_.kv_dim();  // elements of K (or V)
  PP_ASSIGN_OR_RETURN(
      kv_, gpu::DeviceBuffer::allocate(size_t(2 * n_layer() * per_layer) * sizeof(Bf16)));
  n_blocks_ = n_blocks;
  block_size_ = block_size;
  const int64_t context = std::min(config_.max_context(), n_blocks * block_size);
  max_table_width_ = (context + block_size - 1) / block_size + 1;

  // The decode-path attention workspace: sized for a full decode batch at 4096 keys now, grown
  // by forward() when a batch needs more.
  PP_RETURN_IF_ERROR(ensure_workspace(batch_bucket(options_.max_seqs),
                                      batch_bucket(options_.max_seqs), 1,
                                      std::min<int64_t>(context, 4096)));

  // Metadata: room for the largest eager batch and the largest padded decode batch.
  const int64_t max_seq_pad = batch_bucket(options_.max_seqs);
  const MetaLayout eager(options_.max_tokens, options_.max_seqs, options_.max_logit_rows,
                         max_table_width_);
  const MetaLayout padded(max_seq_pad, max_seq_pad, max_seq_pad,
                          kv_bucket(context) / block_size + 1);
  meta_bytes_ = std::max(eager.bytes, padded.bytes);
  PP_ASSIGN_OR_RETURN(meta_, gpu::DeviceBuffer::allocate(meta_bytes_));
  for (int i = 0; i < kStaging; ++i) {
    PP_ASSIGN_OR_RETURN(staging_[size_t(i)], gpu::HostBuffer::allocate(meta_bytes_));
  }
  return ok_status();
}

// --- forward

Status GpuStageModel::ensure_workspace(int64_t n_tokens, int64_t n_seq, int64_t max_q_len,
                                       int64_t max_kv_len) {
  gpu::AttentionArgs a;
  a.q = h_;
  a.out = h_;
  a.kv = {kv_.as<Bf16>(), kv_.as<Bf16>(),   n_blocks_,
          block_size_,    local_.n_head_kv, local_.head_dim};
  a.seq_start = a.q_pos = a.block_tables = reinterpret_cast<const int32_t*>(h_);
  a.n_tokens = n_tokens;
  a.n_seq = n_seq;
  a.n_head = local_.n_head;
  a.max_blocks = max_table_width_;
  a.max_q_len = max_q_len;
  a.max_kv_len = max_kv_len;
  const size_t need = gpu::attention_workspace_bytes(a);
  if (need <= attn_ws_.bytes()) return ok_status();
  // Graphs captured with the old workspace must not outlive it.
  PP_RETURN_IF_ERROR(stream_.synchronize());
  graphs_.clear();
  attn_ws_ = {};
  PP_ASSIGN_OR_RETURN(attn_ws_, gpu::DeviceBuffer::allocate(need + need / 4));
  return ok_status();
}

Status GpuStageModel::upload_metadata(const Batch& batch, int64_t pad_tokens, int64_t table_width) {
  const int64_t T = batch.n_tokens(), S = batch.n_seq(), R = batch.n_logit_rows();
  const int64_t Tp = std::max(pad_tokens, T), Sp = S + (Tp - T);
  const int64_t Rp = pad_tokens > T ? Tp : R;
  const MetaLayout L(Tp, Sp, Rp, table_width);
  PP_ASSERT(L.bytes <= meta_bytes_);

  const int slot = staging_next_;
  staging_next_ = (staging_next_ + 1) % kStaging;
  PP_RETURN_IF_ERROR(staging_done_[size_t(slot)].synchronize());  // its last upload has run
  char* host = staging_[size_t(slot)].as<char>();
  auto* ids = reinterpret_cast<int32_t*>(host + L.ids);
  auto* pos = reinterpret_cast<int32_t*>(host + L.pos);
  auto* slots = reinterpret_cast<int64_t*>(host + L.slots);
  auto* seq_start = reinterpret_cast<int32_t*>(host + L.seq_start);
  auto* logit_rows = reinterpret_cast<int32_t*>(host + L.logit_rows);
  auto* tables = reinterpret_cast<int32_t*>(host + L.tables);

  const int64_t bs = block_size_;
  if (!batch.token_ids.empty()) {
    std::memcpy(ids, batch.token_ids.data(), size_t(T) * 4);
  } else {
    std::memset(ids, 0, size_t(T) * 4);
  }
  std::memcpy(pos, batch.positions.data(), size_t(T) * 4);
  std::memcpy(seq_start, batch.seq_start.data(), size_t(S + 1) * 4);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t* table = batch.block_table(s);
    int32_t* row = tables + s * table_width;
    const int64_t n = std::min<int64_t>(batch.max_blocks, table_width);
    std::memcpy(row, table, size_t(n) * 4);
    for (int64_t i = n; i < table_width; ++i) row[i] = 0;
    for (int32_t t = batch.seq_start[size_t(s)]; t < batch.seq_start[size_t(s) + 1]; ++t) {
      const int64_t p = batch.positions[size_t(t)];
      slots[t] = int64_t(table[p / bs]) * bs + p % bs;
    }
  }
  for (int64_t t = T; t < Tp; ++t) {  // padding: one-token sequences writing no KV
    ids[t] = 0;
    pos[t] = 0;
    slots[t] = -1;
  }
  for (int64_t s = S; s < Sp; ++s) {
    seq_start[s + 1] = int32_t(T + (s - S) + 1);
    std::memset(tables + s * table_width, 0, size_t(table_width) * 4);
  }
  if (pad_tokens > T) {
    for (int64_t r = 0; r < Rp; ++r) logit_rows[r] = int32_t(r);
  } else if (R > 0) {
    std::memcpy(logit_rows, batch.logit_rows.data(), size_t(R) * 4);
  }

  char* dev = meta_.as<char>();
  PP_RETURN_IF_ERROR(gpu::copy_async(dev, host, L.bytes, stream_));
  PP_RETURN_IF_ERROR(staging_done_[size_t(slot)].record(stream_));
  d_ids_ = reinterpret_cast<int32_t*>(dev + L.ids);
  d_pos_ = reinterpret_cast<int32_t*>(dev + L.pos);
  d_slots_ = reinterpret_cast<int64_t*>(dev + L.slots);
  d_seq_start_ = reinterpret_cast<int32_t*>(dev + L.seq_start);
  d_logit_rows_ = reinterpret_cast<int32_t*>(dev + L.logit_rows);
  d_tables_ = reinterpret_cast<int32_t*>(dev + L.tables);
  return ok_status();
}

Status GpuStageModel::gate_up_swiglu(const kernels::WeightView& w, int64_t T) {
  PP_RETURN_IF_ERROR(op_mark(kOpGateUp));
  const gpu::LinearArgs fused{.x = x_, .w = w, .out = act_, .m = T, .swiglu = true};
  if (fuse_decode_ && T <= gpu::kFp8GemvMaxRows) {
    const Result<gpu::LinearPath> path = blas_->path_for(fused);
    if (path.ok() && (*path == gpu::LinearPath::kBf16Gemv || *path == gpu::LinearPath::kFp8Gemv)) {
      return blas_->linear(fused, stream_);
    }
  }
  PP_RETURN_IF_ERROR(blas_->linear({.x = x_, .w = w, .out = gate_up_, .m = T}, stream_));
  PP_RETURN_IF_ERROR(op_mark(kOpSwiglu));
  return gpu::swiglu(gate_up_, act_, T, local_.n_ff, stream_);
}

Status GpuStageModel::run(int64_t T, int64_t S, int64_t max_q_len, int64_t max_kv_len,
                          int64_t width, int64_t R) {
  const ModelConfig& c = local_;
  const bool tp = tp_.tp.size > 1;
  // TP: x_ holds the last down_proj's summed output, not yet added into h_.
  bool pending = false;
  const int64_t E = c.n_embd, KV = c.kv_dim();
  gpu::Stream& s = stream_;
  if (has_embedding()) {
    PP_RETURN_IF_ERROR(op_mark(kOpEmbed));
    PP_RETURN_IF_ERROR(
        gpu::embedding(bf16(edges_[WeightSlot::kEmbedding]), d_ids_, h_, c.n_vocab, E, T, s));
  }
  const int64_t per_layer = n_blocks_ * block_size_ * KV;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    Bf16* k_pool = kv_.as<Bf16>() + int64_t(2 * i) * per_layer;
    const gpu::PagedKvView kv{k_pool,      k_pool + per_layer, n_blocks_,
                              block_size_, c.n_head_kv,        c.head_dim};
    PP_RETURN_IF_ERROR(op_mark(kOpNorm));
    PP_RETURN_IF_ERROR(gpu::rms_norm(pending ? x_ : h_, pending ? h_ : nullptr,
                                     bf16(l[WeightSlot::kAttnNorm]), x_, T, E, c.rms_norm_eps, s));
    pending = false;
    PP_RETURN_IF_ERROR(op_mark(kOpQkv));
    PP_RETURN_IF_ERROR(blas_->linear({.x = x_,
                                      .w = l[WeightSlot::kQkv],
                                      .bias = bf16(l[WeightSlot::kQkvBias]),
                                      .out = qkv_,
                                      .m = T},
                                     s));
    gpu::RopeKvArgs r;
    r.qkv = qkv_;
    r.q_out = q_;
    r.pos = d_pos_;
    r.slots = d_slots_;
    r.inv_freq = inv_freq_.as<float>();
    r.q_norm = bf16(l[WeightSlot::kQNorm]);
    r.k_norm = bf16(l[WeightSlot::kKNorm]);
    r.norm_eps = c.rms_norm_eps;
    r.kv = kv;
    r.n_tokens = T;
    r.n_head = c.n_head;
    r.rot_dim = c.head_dim;
    PP_RETURN_IF_ERROR(op_mark(kOpRope));
    PP_RETURN_IF_ERROR(gpu::rope_kv_write(r, s));
    gpu::AttentionArgs a;
    a.q = q_;
    a.out = attn_;
    a.kv = kv;
    a.seq_start = d_seq_start_;
    a.q_pos = d_pos_;
    a.block_tables = d_tables_;
    a.n_tokens = T;
    a.n_seq = S;
    a.n_head = c.n_head;
    a.max_blocks = width;
    a.scale = 1.0f / std::sqrt(float(c.head_dim));
    a.max_q_len = max_q_len;
    a.max_kv_len = max_kv_len;
    a.workspace = attn_ws_.data();
    a.workspace_bytes = attn_ws_.bytes();
    PP_RETURN_IF_ERROR(op_mark(kOpAttention));
    PP_RETURN_IF_ERROR(gpu::attention(a, s));
    PP_RETURN_IF_ERROR(op_mark(kOpO));
    PP_RETURN_IF_ERROR(blas_->linear(
        {.x = attn_, .w = l[WeightSlot::kO], .out = tp ? x_ : h_, .m = T, .accumulate = !tp}, s));
    if (tp) {
      PP_RETURN_IF_ERROR(op_mark(kOpComm));
      PP_RETURN_IF_ERROR(comm_->all_reduce_sum(x_, size_t(T * E), s));
    }
    PP_RETURN_IF_ERROR(op_mark(kOpNorm));
    PP_RETURN_IF_ERROR(gpu::rms_norm(tp ? x_ : h_, tp ? h_ : nullptr, bf16(l[WeightSlot::kFfnNorm]),
                                     x_, T, E, c.rms_norm_eps, s));
    PP_RETURN_IF_ERROR(gate_up_swiglu(l[WeightSlot::kGateUp], T));
    PP_RETURN_IF_ERROR(op_mark(kOpDown));
    PP_RETURN_IF_ERROR(blas_->linear(
        {.x = act_, .w = l[WeightSlot::kDown], .out = tp ? x_ : h_, .m = T, .accumulate = !tp}, s));
    if (tp) {
      PP_RETURN_IF_ERROR(op_mark(kOpComm));
      PP_RETURN_IF_ERROR(comm_->all_reduce_sum(x_, size_t(T * E), s));
      pending = true;
    }
  }
  if (pending) {
    // h_ += x_; the norm's output (into x_ itself) is not read.
    PP_RETURN_IF_ERROR(op_mark(kOpNorm));
    PP_RETURN_IF_ERROR(gpu::rms_norm(x_, h_, bf16(layers_.back()[WeightSlot::kFfnNorm]), x_, T, E,
                                     c.rms_norm_eps, s));
  }
  if (has_lm_head() && R > 0) {
    PP_RETURN_IF_ERROR(op_mark(kOpHead));
    PP_RETURN_IF_ERROR(gpu::embedding(h_, d_logit_rows_, rows_, T, E, R, s));  // row gather
    PP_RETURN_IF_ERROR(gpu::rms_norm(rows_, nullptr, bf16(edges_[WeightSlot::kFinalNorm]), rows_, R,
                                     E, c.rms_norm_eps, s));
    if (!tp) {
      PP_RETURN_IF_ERROR(blas_->linear(
          {.x = rows_, .w = edges_[WeightSlot::kLmHead], .out_f32 = logits_, .m = R}, s));
      return ok_status();
    }
    // This rank's [R, V_r] logits in its chunk of gathered_ (chunks of R x vocab_max_ floats,
    // the tail of a smaller slice unused), all-gathered in place, then laid out on rank 0 as
    // rows of the whole vocabulary.
    const size_t chunk = size_t(R * vocab_max_);
    float* mine = gathered_ + size_t(tp_.tp.rank) * chunk;
    PP_RETURN_IF_ERROR(
        blas_->linear({.x = rows_, .w = edges_[WeightSlot::kLmHead], .out_f32 = mine, .m = R}, s));
    PP_RETURN_IF_ERROR(op_mark(kOpComm));
    PP_RETURN_IF_ERROR(comm_->all_gather(mine, gathered_, chunk * sizeof(float), s));
    if (tp_.tp.rank != 0) return ok_status();
    const int64_t V = config_.n_vocab;
    for (int32_t r = 0; r < tp_.tp.size; ++r) {
      const int64_t b = vocab_bounds_[size_t(r)], n = vocab_bounds_[size_t(r) + 1] - b;
      const size_t row_bytes = size_t(n) * sizeof(float);
      PP_RETURN_IF_ERROR(gpu::copy_2d_async(logits_ + b, size_t(V) * sizeof(float),
                                            gathered_ + size_t(r) * chunk, row_bytes, row_bytes,
                                            size_t(R), s));
    }
  }
  return ok_status();
}

Status GpuStageModel::forward(const Batch& batch, const Bf16* input, Bf16* output) {
  if (!kv_.data()) {
    return make_error(StatusCode::kFailedPrecondition, "no KV cache: allocate_kv first");
  }
  if (tp_.tp.size > 1 &&
      (!comm_ || comm_->n_ranks() != tp_.tp.size || comm_->rank() != tp_.tp.rank)) {
    return make_error(StatusCode::kFailedPrecondition,
                      "rank {} of a tensor-parallel group of {} has no communicator of that rank",
                      tp_.tp.rank, tp_.tp.size);
  }
  const int64_t T = batch.n_tokens(), S = batch.n_seq(), E = config_.n_embd;
  if (has_embedding() && int64_t(batch.token_ids.size()) != T) {
    return invalid_argument("stage 0 needs token ids: got {} for {} tokens", batch.token_ids.size(),
                            T);
  }
  PP_RETURN_IF_ERROR(batch.validate(block_size_, n_blocks_, has_embedding() ? config_.n_vocab : 0));
  if (T > options_.max_tokens || S > options_.max_seqs ||
      (has_lm_head() && batch.n_logit_rows() > options_.max_logit_rows)) {
    return invalid_argument(
        "batch of {} tokens in {} sequences with {} logit rows exceeds this "
        "stage's limits ({} tokens, {} sequences, {} logit rows)",
        T, S, batch.n_logit_rows(), options_.max_tokens, options_.max_seqs,
        options_.max_logit_rows);
  }
  if (!has_embedding() && T > 0 && input == nullptr) {
    return invalid_argument("a stage after the first needs its input activations");
  }
  if (!has_lm_head() && T > 0 && output == nullptr) {
    return invalid_argument("a stage before the last needs an output buffer");
  }
  last_logit_rows_ = has_lm_head() ? batch.n_logit_rows() : 0;
  if (T == 0) return ok_status();

  int64_t max_q = 0, max_kv = 0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t a = batch.seq_start[size_t(s)], b = batch.seq_start[size_t(s) + 1];
    max_q = std::max(max_q, b - a);
    if (b > a) max_kv = std::max<int64_t>(max_kv, batch.positions[size_t(b - 1)] + 1);
  }
  const bool all_rows_sampled =
      !has_lm_head() || batch.n_logit_rows() == T;  // decode: every row's logits (in order)
  const int64_t Tb = batch_bucket(T);
  const bool graph = options_.cuda_graphs && !prof_.ops && max_q == 1 && all_rows_sampled &&
                     Tb <= batch_bucket(options_.max_seqs) && Tb <= options_.max_tokens;

  if (graph) {
    PP_RETURN_IF_ERROR(ensure_workspace(Tb, Tb, 1, kv_bucket(max_kv)));
  } else {
    PP_RETURN_IF_ERROR(ensure_workspace(T, S, max_q, max_kv));
  }
  if (prof_.on) {
    PP_RETURN_IF_ERROR(profile_collect());
    prof_.ops_step = prof_.ops && max_q == 1;
    if (prof_.ops_step) PP_RETURN_IF_ERROR(gpu::busy_wait(3000, stream_));
    PP_RETURN_IF_ERROR(prof_.f0.record(stream_));
  }
  if (!has_embedding()) {
    PP_RETURN_IF_ERROR(gpu::copy_async(h_, input, size_t(T * E) * sizeof(Bf16), stream_));
  }
  if (graph) {
    const int64_t kvb = kv_bucket(max_kv);
    const int64_t width = kvb / block_size_ + 1;
    PP_RETURN_IF_ERROR(upload_metadata(batch, Tb, width));
    auto key = std::make_pair(Tb, kvb);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      PP_RETURN_IF_ERROR(gpu::Graph::begin_capture(stream_));
      Status s = run(Tb, Tb, 1, kvb, width, has_lm_head() ? Tb : 0);
      auto g = gpu::Graph::end_capture(stream_);
      PP_RETURN_IF_ERROR(s.with_context("while capturing a decode graph"));
      if (!g.ok()) return g.status().with_context("while capturing a decode graph");
      it = graphs_.emplace(key, std::move(*g)).first;
    }
    PP_RETURN_IF_ERROR(it->second.launch(stream_));
    ++graph_replays_;
  } else {
    const int64_t width = std::max<int64_t>(batch.max_blocks, 1);
    if (width > max_table_width_) {
      return invalid_argument("block tables of {} entries exceed the pool's context ({})", width,
                              max_table_width_);
    }
    PP_RETURN_IF_ERROR(upload_metadata(batch, 0, width));
    PP_RETURN_IF_ERROR(run(T, S, max_q, max_kv, width, last_logit_rows_));
    PP_RETURN_IF_ERROR(op_mark(kOpEnd));
  }
  if (!has_lm_head()) {
    PP_RETURN_IF_ERROR(gpu::copy_async(output, h_, size_t(T * E) * sizeof(Bf16), stream_));
  }
  if (prof_.on) {
    PP_RETURN_IF_ERROR(prof_.f1.record(stream_));
    prof_.pending_forward = true;
  }
  return ok_status();
}

// --- sampling

Status GpuStageModel::sample(std::span<const GpuSampleSpec> rows, int32_t n_top, SampleSlot& slot) {
  if (!has_lm_head()) {
    return make_error(StatusCode::kFailedPrecondition, "only the last stage samples");
  }
  if (tp_.tp.rank != 0) {
    return make_error(StatusCode::kFailedPrecondition,
                      "only rank 0 of a tensor-parallel group samples (this is rank {})",
                      tp_.tp.rank);
  }
  const int64_t R = int64_t(rows.size());
  if (R != last_logit_rows_) {
    return invalid_argument("{} sampling rows for {} logit rows", R, last_logit_rows_);
  }
  if (R > slot.max_rows_ || n_top < 0 || n_top > gpu::kMaxTopLogprobs) {
    return invalid_argument("cannot sample {} rows with {} top logprobs into this slot", R, n_top);
  }
  slot.n_rows_ = R;
  slot.n_top_ = n_top;
  if (R == 0) return slot.ready_.record(stream_);

  // Host staging: the rows' parameters, then penalty rows and entries (distinct ids per row).
  // (Members reused from step to step: no allocation once they have grown.)
  std::vector<gpu::SampleRow>& params = sample_params_;
  std::vector<gpu::PenaltyRow>& pen_rows = sample_pen_rows_;
  std::vector<gpu::PenaltyEntry>& entries = sample_entries_;
  std::unordered_map<int32_t, size_t>& seen = sample_seen_;
  std::vector<gpu::LogitBias>& bias = sample_bias_;
  std::vector<int32_t>& mask_rows = sample_mask_rows_;
  const int64_t V = config_.n_vocab;
  const size_t words = size_t((V + 31) / 32);
  params.resize(size_t(R));
  pen_rows.resize(size_t(R));
  entries.clear();
  bias.clear();
  mask_rows.clear();
  for (int64_t r = 0; r < R; ++r) {
    const GpuSampleSpec& g = rows[size_t(r)];
    params[size_t(r)] = {g.temperature, g.top_k, g.top_p, g.min_p, g.seed, g.step};
    pen_rows[size_t(r)] = {g.repetition, g.presence, g.frequency};
    if (g.bias_ids.size() != g.bias_values.size()) {
      return invalid_argument("row {}: {} logit bias ids for {} values", r, g.bias_ids.size(),
                              g.bias_values.size());
    }
    for (size_t i = 0; i < g.bias_ids.size(); ++i) {
      bias.push_back({int32_t(r), g.bias_ids[i], g.bias_values[i]});
    }
    if (!g.allowed.empty()) {
      if (g.allowed.size() != words) {
        return invalid_argument("row {}: an allowed-token mask of {} words for {} tokens", r,
                                g.allowed.size(), V);
      }
      mask_rows.push_back(int32_t(r));
    }
    const bool rep = g.repetition != 1.0f, add = g.presence != 0.0f || g.frequency != 0.0f;
    if (!rep && !add) continue;
    seen.clear();
    auto entry = [&](int32_t id) -> gpu::PenaltyEntry& {
      auto [it, fresh] = seen.try_emplace(id, entries.size());
      if (fresh) entries.push_back({int32_t(r), id, 0, 0});
      return entries[it->second];
    };
    for (int32_t id : g.prompt_ids) {
      if (rep) entry(id).seen = 1;
    }
    for (int32_t id : g.output_ids) {
      gpu::PenaltyEntry& e = entry(id);
      if (rep) e.seen = 1;
      if (add) ++e.output_count;
    }
  }
  const size_t params_bytes = align_up(params.size() * sizeof(gpu::SampleRow), 16);
  const size_t pen_bytes = align_up(pen_rows.size() * sizeof(gpu::PenaltyRow), 16);
  const size_t entry_bytes = align_up(entries.size() * sizeof(gpu::PenaltyEntry), 16);
  const size_t bias_bytes = align_up(bias.size() * sizeof(gpu::LogitBias), 16);
  const size_t mask_row_bytes = align_up(mask_rows.size() * sizeof(int32_t), 16);
  const size_t mask_bytes = mask_rows.size() * words * sizeof(uint32_t);
  const size_t total =
      params_bytes + pen_bytes + entry_bytes + bias_bytes + mask_row_bytes + mask_bytes;
  // The next staging buffer of the ring, once its last upload has run (normally long ago).
  const int stage_slot = sample_staging_next_;
  sample_staging_next_ = (sample_staging_next_ + 1) % kStaging;
  gpu::HostBuffer& staging = sample_staging_[size_t(stage_slot)];
  gpu::Event& staged = sample_staging_done_[size_t(stage_slot)];
  PP_RETURN_IF_ERROR(staged.synchronize());
  if (staging.bytes() < total) {
    PP_ASSIGN_OR_RETURN(staging, gpu::HostBuffer::allocate(std::max<size_t>(total * 2, 4096)));
  }
  const int64_t M = slot.max_rows_;
  const size_t need = align_up(total, 16) + size_t(M) * 8 * (1 + gpu::kMaxTopLogprobs);
  if (sample_dev_.bytes() < need) {
    PP_RETURN_IF_ERROR(stream_.synchronize());
    PP_RETURN_IF_ERROR(copy_stream_.synchronize());
    PP_ASSIGN_OR_RETURN(sample_dev_, gpu::DeviceBuffer::allocate(need * 2));
  }
  char* host = staging.as<char>();
  std::memcpy(host, params.data(), params.size() * sizeof(gpu::SampleRow));
  std::memcpy(host + params_bytes, pen_rows.data(), pen_rows.size() * sizeof(gpu::PenaltyRow));
  if (!entries.empty()) {
    std::memcpy(host + params_bytes + pen_bytes, entries.data(),
                entries.size() * sizeof(gpu::PenaltyEntry));
  }
  const size_t bias_at = params_bytes + pen_bytes + entry_bytes;
  const size_t mask_rows_at = bias_at + bias_bytes, masks_at = mask_rows_at + mask_row_bytes;
  if (!bias.empty()) std::memcpy(host + bias_at, bias.data(), bias.size() * sizeof(gpu::LogitBias));
  if (!mask_rows.empty()) {
    std::memcpy(host + mask_rows_at, mask_rows.data(), mask_rows.size() * sizeof(int32_t));
    char* m = host + masks_at;
    for (int32_t r : mask_rows) {
      std::memcpy(m, rows[size_t(r)].allowed.data(), words * sizeof(uint32_t));
      m += words * sizeof(uint32_t);
    }
  }
  char* dev = sample_dev_.as<char>();
  // The last sampling's results must be on their way to the host before this one's parameters
  // and results overwrite the device buffer (a wait on the GPU, not on the host).
  PP_RETURN_IF_ERROR(copied_.wait_on(stream_));
  PP_RETURN_IF_ERROR(gpu::copy_async(dev, host, total, stream_));
  PP_RETURN_IF_ERROR(staged.record(stream_));

  if (prof_.on) PP_RETURN_IF_ERROR(prof_.s0.record(stream_));
  if (!entries.empty()) {
    PP_RETURN_IF_ERROR(gpu::apply_penalties(
        logits_, V, V, reinterpret_cast<const gpu::PenaltyEntry*>(dev + params_bytes + pen_bytes),
        int64_t(entries.size()), reinterpret_cast<const gpu::PenaltyRow*>(dev + params_bytes),
        stream_));
  }
  if (!bias.empty() || !mask_rows.empty()) {
    PP_RETURN_IF_ERROR(gpu::apply_logit_constraints(
        logits_, V, V, reinterpret_cast<const gpu::LogitBias*>(dev + bias_at), int64_t(bias.size()),
        reinterpret_cast<const uint32_t*>(dev + masks_at),
        reinterpret_cast<const int32_t*>(dev + mask_rows_at), int64_t(mask_rows.size()), stream_));
  }
  // Results on the device: tokens, logprobs, top ids, top logprobs (the slot's host layout).
  char* res = dev + align_up(total, 16);
  auto* tokens = reinterpret_cast<int32_t*>(res);
  auto* logprobs = reinterpret_cast<float*>(tokens + M);
  auto* top_ids = tokens + 2 * M;
  auto* top_lp = reinterpret_cast<float*>(top_ids + M * gpu::kMaxTopLogprobs);
  gpu::SampleArgs a;
  a.logits = logits_;
  a.n_rows = R;
  a.n_vocab = V;
  a.row_stride = V;
  a.rows = reinterpret_cast<const gpu::SampleRow*>(dev);
  a.n_top_logprobs = n_top;
  a.tokens = tokens;
  a.logprobs = logprobs;
  a.top_ids = n_top > 0 ? top_ids : nullptr;
  a.top_logprobs = n_top > 0 ? top_lp : nullptr;
  PP_RETURN_IF_ERROR(gpu::sample(a, stream_));
  if (prof_.on) {
    PP_RETURN_IF_ERROR(prof_.s1.record(stream_));
    prof_.pending_sample = true;
  }
  // The copy to the host runs on the copy stream behind an event; compute moves on.
  PP_RETURN_IF_ERROR(sampled_.record(stream_));
  PP_RETURN_IF_ERROR(sampled_.wait_on(copy_stream_));
  char* out = slot.host_.as<char>();
  PP_RETURN_IF_ERROR(gpu::copy_async(out, tokens, size_t(R) * 4, copy_stream_));
  PP_RETURN_IF_ERROR(gpu::copy_async(out + M * 4, logprobs, size_t(R) * 4, copy_stream_));
  if (n_top > 0) {
    // Rows of n_top entries, packed; the slot's accessors index [n_rows, n_top].
    PP_RETURN_IF_ERROR(
        gpu::copy_async(out + 2 * M * 4, top_ids, size_t(R * n_top) * 4, copy_stream_));
    PP_RETURN_IF_ERROR(gpu::copy_async(out + 2 * M * 4 + M * gpu::kMaxTopLogprobs * 4, top_lp,
                                       size_t(R * n_top) * 4, copy_stream_));
  }
  PP_RETURN_IF_ERROR(copied_.record(copy_stream_));
  return slot.ready_.record(copy_stream_);
}

}  // namespace pp::model
