// StageBackend: everything a stage worker does that touches a device, behind one interface
// (DESIGN.md, "Seams"). The worker speaks the protocol, mirrors block tables and builds batches;
// a backend loads a stage spec onto its devices, says how much KV fits, allocates the KV pool,
// runs plans asynchronously and reports each plan's tokens (last stage) and timing through the
// `post` callback it was made with, drains, and aborts. Two implementations:
//
//   cpu (cpu-stage.cpp): the reference. f32 StageModel; activations over the ZeroMQ activation
//     channel; run() does the whole plan on the calling thread (receive, forward, sample, hand
//     the output to the sender) and returns when the output is queued for sending.
//   gpu (gpu-stage.cpp): GpuStageModel on a CUDA device; activations over NCCL; run() queues the
//     plan's GPU work and returns at once; a completion thread posts tokens and timings.
//
// Protocol facts every backend keeps: plans run in issue order; a plan's Tokens (last stage) are
// posted before its StageTiming; nothing is posted for a plan after abort(). A backend is made
// and used by one thread (the worker's compute thread); `post` may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "pp/kernels/device.h"
#include "pp/model/batch.h"
#include "pp/partition/model-resolver.h"
#include "pp/status.h"
#include "pp/transport/activation.h"
#include "pp/transport/messages.h"
#include "pp/transport/tp-channel.h"

namespace pp::pipeline {

// Where a stage's activations come from and go to. CPU: ZeroMQ endpoints; GPU: NCCL link ids
// (the coordinator makes them; 128 bytes each).
struct StageLinks {
  std::string next_data_endpoint;     // CPU: where the next stage receives (empty at the last)
  std::string nccl_id_from_previous;  // GPU: empty at stage 0
  std::string nccl_id_to_next;        // GPU: empty at the last stage
};

// What a stage is: its place in the pipeline, its device group, its weights, and the limits
// that size its buffers. Built by the worker from the coordinator's Assign.
struct StageSpec {
  int32_t stage = 0, n_stages = 1;
  // The stage's device group, one device per rank ("cpu", "cuda:N"), and this worker's rank in
  // it. Several devices: tensor parallelism (tensor-parallel.h), one worker per rank.
  std::vector<std::string> devices{"cpu"};
  int32_t rank = 0;
  // The group's collectives: every rank's TpChannel endpoint (CPU), the NCCL id of the group's
  // communicator (GPU). Empty with one device.
  std::vector<std::string> tp_endpoints;
  std::string tp_nccl_id;
  partition::StageWeights weights;  // config, layer range, tensors (or a random seed)
  StageLinks links;
  int64_t kv_block_size = 16;
  int32_t max_batch_tokens = 512;  // tokens of one micro-batch at most
  int32_t max_running = 256;       // sequences of one micro-batch at most
  int32_t threads = 0;             // CPU compute threads (0: all cores)
  int64_t kv_memory = 0;       // CPU: bytes offered for the KV pool (0: a quarter of MemAvailable)
  double mem_fraction = 0.85;  // GPU: device share for weights, buffers and KV
  bool cuda_graphs = true;     // GPU: replay CUDA graphs for decode steps

  bool first() const { return stage == 0; }
  bool last() const { return stage == n_stages - 1; }
  const std::string& device() const { return devices[size_t(rank)]; }
  int32_t tp_size() const { return int32_t(devices.size()); }
};

// One logit row to sample at the last stage (in logit-row order): the request, its parameters,
// the RNG counter, its penalty history (empty without penalties) and its allowed-token mask
// (empty: every token). The spans stay valid until run() returns.
struct SampleRow {
  uint64_t request_id = 0;
  transport::WireSampling sampling;
  uint64_t step = 0;
  std::span<const int32_t> prompt_ids;
  std::span<const int32_t> output_ids;
  std::span<const uint32_t> allowed;
};

// What a backend needs of its worker: where to post Tokens and StageTimings; a check it calls
// while it waits (every 100 ms at most), whose non-ok status ends the wait and the plan with it
// (the worker stopping; the coordinator resetting the pipeline, which abandons plan `seq`); and
// the activation receiver and the collective channel the worker bound before saying Hello (CPU
// transport).
//
// Tensor parallelism: every rank of a stage runs every plan; rank r takes its activations from
// rank r of the previous stage and sends to rank r of the next. Only rank 0 posts: StageTiming
// for its stage, Tokens at the last stage.
struct StageEnv {
  std::function<void(transport::Message)> post;
  std::function<Status(uint64_t seq)> check;
  transport::ActivationReceiver* receiver = nullptr;
  transport::TpChannel* tp = nullptr;
};

class StageBackend {
 public:
  virtual ~StageBackend() = default;

  // A short description for logs: "cpu" or "cuda:0 (NVIDIA H200)".
  virtual std::string describe() const = 0;
  // Bytes of weights this stage holds on its device.
  virtual int64_t weight_bytes() const = 0;
  // Bytes one KV block of `block_size` tokens takes on this stage, and how many blocks fit in
  // what the spec allows (CPU: kv_memory; GPU: mem_fraction of the device, capped by what is
  // free now).
  virtual int64_t kv_bytes_per_block(int64_t block_size) const = 0;
  virtual Result<int64_t> kv_capacity(int64_t block_size) const = 0;
  // Waits for queued work, then (re)allocates the KV pool; any cached KV is lost.
  virtual Status allocate_kv(int64_t n_blocks, int64_t block_size) = 0;
  // The pool now: blocks (0 before allocate_kv) and tokens per block.
  virtual int64_t kv_blocks() const = 0;
  virtual int64_t kv_block_size() const = 0;

  // Runs plan `plan`, whose batch the worker has built (token ids at stage 0), with `rows` the
  // sampled rows at the last stage. The backend takes the plan's activations from the previous
  // stage, runs its layers, sends the output on (or samples), and posts Tokens and StageTiming.
  // The env's check's status when it ends a wait (for activations or a free buffer).
  virtual Status run(const transport::Plan& plan, const model::Batch& batch,
                     std::span<const SampleRow> rows, int64_t arrived_us) = 0;
  // After a recovery: the next stage may listen elsewhere now. kUnimplemented where a link
  // cannot be re-formed.
  virtual Status relink(const StageLinks& links) = 0;
  // Waits at most `timeout` until everything run so far has been posted; false when work is
  // still queued then. An error the backend met meanwhile is returned by the next call.
  virtual bool drain(std::chrono::milliseconds timeout) = 0;
  // Gives up queued work without waiting for it (the worker is exiting with a neighbour gone):
  // nothing more is posted. Device work may never finish, so the caller must not destroy the
  // backend after abort(): it leaves it to the process's exit.
  virtual void abort() = 0;
};

// Loads `spec` onto its device (spec.device(): "cpu" or "cuda:N") and joins its links.
// Errors: a bad device or spec, a model that does not load, a link that cannot be joined.
Result<std::unique_ptr<StageBackend>> make_stage_backend(const StageSpec& spec,
                                                         const StageEnv& env);

// The two implementations (make_stage_backend picks by device).
Result<std::unique_ptr<StageBackend>> make_cpu_stage(const StageSpec& spec, const StageEnv& env);
Result<std::unique_ptr<StageBackend>> make_gpu_stage(const StageSpec& spec, const StageEnv& env);

// "cpu" -> -1; "cuda" -> 0; "cuda:N" -> N; kInvalidArgument otherwise.
Result<int> parse_device(const std::string& device);
// What a worker reports of its device in Hello: name, total and free memory. kUnimplemented for
// a GPU in a build without CUDA, kNotFound for a GPU that is not there.
Result<kernels::DeviceInfo> device_info(const std::string& device);

}  // namespace pp::pipeline
