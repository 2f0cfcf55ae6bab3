// Coordinator: the one thread that owns the pipeline's scheduling state (DESIGN.md, "The
// in-flight ring, precisely"). Engine is its public face; this header is private to libpp.
//
// Start-up, on the coordinator thread: resolve the model and its split (model-resolver.h), bind
// the control socket, begin the run's record (run-recorder.h), spawn the local stages (so that
// they die with this thread, see launcher.h), then form the pipeline (coordinator-stages.cpp):
// admit stages (Hello, stage-registry.h), assign layers, the stage's device group and the next
// stage's endpoint (Assign), collect what each can hold (Loaded), size the KV pool as the
// minimum over stages (AllocateKv), wait for Ready. Recovery forms the pipeline again by the
// same path.
//
// The loop, until shutdown or failure:
//   1. take what has arrived: sampled tokens of a group (applied: tokens appended, stop checks,
//      finished requests' blocks freed), stage timings, errors and disconnects, then the
//      commands of other threads (submit, cancel, stop);
//   2. fill and issue every idle group, the longest idle first (Scheduler::build_plan), sending
//      each plan to every stage at once: token ids only to stage 0, sampling, penalty ids
//      and grammar masks only to the last stage;
//   3. hand the scheduler's events to the requests' sinks;
//   4. heartbeats to every stage; a stage silent for stage_timeout, or whose connection or
//      process is gone, or that reported an error, is lost: recover() (coordinator-stages.cpp).
// Groups: M = P + async depth. Plans carry increasing seq numbers; every stage runs them in
// that order, which is what pairs the stages' sends and receives.
//
// Recovery from lost stages, on the coordinator thread (new plans wait; commands are still
// taken): the scheduler forgets every plan in flight and requeues every running request for
// recompute (Scheduler::preempt_all); plans below live_seq_ are stale from then on, and their
// tokens, timings and activations are ignored (stages drop stale activations by seq). A lost
// local stage is killed (a hung one too) and spawned again for the same index, while restarts
// are left; a lost remote stage must send Hello again within stage_timeout. New stages get an
// Assign; survivors whose next stage now listens elsewhere get an Assign again (they keep their
// layers and only reconnect). Then every stage gets AllocateKv (all KV is dropped; a stage
// drops the plans it has not run and gives up the one waiting for activations), and the loop
// goes on once every stage is Ready. A stage lost meanwhile starts that round again.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include "pp/partition/model-resolver.h"
#include "pp/pipeline/engine.h"
#include "pp/pipeline/grammar.h"
#include "pp/pipeline/launcher.h"
#include "pp/pipeline/scheduler.h"
#include "pp/pipeline/trace.h"
#include "pp/transport/channel.h"
#include "run-recorder.h"
#include "stage-registry.h"

namespace pp::pipeline {

class Coordinator {
 public:
  explicit Coordinator(EngineOptions options);
  ~Coordinator();  // stop() and join
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Runs the start-up on a new coordinator thread and waits for its outcome; on success the
  // thread goes on with the loop. Call once.
  Status start();

  // Thread-safe commands; they take effect on the coordinator thread.
  Result<uint64_t> submit(std::vector<int32_t> prompt_ids, model::SamplingParams params,
                          EventSink sink);
  void cancel(uint64_t id);
  // Engine::flush_cache: waits for the coordinator thread's answer.
  Status flush_cache();
  // Stops the loop (live requests are aborted), tears down and joins. Idempotent.
  Status stop();

  EngineStats stats() const;
  Status health() const;
  bool recovering() const;
  std::vector<transport::StageTiming> timings() const;

  // Fixed once start() has succeeded.
  const model::ModelConfig& config() const { return config_; }
  const model::Tokenizer* tokenizer() const { return tokenizer_.get(); }
  const std::vector<StageInfo>& stage_infos() const { return stage_infos_; }
  int64_t kv_blocks() const { return n_blocks_; }
  int32_t kv_block_size() const { return options_.kv_block_size; }
  int32_t n_groups() const { return options_.n_stages + options_.async_depth; }
  const std::string& endpoint() const { return endpoint_; }

 private:
  struct SubmitCommand {
    uint64_t id;
    std::vector<int32_t> prompt_ids;
    model::SamplingParams params;
    EventSink sink;
    double arrival_s;
    std::unique_ptr<GrammarMatcher> grammar;  // with params.grammar active
  };
  struct CancelCommand {
    uint64_t id;
  };
  struct FlushCommand {
    std::shared_ptr<std::promise<Status>> done;
  };
  using Command = std::variant<SubmitCommand, CancelCommand, FlushCommand>;

  struct Lost {
    int32_t stage;
    std::string why;
  };

  // The grammar compiler, made on first use (any thread; it is thread-safe).
  Result<GrammarCompiler*> grammar_compiler();

  // --- coordinator thread
  void thread_main(std::promise<Status>* started);
  Status resolve_model();
  Status bring_up();
  Status choose_kv_blocks();
  void loop();
  Status handle_message(const transport::Incoming& in);
  void handle_commands();
  void issue_plans();
  void send_plan(const transport::Plan& plan);
  void dispatch_events();
  Status check_stages();
  void send_heartbeats();
  void fail(Status s);
  void abort_all(const Status& why);
  void teardown();
  void publish_stats();

  // --- the stages: registration, assignment, loss and recovery (coordinator-stages.cpp)
  enum class Phase { kStart, kRecover };
  Status form_pipeline(Phase phase);
  Status handle_registration_message(const transport::Incoming& in, Phase phase, bool allocated);
  void admit_stage(const transport::PeerId& peer, const transport::Hello& hello, Phase phase);
  // By worker slot w (stage w / N, rank w % N; stage-registry.h).
  StageLaunch local_launch(int32_t w) const;
  Status send_assign(int32_t w);
  Status gpu_links(int32_t w, transport::Assign& a);
  std::string next_endpoint(int32_t w) const;
  void publish_stage_pids();
  void note_lost(int32_t stage, std::string why);
  Status take_losses();
  Status lose_stage(int32_t stage, const std::string& why);
  Status recover();

  EngineOptions options_;
  std::vector<std::string> nccl_ids_;     // link k N + r: stage k rank r -> k+1 (GPU pipelines)
  std::vector<std::string> tp_nccl_ids_;  // stage k's tensor-parallel group (GPU, N > 1)
  std::thread thread_;
  std::atomic<bool> started_{false};
  std::atomic<uint64_t> next_id_{1};
  std::chrono::steady_clock::time_point start_time_;

  // Fixed after start-up.
  model::ModelConfig config_;
  std::shared_ptr<const model::Tokenizer> tokenizer_;
  std::vector<partition::LayerRange> layers_;
  partition::ResolvedModel model_;
  std::filesystem::path ipc_dir_;
  std::string endpoint_;
  std::vector<StageInfo> stage_infos_;
  int64_t n_blocks_ = 0;

  // Coordinator thread only.
  std::optional<transport::ControlServer> server_;
  std::vector<StageProcess> processes_;  // by worker slot
  StageRegistry stages_;
  std::unique_ptr<Scheduler> scheduler_;
  RunRecorder recorder_;
  TraceRecorder trace_{0};
  std::unordered_map<uint64_t, EventSink> sinks_;
  std::vector<PlanSpan> in_flight_;  // per group: the plan in flight
  std::vector<RequestEvent> events_;
  std::vector<int32_t> idle_;
  transport::Plan plan_;
  std::chrono::steady_clock::time_point next_heartbeat_;
  int64_t preemptions_recorded_ = 0;
  std::vector<Lost> lost_;  // stages found lost, not yet handled
  int32_t n_restarts_ = 0;  // local stages restarted in this run
  uint64_t next_seq_ = 0;   // one past the seq of the last plan issued
  uint64_t live_seq_ = 0;   // plans below this were forgotten by a recovery
  struct Busy {
    int64_t first_us = 0, last_us = 0, compute_us = 0, n = 0;
  };
  std::vector<Busy> busy_;

  // Made once, by the first request with a grammar (on its thread).
  std::once_flag grammar_once_;
  std::unique_ptr<GrammarCompiler> grammar_compiler_;
  Status grammar_status_;

  // Shared with other threads (under mu_).
  mutable std::mutex mu_;
  std::deque<Command> commands_;
  bool stopping_ = false;   // stop() called
  bool closed_ = false;     // no more commands accepted
  std::string recovering_;  // while recovering: why (the stages lost)
  Status failure_;
  EngineStats stats_;
  std::vector<transport::StageTiming> timings_;
  transport::Waker waker_;
};

}  // namespace pp::pipeline
