// The CPU stage backend, the reference: an f32 StageModel, activations over the ZeroMQ
// activation channel, sampling with the CPU kernels. run() does a whole plan on the calling
// thread: it takes the plan's activations from the previous stage, runs the layers, and hands
// the output to the sender without waiting for the send (or, at the last stage, samples and
// posts the Tokens).
//
// Buffers: outputs go to a ring of send buffers, each held by its send until the transport says
// it is done (the timing is posted then, with the moment the bytes left); activations come into
// a ring of receive buffers, each held until the layers that read it have run.
//
// Tensor parallelism: a rank loads its slices (StageModel::load with its TpRank; a
// tensor-parallel partition's rank file holds them already cut) and runs its forward's
// collectives over the group's TpChannel, each tagged with the plan's seq and its index in the
// forward. Only rank 0 posts timings and samples.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <vector>

#include <spdlog/spdlog.h>

#include "pp/assert.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/device.h"
#include "pp/model/quantization.h"
#include "pp/model/random-weights.h"
#include "pp/model/stage-model.h"
#include "pp/pipeline/stage-backend.h"
#include "pp/pipeline/trace.h"

namespace pp::pipeline {
namespace {

namespace cpu = kernels::cpu;
using std::chrono::milliseconds;

// A ring of float vectors; a slot stays out of use between acquire() and release().
// release() may come from another thread (a send's `done`).
class VectorRing {
 public:
  explicit VectorRing(size_t n) : buffers_(n), in_use_(n, false) {}

  // The next slot in ring order, once it is free; the check's status when it says stop first.
  Result<size_t> acquire(const std::function<Status()>& check) {
    std::unique_lock lock(mu_);
    const size_t i = next_;
    while (in_use_[i]) {
      lock.unlock();
      PP_RETURN_IF_ERROR(check());
      lock.lock();
      if (in_use_[i]) cv_.wait_for(lock, milliseconds(50));
    }
    in_use_[i] = true;
    next_ = (next_ + 1) % buffers_.size();
    return i;
  }
  std::vector<float>& at(size_t i) { return buffers_[i]; }
  void release(size_t i) {
    std::lock_guard lock(mu_);
    PP_ASSERT_MSG(in_use_[i], "releasing a free activation buffer");
    in_use_[i] = false;
    cv_.notify_all();
  }

 private:
  std::vector<std::vector<float>> buffers_;
  std::vector<bool> in_use_;
  size_t next_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
};

// The stage model's collectives over the group's channel, tagged per plan: collective i of plan
// `seq` is seq * 2^20 + i on every rank (a forward runs far fewer than 2^20).
class HostTpComm final : public model::TpComm {
 public:
  explicit HostTpComm(transport::TpChannel* channel) : channel_(channel) {}
  void begin(uint64_t seq, std::function<Status()> check) {
    next_tag_ = seq << 20;
    check_ = std::move(check);
  }
  model::TpRank rank() const override { return {channel_->rank(), channel_->size()}; }
  Status all_reduce_sum(std::span<float> x) override {
    return channel_->all_reduce_sum(next_tag_++, x, check_);
  }
  Status gather(std::span<const float> part, std::span<float> out) override {
    return channel_->gather(next_tag_++, part, out, check_);
  }

 private:
  transport::TpChannel* channel_;
  uint64_t next_tag_ = 0;
  std::function<Status()> check_;
};

class CpuStage final : public StageBackend {
 public:
  CpuStage(const StageSpec& spec, const StageEnv& env) : spec_(spec), env_(env) {}
  ~CpuStage() override {
    sender_.reset();  // lingers until queued activations are out; releases the send ring
  }

  Status load();

  std::string describe() const override {
    return spec_.tp_size() > 1 ? fmt::format("cpu (rank {} of {})", spec_.rank, spec_.tp_size())
                               : "cpu";
  }
  int64_t weight_bytes() const override { return model_->n_params() * int64_t(sizeof(float)); }
  int64_t kv_bytes_per_block(int64_t block_size) const override {
    return model_->kv_bytes_per_block(block_size);
  }
  Result<int64_t> kv_capacity(int64_t block_size) const override {
    const int64_t per_block = kv_bytes_per_block(block_size);
    const int64_t budget =
        spec_.kv_memory > 0 ? spec_.kv_memory : kernels::cpu_device().free_bytes / 4;
    return per_block > 0 ? budget / per_block : 0;
  }
  Status allocate_kv(int64_t n_blocks, int64_t block_size) override {
    return model_->allocate_kv(n_blocks, block_size);
  }
  int64_t kv_blocks() const override { return model_->kv() ? model_->kv()->n_blocks() : 0; }
  int64_t kv_block_size() const override {
    return model_->kv() ? model_->kv()->block_size() : spec_.kv_block_size;
  }
  Status run(const transport::Plan& plan, const model::Batch& batch,
             std::span<const SampleRow> rows, int64_t arrived_us) override;
  Status relink(const StageLinks& links) override;
  bool drain(milliseconds) override { return true; }  // run() finishes each plan itself
  void abort() override {}

 private:
  Status receive(const transport::Plan& plan, int32_t n_tokens, size_t* slot);
  void sample(const transport::Plan& plan, std::span<const SampleRow> rows, transport::Tokens* out);

  StageSpec spec_;
  StageEnv env_;
  std::shared_ptr<const model::WeightSource> random_;  // random weights (quantized on load)
  std::unique_ptr<model::StageModel> model_;
  std::optional<HostTpComm> comm_;  // with several ranks
  int64_t n_embd_ = 0, n_vocab_ = 0;
  VectorRing send_ring_{4};
  VectorRing recv_ring_{2};
  std::vector<float> logits_, penalized_, sample_scratch_;
  std::vector<int32_t> row_top_k_;  // TP: per logit row, the top k its sampler needs (0: all)
  std::optional<transport::ActivationSender> sender_;  // declared after the rings it releases
};

Status CpuStage::load() {
  if (spec_.threads > 0) cpu::set_num_threads(spec_.threads);
  const partition::StageWeights& w = spec_.weights;
  const model::WeightSource* weights = w.weights.get();
  if (!weights) {
    PP_ASSERT_MSG(w.random_seed.has_value(), "a stage spec without weights or a random seed");
    PP_ASSIGN_OR_RETURN(std::unique_ptr<model::WeightSource> random,
                        model::random_weights(w.config, *w.random_seed));
    random_ = model::quantize_on_load(std::move(random), w.config, w.quantization);
    weights = random_.get();
  }
  const model::TpRank tp{spec_.rank, spec_.tp_size()};
  if (tp.size > 1) {
    if (!env_.tp)
      return invalid_argument("stage {} rank {} has no collective channel", spec_.stage,
                              spec_.rank);
    if (int32_t(spec_.tp_endpoints.size()) != tp.size) {
      return invalid_argument("stage {}: {} collective endpoints for a group of {}", spec_.stage,
                              spec_.tp_endpoints.size(), tp.size);
    }
    PP_RETURN_IF_ERROR(env_.tp->join(spec_.rank, spec_.tp_endpoints));
    comm_.emplace(env_.tp);
  }
  if (w.sliced_for && *w.sliced_for != tp) {
    return invalid_argument("stage {} rank {} of {} was given the weights of rank {} of {}",
                            spec_.stage, tp.rank, tp.size, w.sliced_for->rank, w.sliced_for->size);
  }
  PP_ASSIGN_OR_RETURN(model_, model::StageModel::load(w.config, *weights, w.layers.begin,
                                                      w.layers.end, w.cpu_dtype, tp,
                                                      /*presliced=*/w.sliced_for.has_value()));
  if (comm_) model_->set_tp_comm(&*comm_);
  n_embd_ = w.config.n_embd;
  n_vocab_ = w.config.n_vocab;
  if (!spec_.first() && !env_.receiver) {
    return invalid_argument("stage {} has no activation receiver", spec_.stage);
  }
  if (!spec_.last()) {
    if (spec_.links.next_data_endpoint.empty()) {
      return invalid_argument("stage {} of {} was not told where stage {} listens", spec_.stage,
                              spec_.n_stages, spec_.stage + 1);
    }
    PP_ASSIGN_OR_RETURN(auto sender,
                        transport::ActivationSender::connect(spec_.links.next_data_endpoint));
    sender_.emplace(std::move(sender));
  }
  return ok_status();
}

Status CpuStage::relink(const StageLinks& links) {
  if (spec_.last() || (sender_ && sender_->endpoint() == links.next_data_endpoint)) {
    return ok_status();
  }
  // Dropping the old sender also frees the send buffers held by its dead link.
  sender_.reset();
  PP_ASSIGN_OR_RETURN(auto sender, transport::ActivationSender::connect(links.next_data_endpoint));
  sender_.emplace(std::move(sender));
  spec_.links = links;
  spdlog::info("stage {}: now sending to '{}'", spec_.stage, links.next_data_endpoint);
  return ok_status();
}

// The activations of `plan` from the previous stage, into the next receive slot.
Status CpuStage::receive(const transport::Plan& plan, int32_t n_tokens, size_t* slot) {
  auto check = [&] { return env_.check(plan.seq); };
  PP_ASSIGN_OR_RETURN(*slot, recv_ring_.acquire(check));
  std::vector<float>& buf = recv_ring_.at(*slot);
  buf.resize(size_t(n_tokens) * size_t(n_embd_));
  for (;;) {
    auto got = env_.receiver->receive(plan.seq, buf, milliseconds(100));
    if (!got.ok()) {
      recv_ring_.release(*slot);
      return got.status().with_context(fmt::format("stage {}", spec_.stage));
    }
    if (got->has_value()) {
      const transport::ActivationHeader& h = **got;
      if (h.n_tokens != n_tokens || h.n_embd != n_embd_) {
        recv_ring_.release(*slot);
        return data_loss("stage {}: activation of seq {} is [{}, {}], the plan says [{}, {}]",
                         spec_.stage, plan.seq, h.n_tokens, h.n_embd, n_tokens, n_embd_);
      }
      return ok_status();
    }
    if (Status s = check(); !s.ok()) {
      recv_ring_.release(*slot);
      return s;
    }
  }
}

void CpuStage::sample(const transport::Plan& plan, std::span<const SampleRow> rows,
                      transport::Tokens* out) {
  out->seq = plan.seq;
  out->group = plan.group;
  out->tokens.clear();
  const size_t V = size_t(n_vocab_);
  PP_ASSERT(logits_.size() >= rows.size() * V);
  for (size_t i = 0; i < rows.size(); ++i) {
    const SampleRow& row = rows[i];
    const transport::WireSampling& w = row.sampling;
    const cpu::PenaltyParams pen{.prompt_ids = row.prompt_ids.data(),
                                 .n_prompt = int64_t(row.prompt_ids.size()),
                                 .output_ids = row.output_ids.data(),
                                 .n_output = int64_t(row.output_ids.size()),
                                 .repetition = w.repetition_penalty,
                                 .presence = w.presence_penalty,
                                 .frequency = w.frequency_penalty};
    const cpu::LogitConstraints constraints{
        .bias_ids = w.bias_ids.data(),
        .bias_values = w.bias_values.data(),
        .n_bias = int64_t(w.bias_ids.size()),
        .allowed = row.allowed.empty() ? nullptr : row.allowed.data()};
    cpu::SampleResult r = cpu::sample_constrained(pen, constraints,
                                                  {.logits = logits_.data() + i * V,
                                                   .n_vocab = n_vocab_,
                                                   .temperature = w.temperature,
                                                   .top_k = std::max(w.top_k, 0),
                                                   .top_p = w.top_p,
                                                   .min_p = w.min_p,
                                                   .seed = w.seed,
                                                   .step = row.step,
                                                   .n_top_logprobs = std::max(w.top_logprobs, 0)},
                                                  penalized_, sample_scratch_);
    transport::SampledToken t;
    t.request_id = row.request_id;
    t.token = r.token;
    if (w.top_logprobs >= 0) {
      t.logprob = r.logprob;
      for (const cpu::TokenLogprob& alt : r.top) {
        t.top_ids.push_back(alt.token);
        t.top_logprobs.push_back(alt.logprob);
      }
    }
    out->tokens.push_back(std::move(t));
  }
}

Status CpuStage::run(const transport::Plan& plan, const model::Batch& batch,
                     std::span<const SampleRow> rows, int64_t arrived_us) {
  const int32_t n_tokens = int32_t(batch.n_tokens());
  std::optional<size_t> in_slot;
  std::span<const float> input;
  if (!spec_.first()) {
    size_t slot = 0;
    PP_RETURN_IF_ERROR(receive(plan, n_tokens, &slot));
    in_slot = slot;
    input = recv_ring_.at(slot);
  }
  transport::StageTiming timing;
  timing.stage = spec_.stage;
  timing.seq = plan.seq;
  timing.group = plan.group;
  timing.n_tokens = n_tokens;
  timing.queued_us = arrived_us;
  timing.start_us = trace_now_us();
  const std::string where = fmt::format("stage {}: plan {}", spec_.stage, plan.seq);
  if (comm_) comm_->begin(plan.seq, [&] { return env_.check(plan.seq); });
  const bool rank0 = spec_.rank == 0;

  if (spec_.last()) {
    if (comm_) {
      // Rows whose sampler looks only at the k most likely tokens: the ranks send those alone.
      row_top_k_.clear();
      for (const SampleRow& row : rows) {
        const transport::WireSampling& w = row.sampling;
        const bool whole = w.top_logprobs >= 0 || !w.bias_ids.empty() || !row.allowed.empty() ||
                           w.presence_penalty != 0.0f || w.frequency_penalty != 0.0f ||
                           w.repetition_penalty != 1.0f;
        const bool greedy = w.temperature <= 0.0f || w.top_k == 1;
        row_top_k_.push_back(whole ? 0 : greedy ? 1 : std::max(w.top_k, 0));
      }
      model_->set_tp_row_top_k(row_top_k_);
    }
    Status s = model_->forward(batch, input, logits_);
    if (in_slot) recv_ring_.release(*in_slot);
    PP_RETURN_IF_ERROR(s.with_context(where));
    if (!rank0) return ok_status();  // rank 0 samples the gathered logits
    transport::Tokens tokens;
    sample(plan, rows, &tokens);
    timing.end_us = trace_now_us();
    env_.post(std::move(tokens));
    timing.sent_us = trace_now_us();
    env_.post(timing);
    return ok_status();
  }

  auto out_slot = send_ring_.acquire([&] { return env_.check(plan.seq); });
  if (!out_slot.ok()) {
    if (in_slot) recv_ring_.release(*in_slot);
    return out_slot.status();
  }
  std::vector<float>& out = send_ring_.at(*out_slot);
  Status s = model_->forward(batch, input, out);
  if (in_slot) recv_ring_.release(*in_slot);
  if (!s.ok()) {
    send_ring_.release(*out_slot);
    return s.with_context(where);
  }
  timing.end_us = trace_now_us();
  const size_t slot = *out_slot;
  const transport::ActivationHeader h{plan.seq, plan.group, n_tokens, int32_t(n_embd_)};
  // The send keeps the buffer until ZeroMQ has written it; then the slot is free again and the
  // timing, with the moment the bytes left, goes to the coordinator.
  Status sent = sender_->send(h, std::span<const float>(out.data(), h.n_floats()),
                              [this, slot, timing, rank0]() mutable {
                                timing.sent_us = trace_now_us();
                                send_ring_.release(slot);
                                if (rank0) env_.post(timing);
                              });
  return sent.with_context(fmt::format("stage {}", spec_.stage));
}

}  // namespace

Result<std::unique_ptr<StageBackend>> make_cpu_stage(const StageSpec& spec, const StageEnv& env) {
  auto stage = std::make_unique<CpuStage>(spec, env);
  PP_RETURN_IF_ERROR(stage->load());
  return std::unique_ptr<StageBackend>(std::move(stage));
}

}  // namespace pp::pipeline
