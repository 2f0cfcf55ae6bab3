// GpuStage: streams, NCCL links, buffer rings ordered by events, and the completion thread.
#include "gpu-stage.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "pp/assert.h"
#include "pp/kernels/device.h"
#include "pp/pipeline/trace.h"

namespace pp::pipeline {

Result<std::unique_ptr<StageBackend>> make_gpu_stage(const StageSpec& spec, const StageEnv& env) {
  PP_ASSIGN_OR_RETURN(std::unique_ptr<GpuStage> g, GpuStage::create(spec, env));
  return std::unique_ptr<StageBackend>(std::move(g));
}

namespace gpu = kernels::gpu;

struct GpuStage::Pending {
  uint64_t seq = 0;
  int32_t group = 0, n_tokens = 0;
  int64_t queued_us = 0;
  gpu::Event start, end, sent;  // timing events
  int sample_slot = -1;
  std::vector<GpuSampledRow> rows;
};

namespace {

Result<std::unique_ptr<gpu::NcclComm>> join_link(const std::string& id, int rank) {
  if (id.size() != sizeof(gpu::NcclId)) {
    return invalid_argument("bad NCCL id: {} bytes, expected {}", id.size(), sizeof(gpu::NcclId));
  }
  gpu::NcclId nid;
  std::memcpy(nid.data(), id.data(), nid.size());
  return gpu::NcclComm::init(nid, 2, rank);
}

}  // namespace

Result<std::unique_ptr<GpuStage>> GpuStage::create(const StageSpec& spec, const StageEnv& env) {
  PP_ASSIGN_OR_RETURN(const int device, parse_device(spec.device()));
  if (device < 0) return invalid_argument("the GPU backend got device '{}'", spec.device());
  if (!kernels::built_with_cuda()) {
    return unimplemented("device '{}': this pp-stage was built without CUDA", spec.device());
  }
  std::unique_ptr<GpuStage> g(new GpuStage());
  g->spec_ = spec;
  g->first_ = spec.first();
  g->last_ = spec.last();
  g->post_ = env.post;
  PP_ASSIGN_OR_RETURN(g->device_info_, kernels::cuda_device(device));
  if ((!g->first_ && spec.links.nccl_id_from_previous.empty()) ||
      (!g->last_ && spec.links.nccl_id_to_next.empty())) {
    return invalid_argument(
        "stage {} of {} on {} was given no NCCL link to its neighbours "
        "(every stage of a GPU pipeline must run on a GPU)",
        spec.stage, spec.n_stages, spec.device());
  }
  model::GpuStageOptions o;
  o.device = device;
  o.max_tokens = std::max(spec.max_batch_tokens, 1);
  o.max_seqs = std::max(spec.max_running, 1);
  o.cuda_graphs = spec.cuda_graphs;
  o.quantization = spec.weights.quantization;
  const partition::StageWeights& w = spec.weights;
  const model::TpRank tp{spec.rank, spec.tp_size()};
  if (w.sliced_for && *w.sliced_for != tp) {
    return invalid_argument("stage {} rank {} of {} was given weights cut for rank {} of {}",
                            spec.stage, tp.rank, tp.size, w.sliced_for->rank, w.sliced_for->size);
  }
  if (w.weights) {
    PP_ASSIGN_OR_RETURN(g->model_, model::GpuStageModel::load(
                                       w.config, *w.weights, w.layers.begin, w.layers.end, o, tp,
                                       /*presliced=*/w.sliced_for.has_value()));
  } else {
    PP_ASSERT_MSG(w.random_seed.has_value(), "a stage spec without weights or a random seed");
    PP_ASSIGN_OR_RETURN(g->model_,
                        model::GpuStageModel::random(w.config, *w.random_seed, w.layers.begin,
                                                     w.layers.end, o, tp));
  }
  PP_RETURN_IF_ERROR(gpu::set_device(device));
  // The group's communicator before the links: every process joins its stage's group first,
  // then its links in ascending order, one global order, so no init waits in a circle.
  if (tp.size > 1) {
    gpu::NcclId id{};
    if (spec.tp_nccl_id.size() != id.size()) {
      return invalid_argument("stage {} rank {} was given no NCCL id for its group", spec.stage,
                              spec.rank);
    }
    std::memcpy(id.data(), spec.tp_nccl_id.data(), id.size());
    PP_ASSIGN_OR_RETURN(g->tp_comm_, gpu::NcclComm::init(id, tp.size, tp.rank));
    g->model_->set_tp_comm(g->tp_comm_.get());
  }
  PP_ASSIGN_OR_RETURN(g->recv_stream_, gpu::Stream::create(true));
  PP_ASSIGN_OR_RETURN(g->send_stream_, gpu::Stream::create(true));
  const model::ModelConfig& c = g->model_->config();
  const size_t act_bytes = size_t(g->model_->options().max_tokens * c.n_embd) * sizeof(gpu::Bf16);
  auto make_ring = [&](std::vector<Slot>& ring) -> Status {
    ring.resize(kRing);
    for (Slot& s : ring) {
      PP_ASSIGN_OR_RETURN(s.buf, gpu::DeviceBuffer::allocate(act_bytes));
      PP_ASSIGN_OR_RETURN(s.filled, gpu::Event::create());
      PP_ASSIGN_OR_RETURN(s.consumed, gpu::Event::create());
    }
    return ok_status();
  };
  // Links, previous first: stage k joins link k-1 then link k, so the chain never waits in a
  // circle.
  if (!g->first_) {
    PP_RETURN_IF_ERROR(make_ring(g->recv_));
    PP_ASSIGN_OR_RETURN(g->from_previous_, join_link(spec.links.nccl_id_from_previous, 1));
  }
  if (!g->last_) {
    PP_RETURN_IF_ERROR(make_ring(g->send_));
    PP_ASSIGN_OR_RETURN(g->to_next_, join_link(spec.links.nccl_id_to_next, 0));
  }
  if (g->last_) {
    for (int i = 0; i < kSampleSlots; ++i) {
      PP_ASSIGN_OR_RETURN(model::SampleSlot slot,
                          model::SampleSlot::create(g->model_->options().max_logit_rows));
      g->sample_slots_.push_back(std::move(slot));
    }
    g->sample_busy_.assign(kSampleSlots, false);
  }
  PP_ASSIGN_OR_RETURN(g->epoch_, gpu::Event::create(true));
  PP_RETURN_IF_ERROR(g->epoch_.record(g->model_->stream()));
  PP_RETURN_IF_ERROR(g->epoch_.synchronize());
  g->epoch_us_ = trace_now_us();
  g->completion_ = std::thread([p = g.get()] { p->completion_loop(); });
  return g;
}

std::string GpuStage::describe() const {
  return fmt::format("{} ({})", spec_.device(), device_info_.name);
}

GpuStage::~GpuStage() {
  (void)drain_all();
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (completion_.joinable()) completion_.join();
  if (model_) (void)model_->stream().synchronize();  // null when create() failed early
  (void)recv_stream_.synchronize();
  (void)send_stream_.synchronize();
}

Result<int64_t> GpuStage::kv_capacity(int64_t block_size) const {
  const double mem_fraction = spec_.mem_fraction;
  PP_ASSIGN_OR_RETURN(gpu::MemInfo mem, gpu::mem_info());
  const int64_t per_block = model_->kv_bytes_per_block(block_size);
  int64_t rings = 0;
  for (const Slot& s : recv_) rings += int64_t(s.buf.bytes());
  for (const Slot& s : send_) rings += int64_t(s.buf.bytes());
  const int64_t statics = model_->weight_bytes() + model_->scratch_bytes() + rings;
  int64_t budget = int64_t(double(mem.total_bytes) * mem_fraction) - statics;
  // Never more than is free now, less a margin for the workspace, graphs and NCCL.
  budget = std::min(budget, mem.free_bytes - (int64_t(1) << 30));
  return std::max<int64_t>(0, budget / per_block);
}

Status GpuStage::allocate_kv(int64_t n_blocks, int64_t block_size) {
  PP_RETURN_IF_ERROR(drain_all());
  return model_->allocate_kv(n_blocks, block_size);
}

Status GpuStage::run(const transport::Plan& plan, const model::Batch& batch,
                     std::span<const SampleRow> sampled, int64_t arrived_us) {
  PP_RETURN_IF_ERROR(failure());
  // The sampled rows' specs (last stage), in logit-row order.
  specs_.clear();
  rows_.clear();
  for (const SampleRow& r : sampled) {
    const transport::WireSampling& w = r.sampling;
    model::GpuSampleSpec spec;
    spec.temperature = w.temperature;
    spec.top_k = std::max(w.top_k, 0);
    spec.top_p = w.top_p;
    spec.min_p = w.min_p;
    spec.seed = w.seed;
    spec.step = r.step;
    spec.repetition = w.repetition_penalty;
    spec.presence = w.presence_penalty;
    spec.frequency = w.frequency_penalty;
    spec.prompt_ids = r.prompt_ids;
    spec.output_ids = r.output_ids;
    spec.bias_ids = w.bias_ids;
    spec.bias_values = w.bias_values;
    spec.allowed = r.allowed;
    specs_.push_back(spec);
    rows_.push_back({r.request_id, w.top_logprobs});
  }
  const std::span<const model::GpuSampleSpec> specs = specs_;
  const std::span<const GpuSampledRow> rows = rows_;
  gpu::Stream& compute = model_->stream();
  const int64_t T = batch.n_tokens();
  const size_t bytes = size_t(T * model_->config().n_embd) * sizeof(gpu::Bf16);
  const uint64_t n = n_run_++;

  std::unique_ptr<Pending> p;
  {
    std::lock_guard lock(mu_);
    if (!free_pending_.empty()) {
      p = std::move(free_pending_.back());
      free_pending_.pop_back();
    }
  }
  if (!p) {
    p = std::make_unique<Pending>();
    PP_ASSIGN_OR_RETURN(p->start, gpu::Event::create(true));
    PP_ASSIGN_OR_RETURN(p->end, gpu::Event::create(true));
    PP_ASSIGN_OR_RETURN(p->sent, gpu::Event::create(true));
  }
  p->seq = plan.seq;
  p->group = plan.group;
  p->n_tokens = int32_t(T);
  p->queued_us = arrived_us;
  p->sample_slot = -1;
  p->rows.assign(rows.begin(), rows.end());

  const gpu::Bf16* input = nullptr;
  Slot* in = nullptr;
  if (!first_ && T > 0) {
    in = &recv_[n % kRing];
    PP_RETURN_IF_ERROR(in->consumed.wait_on(recv_stream_));  // its last plan has been read
    PP_RETURN_IF_ERROR(from_previous_->recv(in->buf.data(), bytes, 0, recv_stream_));
    PP_RETURN_IF_ERROR(in->filled.record(recv_stream_));
    PP_RETURN_IF_ERROR(in->filled.wait_on(compute));
    input = in->buf.as<gpu::Bf16>();
  }
  gpu::Bf16* output = nullptr;
  Slot* out = nullptr;
  if (!last_ && T > 0) {
    out = &send_[n % kRing];
    PP_RETURN_IF_ERROR(out->consumed.wait_on(compute));  // its last send has gone
    output = out->buf.as<gpu::Bf16>();
  }
  PP_RETURN_IF_ERROR(p->start.record(compute));
  PP_RETURN_IF_ERROR(model_->forward(batch, input, output));
  if (in) PP_RETURN_IF_ERROR(in->consumed.record(compute));
  if (last_ && spec_.rank == 0) {  // rank 0 of a group samples the gathered logits
    int slot = -1;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return !sample_busy_[size_t(sample_next_)] || !failure_.ok(); });
      if (!failure_.ok()) return failure_;
      slot = sample_next_;
      sample_busy_[size_t(slot)] = true;
      sample_next_ = (sample_next_ + 1) % kSampleSlots;
    }
    int32_t n_top = 0;
    for (const GpuSampledRow& r : rows) n_top = std::max(n_top, r.top_logprobs);
    p->sample_slot = slot;
    PP_RETURN_IF_ERROR(model_->sample(specs, n_top, sample_slots_[size_t(slot)]));
  }
  PP_RETURN_IF_ERROR(p->end.record(compute));
  if (out) {
    PP_RETURN_IF_ERROR(out->filled.record(compute));
    PP_RETURN_IF_ERROR(out->filled.wait_on(send_stream_));
    PP_RETURN_IF_ERROR(to_next_->send(out->buf.data(), bytes, 1, send_stream_));
    PP_RETURN_IF_ERROR(out->consumed.record(send_stream_));
    PP_RETURN_IF_ERROR(p->sent.record(send_stream_));
  } else {
    PP_RETURN_IF_ERROR(p->sent.record(compute));
  }
  {
    std::lock_guard lock(mu_);
    pending_.push_back(std::move(p));
  }
  cv_.notify_all();
  return ok_status();
}

Status GpuStage::drain_all() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return pending_.empty() || !failure_.ok() || stop_; });
  return failure_;
}

bool GpuStage::drain(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return pending_.empty() || !failure_.ok() || stop_; });
}

void GpuStage::abort() {
  // A link whose neighbour is gone can hold a receive forever: post nothing more; the caller
  // leaves this object (streams, the completion thread waiting on them) to the process's exit.
  std::lock_guard lock(mu_);
  aborted_ = true;
}

Status GpuStage::relink(const StageLinks&) {
  // Issue 22: the coordinator would abort the NCCL communicators and hand out new link ids.
  return unimplemented("stage {} on {} cannot re-form its NCCL links after a lost stage",
                       spec_.stage, spec_.device());
}

Status GpuStage::failure() {
  std::lock_guard lock(mu_);
  return failure_;
}

Result<int64_t> GpuStage::event_us(const gpu::Event& e) const {
  PP_ASSIGN_OR_RETURN(float ms, e.elapsed_since(epoch_));
  return epoch_us_ + int64_t(double(ms) * 1000.0);
}

void GpuStage::completion_loop() {
  (void)gpu::set_device(model_->options().device);
  for (;;) {
    Pending* p = nullptr;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return !pending_.empty() || stop_; });
      if (pending_.empty()) return;
      p = pending_.front().get();
    }
    Status s = p->end.synchronize();
    transport::Tokens tokens;
    if (s.ok() && p->sample_slot >= 0) {
      model::SampleSlot& slot = sample_slots_[size_t(p->sample_slot)];
      s = slot.wait();
      if (s.ok()) {
        tokens.seq = p->seq;
        tokens.group = p->group;
        tokens.tokens.resize(p->rows.size());
        for (size_t i = 0; i < p->rows.size(); ++i) {
          transport::SampledToken& t = tokens.tokens[i];
          t.request_id = p->rows[i].request_id;
          t.token = slot.tokens()[i];
          const int32_t want = p->rows[i].top_logprobs;
          if (want >= 0) {
            t.logprob = slot.logprobs()[i];
            for (int32_t k = 0; k < want && k < slot.n_top(); ++k) {
              t.top_ids.push_back(slot.top_ids()[i * size_t(slot.n_top()) + size_t(k)]);
              t.top_logprobs.push_back(slot.top_logprobs()[i * size_t(slot.n_top()) + size_t(k)]);
            }
          }
        }
      }
    }
    if (s.ok()) s = p->sent.synchronize();
    transport::StageTiming timing;
    if (s.ok()) {
      timing.stage = spec_.stage;
      timing.seq = p->seq;
      timing.group = p->group;
      timing.n_tokens = p->n_tokens;
      timing.queued_us = p->queued_us;
      auto start = event_us(p->start), end = event_us(p->end), sent = event_us(p->sent);
      if (!start.ok() || !end.ok() || !sent.ok()) {
        s = !start.ok() ? start.status() : !end.ok() ? end.status() : sent.status();
      } else {
        timing.start_us = *start;
        timing.end_us = *end;
        timing.sent_us = *sent;
      }
    }
    bool aborted = false;
    {
      std::lock_guard lock(mu_);
      aborted = aborted_;
    }
    if (s.ok() && !aborted && p->sample_slot >= 0) post_(std::move(tokens));
    if (s.ok() && !aborted && spec_.rank == 0) post_(timing);
    {
      std::lock_guard lock(mu_);
      if (!s.ok() && failure_.ok()) {
        failure_ = s.with_context(fmt::format("stage {}: plan {}", spec_.stage, p->seq));
      }
      if (p->sample_slot >= 0) sample_busy_[size_t(p->sample_slot)] = false;
      free_pending_.push_back(std::move(pending_.front()));
      pending_.pop_front();
    }
    cv_.notify_all();
  }
}

}  // namespace pp::pipeline
