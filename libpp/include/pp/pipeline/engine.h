// Engine: the asynchronous pipeline as a service inside pp-serve's process. start() brings up
// the stages (local pp-stage processes it spawns, or remote ones that connect to `listen`),
// loads the model on them, sizes the KV cache, and runs the coordinator on its own thread.
// Requests are then submitted from any thread and their events streamed to a sink.
//
//   auto engine = Engine::start(options);              // stages loaded, KV allocated
//   EventQueue q;
//   auto id = (*engine)->submit(prompt_ids, params, q.sink());
//   while (auto ev = q.pop(timeout)) { ... if (ev->event.kind == EventKind::kFinal) break; }
//   (*engine)->shutdown();                             // stages stopped, none left behind
//
// Threads: submit(), cancel(), stats(), health() and shutdown() are thread-safe and cheap: they
// hand a command to the coordinator thread (one thread owns all scheduling state) and return.
// Sinks are called on the coordinator thread, in order per request, and must not block (push to
// a queue, write to a non-blocking connection); a slow sink slows every request.
//
// Stage faults: a stage is lost when its process exits, its connection drops (a hung process
// stops answering the transport's heartbeats and is dropped within about a second), it is silent
// for stage_timeout, or it reports an error. The engine then recovers (health() says
// kUnavailable and recovering() true meanwhile; submits are still accepted and wait): every plan
// in flight is forgotten (late messages of those plans are ignored), every running request is
// requeued for recompute from its prompt and the tokens generated so far (streams pause; no
// token is repeated or lost, and sampling with (seed, step) continues identically), a local
// stage is killed and started again (stage_restarts in all per run), a remote one must rejoin
// within stage_timeout, and every stage allocates its KV pool afresh. Only when no restart is
// left, or a remote stage does not rejoin in time, does the engine fail: every live request gets
// a final event with finish_reason kAbort and the error, later submits are refused with
// kUnavailable, and health() says why.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pp/model/config.h"
#include "pp/model/quantization.h"
#include "pp/model/sampling-params.h"
#include "pp/model/tokenizer.h"
#include "pp/partition/planner.h"
#include "pp/pipeline/request.h"
#include "pp/pipeline/scheduler.h"
#include "pp/pipeline/trace.h"
#include "pp/status.h"
#include "pp/transport/messages.h"

namespace pp::pipeline {

class Coordinator;

struct EngineOptions {
  // --- the model and its split
  std::string model_path;  // a model (Hugging Face folder or .gguf) or a partition folder
  int32_t n_stages = 1;    // P; 0 with a partition folder: its number of stages
  // N: tensor-parallel ranks per stage, each a pp-stage process (P N workers in all); 0 with a
  // partition folder: its own.
  int32_t tp_size = 1;
  partition::Strategy strategy = partition::Strategy::kEven;  // for a model (not a partition)
  std::vector<partition::LayerRange> layers;  // explicit layer ranges (kManual), one per stage
  std::string layer_split;  // or as text, inclusive ranges "0-19,20-35" (parse_layer_ranges)

  // --- the device
  // "cpu", or "cuda": stage k on GPU gpus[k % gpus.size()] (gpus empty: every visible GPU).
  std::string device = "cpu";
  std::vector<int> gpus;
  double mem_fraction = 0.85;  // GPU: share of each device for weights, buffers and KV
  bool cuda_graphs = true;     // GPU: replay CUDA graphs for decode steps
  // model_path names a config (config.json or its folder); weights are random from this seed,
  // made on each stage (a real-size model without a download).
  std::optional<uint64_t> random_weights;
  // Quantize the weights as each stage loads them (`--quantization fp8`).
  model::Quantization quantization = model::Quantization::kNone;
  // CPU stages: GGUF block weights as stored (kAuto) or dequantized to f32 (`--cpu-dtype f32`).
  model::CpuDtype cpu_dtype = model::CpuDtype::kAuto;

  // --- scheduling
  int32_t async_depth = 1;  // D: M = P + D micro-batch groups in flight at most
  int32_t max_running_requests = 256;
  int32_t max_batch_tokens = 512;  // tokens per micro-batch at most (prefill chunk size)
  int32_t kv_block_size = 16;      // tokens per KV block
  int64_t kv_blocks = 0;           // KV blocks; 0: the minimum over the stages' capacity
  int64_t kv_memory = 0;           // bytes of KV per stage (used when kv_blocks is 0)
  std::optional<uint64_t> seed;    // seeds the seeds of requests without one
  // Chunked pipeline with dynamic chunking (SchedulerOptions::chunked_pipeline and
  // chunk_attention_tokens, the latter from the model): a long prompt's chunks follow each
  // other through the stages. false: one plan in flight per request, fixed chunks.
  bool chunked_pipeline = true;
  // Prefix caching (SchedulerOptions::enable_prefix_cache): a request reuses the KV of the
  // longest run of full blocks of its prompt already computed for another request.
  bool prefix_cache = true;
  // Structured output (grammar.h): false refuses requests with a grammar (kUnimplemented).
  bool structured_output = true;

  // --- stages
  // Empty: local stages over ipc:// in a private folder. "tcp://HOST:PORT": bind there (port 0
  // picks one); stages connect to it.
  std::string listen;
  bool launch_local_stages = true;     // false: wait for n_stages remote pp-stage processes
  std::filesystem::path stage_binary;  // empty: default_stage_binary()
  int32_t threads_per_stage = 0;       // compute threads of each stage (0: all cores)
  std::string stage_log_level = "warn";
  std::vector<std::string> stage_args;                 // extra arguments for local stages
  std::chrono::milliseconds register_timeout{120000};  // all stages ready within this
  // Heartbeat silence after which a stage is lost; also how long a lost remote stage has to
  // rejoin.
  std::chrono::milliseconds stage_timeout{5000};
  int32_t stage_restarts = 3;  // restarts of lost local stages allowed per run, all together
  // Called (on the coordinator thread) once the control socket is bound, with the endpoint the
  // stages connect to; pp-serve prints it when it waits for remote stages.
  std::function<void(const std::string& endpoint)> on_listening;

  // --- records
  std::filesystem::path trace_path;  // Chrome trace of every micro-batch, written at shutdown
  bool keep_timings = false;         // keep every StageTiming in memory (timings())
  // The run store: unset, nothing is recorded; an empty path is RunStore::default_path().
  std::optional<std::filesystem::path> db_path;
  std::string config_json;  // the server's whole configuration for the run store (JSON text)

  // --- text
  // The tokenizer used to stream text and match stop strings. Null: loaded from the model when
  // it has one (load_tokenizer), else requests stream token ids only.
  std::shared_ptr<const model::Tokenizer> tokenizer;
  bool load_tokenizer = true;
};

// What a request's sink receives: the scheduler's events. `error` is set on the final event of
// a request the engine could not run (the engine failed, or the request was refused after
// submit() accepted it).
struct EngineEvent {
  RequestEvent event;
  Status error;
};
using EventSink = std::function<void(EngineEvent&&)>;

// A thread-safe queue of events: the simplest sink (one per request, or shared by several).
class EventQueue {
 public:
  void push(EngineEvent&& e);
  // The next event, waiting at most `timeout`; empty on timeout.
  std::optional<EngineEvent> pop(std::chrono::milliseconds timeout);
  // A sink pushing into this queue (the queue must outlive the request).
  EventSink sink() {
    return [this](EngineEvent&& e) { push(std::move(e)); };
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EngineEvent> events_;
};

// One stage as it registered (with tensor parallelism: its rank 0, and every rank's device).
struct StageInfo {
  int32_t stage = 0;
  std::vector<std::string> devices;  // one per rank
  std::string host;
  int32_t pid = 0;
  std::string device, device_name;
  std::string data_endpoint;  // where it receives activations
  int64_t layer_begin = 0, layer_end = 0;
  int64_t kv_blocks_capacity = 0;  // what the stage said fits
  int64_t kv_bytes_per_block = 0;
  double load_seconds = 0;
};

struct EngineStats {
  SchedulerStats scheduler;
  std::vector<StageBusy> stages;     // compute time per stage since start (index = stage)
  int64_t n_submitted = 0;           // requests accepted by submit()
  std::vector<int32_t> stage_pids;   // the stages' processes now (index = stage; 0 while lost)
                                     // (with tensor parallelism: each stage's rank 0)
  std::vector<int32_t> worker_pids;  // every rank's process (index = stage N + rank)
  int32_t n_stage_restarts = 0;      // local stages restarted since start
  int32_t n_recoveries = 0;          // recoveries from lost stages since start (begun)
  bool recovering = false;           // recovering from a lost stage now
  double uptime_s = 0;
};

class Engine {
 public:
  // Starts the stages, waits until every one has loaded its layers and allocated its KV pool.
  // Errors: a bad model or options, a stage that fails to start or load, a timeout.
  static Result<std::unique_ptr<Engine>> start(EngineOptions options);
  ~Engine();  // shutdown()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id at once. Checked here: the parameters, the prompt (not
  // empty, ids in the vocabulary, fits the context with max_tokens), that its context fits the
  // KV pool. kUnavailable once the engine has failed or is shutting down. `sink` receives the
  // request's events, the last one of kind kFinal.
  Result<uint64_t> submit(std::vector<int32_t> prompt_ids, model::SamplingParams params,
                          EventSink sink);
  // Cancels a request (its final event says kAbort). Unknown or finished ids are ignored.
  void cancel(uint64_t id);
  // Empties the prefix cache (every cached block becomes free) and waits for it to be done.
  // kFailedPrecondition, changing nothing, while any request is waiting or running;
  // kUnavailable once the engine has stopped or failed. Ok (a no-op) with caching off.
  Status flush_cache();

  EngineStats stats() const;
  // Ok while the engine runs; the reason while it recovers from a lost stage, or once it has
  // failed or was shut down.
  Status health() const;
  // True while the engine recovers from a lost stage (health() is then not ok, but requests are
  // still accepted: they wait).
  bool recovering() const;
  // Stops the stages (aborting live requests), waits for local stage processes to exit, writes
  // the trace and ends the serving run. Idempotent. Returns the engine's failure, if it failed.
  Status shutdown();

  const model::ModelConfig& model_config() const;
  const model::Tokenizer* tokenizer() const;
  const std::vector<StageInfo>& stages() const;
  int64_t kv_blocks() const;
  int32_t kv_block_size() const;  // tokens per KV block
  int32_t n_groups() const;
  const std::string& endpoint() const;  // where the stages connected
  // Every StageTiming received so far (with keep_timings or a trace path; else empty).
  std::vector<transport::StageTiming> timings() const;

 private:
  Engine() = default;
  std::unique_ptr<Coordinator> coordinator_;
};

}  // namespace pp::pipeline
