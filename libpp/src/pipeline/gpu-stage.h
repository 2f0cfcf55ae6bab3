// GpuStage: the GPU stage backend (stage-backend.h). It loads the stage's GpuStageModel on its
// device, owns its streams and NCCL links, and turns each plan into queued GPU work without
// waiting for the GPU:
//
//   recv stream:    [wait: slot free] ncclRecv(plan n) into recv slot          -> received(n)
//   compute stream: [wait: received(n), send slot free] forward(n) [sample(n)] -> done(n)
//   send stream:    [wait: done(n)] ncclSend(send slot)                        -> sent(n)
//
// Receives are queued as soon as a plan is taken, while the GPU still runs earlier plans (the
// receive is posted ahead); every buffer's reuse is ordered by events on the GPU, so the
// compute thread never blocks on a transfer. A completion thread waits on each plan's events in
// order and posts to the coordinator: the StageTiming (start and end from CUDA events, mapped
// to the wall clock) and, at the last stage, the sampled Tokens, copied to the host on the
// model's copy stream behind an event.
//
// Links: NCCL point-to-point between neighbouring stages, one two-rank communicator per link
// (the coordinator hands out the ids), so each communicator is used by one stream per side and
// both sides issue in plan order.
//
// Tensor parallelism: rank r of a stage links to rank r of its neighbours, and the stage's ranks
// share one more communicator, used by the model's collectives on the compute stream (joined
// before the links, one global order). Every rank runs every plan; only rank 0 samples and posts.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "pp/kernels/device.h"
#include "pp/kernels/gpu.h"
#include "pp/model/gpu-stage-model.h"
#include "pp/pipeline/stage-backend.h"
#include "pp/status.h"
#include "pp/transport/messages.h"

namespace pp::pipeline {

// What the completion thread needs of one sampled row.
struct GpuSampledRow {
  uint64_t request_id = 0;
  int32_t top_logprobs = -1;  // WireSampling::top_logprobs
};

class GpuStage final : public StageBackend {
 public:
  // Loads the spec's layers on its device; joins the NCCL links (blocks until the neighbours
  // join too).
  static Result<std::unique_ptr<GpuStage>> create(const StageSpec& spec, const StageEnv& env);
  ~GpuStage() override;

  std::string describe() const override;
  int64_t weight_bytes() const override { return model_->weight_bytes(); }
  int64_t kv_bytes_per_block(int64_t block_size) const override {
    return model_->kv_bytes_per_block(block_size);
  }
  // KV blocks of `block_size` that fit when the stage's static memory (weights, scratch, KV)
  // may take the spec's mem_fraction of the device's total memory (SGLang's
  // --mem-fraction-static), capped by what is free now.
  Result<int64_t> kv_capacity(int64_t block_size) const override;
  // Waits for queued work, then (re)allocates the KV pool.
  Status allocate_kv(int64_t n_blocks, int64_t block_size) override;
  int64_t kv_blocks() const override { return model_->kv_blocks(); }
  int64_t kv_block_size() const override { return model_->kv_block_size(); }

  // Queues plan `plan` (its batch already built); `rows`: the sampled rows, in logit-row order
  // (last stage only).
  Status run(const transport::Plan& plan, const model::Batch& batch,
             std::span<const SampleRow> rows, int64_t arrived_us) override;
  Status relink(const StageLinks& links) override;
  bool drain(std::chrono::milliseconds timeout) override;
  void abort() override;

  model::GpuStageModel& model() { return *model_; }

 private:
  struct Pending;
  GpuStage() = default;
  // Blocks until everything queued has been posted. Returns the completion thread's error.
  Status drain_all();
  // An error the completion thread met (a CUDA failure); ok otherwise.
  Status failure();
  void completion_loop();
  Result<int64_t> event_us(const kernels::gpu::Event& e) const;

  std::unique_ptr<model::GpuStageModel> model_;
  StageSpec spec_;
  kernels::DeviceInfo device_info_;
  bool first_ = true, last_ = true;
  std::function<void(transport::Message)> post_;
  std::vector<model::GpuSampleSpec> specs_;  // run(): the sampled rows' specs, reused
  std::vector<GpuSampledRow> rows_;
  std::unique_ptr<kernels::gpu::NcclComm> from_previous_, to_next_;
  std::unique_ptr<kernels::gpu::NcclComm> tp_comm_;  // the stage's group (tensor parallelism)
  kernels::gpu::Stream recv_stream_, send_stream_;

  // Rings: activation buffers and their events (GPU-side ordering of reuse).
  static constexpr int kRing = 4;
  struct Slot {
    kernels::gpu::DeviceBuffer buf;
    kernels::gpu::Event filled, consumed;  // recv: received / read by compute; send: done / sent
  };
  std::vector<Slot> recv_, send_;
  uint64_t n_run_ = 0;

  // Sampling results and the per-plan events waited on by the completion thread.
  static constexpr int kSampleSlots = 8;
  std::vector<model::SampleSlot> sample_slots_;
  std::vector<bool> sample_busy_;
  int sample_next_ = 0;

  // Wall-clock reference for CUDA event times.
  kernels::gpu::Event epoch_;
  int64_t epoch_us_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Pending>> pending_;
  std::vector<std::unique_ptr<Pending>> free_pending_;
  bool stop_ = false;
  bool aborted_ = false;  // abort(): post nothing more
  Status failure_;
  std::thread completion_;
};

}  // namespace pp::pipeline
