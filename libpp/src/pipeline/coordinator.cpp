// The coordinator thread: start-up of the stages, then the loop of the in-flight ring (see
// coordinator.h). Everything named *_ without a lock below is touched by that thread only.
#include "coordinator.h"

#include <stdlib.h>

#include <algorithm>
#include <csignal>
#include <future>

#include <spdlog/spdlog.h>

#include "pp/assert.h"
#include "pp/model/tensor-parallel.h"
#include "pp/partition/model-resolver.h"

namespace pp::pipeline {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kPollInterval{50};

// The plan as stage `k` of `n` needs it: token ids only at stage 0; sampling and penalty ids
// only at the last stage.
transport::Plan plan_for_stage(const transport::Plan& plan, int32_t k, int32_t n) {
  transport::Plan p = plan;
  for (transport::PlanEntry& e : p.entries) {
    if (k != 0) e.token_ids.clear();
    if (k != n - 1) {
      e.sampling = transport::WireSampling{};
      e.penalty_prompt_ids.clear();
      e.penalty_output_ids.clear();
      e.allowed_tokens.clear();  // the grammar mask is the last stage's sampler's
    }
  }
  return p;
}

}  // namespace

Coordinator::Coordinator(EngineOptions options) : options_(std::move(options)) {}

Coordinator::~Coordinator() { (void)stop(); }

// ---------------------------------------------------------------------------------------------
// Start-up

Status Coordinator::start() {
  PP_ASSERT_MSG(!started_.exchange(true), "Coordinator::start called twice");
  start_time_ = Clock::now();
  std::promise<Status> started;
  std::future<Status> result = started.get_future();
  thread_ = std::thread([this, &started] { thread_main(&started); });
  Status s = result.get();
  if (!s.ok()) {
    thread_.join();
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  return s;
}

void Coordinator::thread_main(std::promise<Status>* started) {
  Status s = resolve_model();
  if (s.ok()) s = bring_up();
  if (!s.ok()) {
    {
      std::lock_guard lock(mu_);
      failure_ = s;
    }
    teardown();
    started->set_value(s);
    return;
  }
  publish_stats();
  started->set_value(ok_status());
  loop();
  teardown();
}

Status Coordinator::resolve_model() {
  if (options_.async_depth < 0) {
    return invalid_argument("async depth must be 0 or more, not {}", options_.async_depth);
  }
  if (options_.n_stages < 0) return invalid_argument("bad stage count {}", options_.n_stages);
  PP_ASSIGN_OR_RETURN(model_, partition::resolve_model(options_.model_path,
                                                       {.random_weights = options_.random_weights,
                                                        .quantization = options_.quantization,
                                                        .cpu_dtype = options_.cpu_dtype}));
  config_ = model_.config();
  layers_ = model_.fixed_layers();
  if (!layers_.empty()) {
    // A partition fixes its stage count and split.
    const int32_t n = int32_t(layers_.size());
    if (options_.n_stages == 0) options_.n_stages = n;
    if (options_.n_stages != n) {
      return invalid_argument("partition '{}' has {} stages, not {}", model_.path().string(), n,
                              options_.n_stages);
    }
    if (!options_.layers.empty() && options_.layers != layers_) {
      return invalid_argument("partition '{}' fixes its layer split; it cannot be changed",
                              model_.path().string());
    }
  } else {
    if (options_.n_stages == 0) options_.n_stages = 1;
    // A split given as text is parsed now that the config (its layer count) is known.
    if (!options_.layer_split.empty() && options_.layers.empty()) {
      PP_ASSIGN_OR_RETURN(
          options_.layers,
          partition::parse_layer_ranges(options_.layer_split, config_.n_layer, options_.n_stages));
    }
    partition::PlanOptions po;
    po.n_stages = options_.n_stages;
    po.strategy = options_.layers.empty() ? options_.strategy : partition::Strategy::kManual;
    po.layers = options_.layers;
    po.dtype = model_.plan_dtype();
    PP_ASSIGN_OR_RETURN(partition::Plan plan, partition::make_plan(config_, po));
    for (const partition::StagePlan& sp : plan.stages) layers_.push_back(sp.layers);
  }
  tokenizer_ = options_.tokenizer;
  if (!tokenizer_ && options_.load_tokenizer && model_.has_tokenizer()) {
    PP_ASSIGN_OR_RETURN(tokenizer_, model_.load_tokenizer());
  }
  const int32_t P = options_.n_stages;
  if (P < 1 || int64_t(layers_.size()) != P) {
    return invalid_argument("cannot split the model into {} stages", P);
  }
  // A partition written for tensor parallelism fixes its group size too.
  const int32_t fixed_tp = model_.fixed_tp();
  if (options_.tp_size == 0) options_.tp_size = std::max(fixed_tp, 1);
  if (fixed_tp > 0 && options_.tp_size != fixed_tp) {
    return invalid_argument("partition '{}' was written for {} tensor-parallel ranks, not {}",
                            model_.path().string(), fixed_tp, options_.tp_size);
  }
  // Every rank must have a share of the heads: the split's rules, checked before any stage
  // starts.
  PP_RETURN_IF_ERROR(model::tp_layout(config_, {0, options_.tp_size}).status());
  return ok_status();
}

Status Coordinator::bring_up() {
  const int32_t P = options_.n_stages;
  if (options_.max_batch_tokens < 1 || options_.max_running_requests < 1 ||
      options_.kv_block_size < 1) {
    return invalid_argument(
        "max batch tokens, max running requests and block size must be "
        "positive");
  }
  // The control socket.
  std::string bind_at = options_.listen;
  if (bind_at.empty()) {
    std::string tmpl = (fs::temp_directory_path() / "pp-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) {
      return internal_error("cannot create a folder for the stages' sockets in '{}'",
                            fs::temp_directory_path().string());
    }
    ipc_dir_ = tmpl;
    bind_at = "ipc://" + (ipc_dir_ / "control").string();
  }
  PP_ASSIGN_OR_RETURN(auto server, transport::ControlServer::bind(bind_at));
  server_.emplace(std::move(server));
  endpoint_ = server_->endpoint();
  {
    std::lock_guard lock(mu_);
    waker_ = server_->waker();
  }
  if (options_.on_listening) options_.on_listening(endpoint_);

  // The run's record.
  ServingRunRecord run;
  run.config_json = options_.config_json.empty() ? "{}" : options_.config_json;
  run.model = model_.path().string();
  run.pp = P;
  run.async_depth = options_.async_depth;
  recorder_ = RunRecorder::begin(options_.db_path, run);

  // Local stages, then the pipeline.
  stages_ = StageRegistry(P, options_.tp_size);
  if (options_.launch_local_stages) {
    for (int32_t w = 0; w < stages_.size(); ++w) {
      PP_ASSIGN_OR_RETURN(StageProcess p, StageProcess::spawn(local_launch(w)));
      processes_.push_back(std::move(p));
    }
  }
  PP_RETURN_IF_ERROR(form_pipeline(Phase::kStart));

  for (int32_t k = 0; k < P; ++k) {
    const StageSlot& s = stages_[stages_.worker(k, 0)];
    StageInfo info;
    info.stage = k;
    for (int32_t r = 0; r < stages_.tp(); ++r) {
      info.devices.push_back(stages_[stages_.worker(k, r)].hello.device);
    }
    info.host = s.hello.host;
    info.pid = s.hello.pid;
    info.device = s.hello.device;
    info.device_name = s.hello.device_name;
    info.data_endpoint = s.hello.data_endpoint;
    info.layer_begin = layers_[size_t(k)].begin;
    info.layer_end = layers_[size_t(k)].end;
    info.kv_blocks_capacity = s.loaded->kv_blocks_capacity;
    info.kv_bytes_per_block = s.loaded->kv_bytes_per_block;
    info.load_seconds = s.loaded->load_seconds;
    stage_infos_.push_back(info);
  }

  SchedulerOptions so;
  so.n_groups = P + options_.async_depth;
  so.max_running_requests = options_.max_running_requests;
  so.max_batch_tokens = options_.max_batch_tokens;
  so.block_size = options_.kv_block_size;
  so.n_blocks = int32_t(n_blocks_);
  so.max_context = config_.max_context();
  so.n_vocab = config_.n_vocab;
  so.eos_ids = config_.eos_token_ids;
  if (so.eos_ids.empty() && tokenizer_ && tokenizer_->eos_id()) {
    so.eos_ids.push_back(*tokenizer_->eos_id());
  }
  so.seed = options_.seed;
  so.chunked_pipeline = options_.chunked_pipeline;
  so.chunk_attention_tokens = options_.chunked_pipeline ? chunk_attention_tokens_for(config_) : 0;
  so.enable_prefix_cache = options_.prefix_cache;
  PP_RETURN_IF_ERROR(so.validate());
  scheduler_ = std::make_unique<Scheduler>(so, tokenizer_.get());
  in_flight_.assign(size_t(so.n_groups), PlanSpan{});
  busy_.assign(size_t(P), Busy{});
  publish_stage_pids();
  trace_ = TraceRecorder(P);
  spdlog::info(
      "pipeline ready: {} stages, {} groups, {} KV blocks of {} tokens, chunked pipeline {}, "
      "prefix cache {}",
      P, so.n_groups, n_blocks_, options_.kv_block_size, so.chunked_pipeline ? "on" : "off",
      so.enable_prefix_cache ? "on" : "off");
  return ok_status();
}

// ---------------------------------------------------------------------------------------------
// Commands from other threads

Result<uint64_t> Coordinator::submit(std::vector<int32_t> prompt_ids, model::SamplingParams params,
                                     EventSink sink) {
  {
    std::lock_guard lock(mu_);
    if (closed_ || stopping_) {
      return failure_.ok() ? make_error(StatusCode::kUnavailable, "the engine is shutting down")
                           : make_error(StatusCode::kUnavailable, "the engine has failed: {}",
                                        failure_.message());
    }
  }
  // What can be checked here is checked here, so that the caller hears of it at once.
  const int64_t V = config_.n_vocab, ctx = config_.max_context(), n = int64_t(prompt_ids.size());
  PP_RETURN_IF_ERROR(params.validate(V));
  if (n == 0) return invalid_argument("empty prompt");
  for (int32_t t : prompt_ids) {
    if (t < 0 || t >= V) {
      return make_error(StatusCode::kOutOfRange,
                        "prompt token id {} is outside the vocabulary [0, {})", t, V);
    }
  }
  if (!params.stop.empty() && !tokenizer_) {
    return invalid_argument("stop strings need a tokenizer, and this model has none");
  }
  // Prompt + max_tokens against the context and the whole KV pool (known since AllocateKv): a
  // request that could never fit is refused here, never queued to wait forever.
  PP_RETURN_IF_ERROR(
      resolve_max_tokens(n, params.max_tokens, ctx, n_blocks_, options_.kv_block_size).status());
  // Structured output: compiled here, on the caller's thread (it can take milliseconds), so a bad
  // grammar is refused at once and the coordinator thread never waits for a compile.
  std::unique_ptr<GrammarMatcher> grammar;
  if (params.grammar.active()) {
    PP_ASSIGN_OR_RETURN(GrammarCompiler * compiler, grammar_compiler());
    PP_ASSIGN_OR_RETURN(grammar, compiler->compile(params.grammar));
  }
  const uint64_t id = next_id_.fetch_add(1);
  const double arrival = std::chrono::duration<double>(Clock::now() - start_time_).count();
  transport::Waker waker;
  {
    std::lock_guard lock(mu_);
    if (closed_ || stopping_) {
      return make_error(StatusCode::kUnavailable, "the engine is shutting down");
    }
    commands_.push_back(SubmitCommand{id, std::move(prompt_ids), std::move(params), std::move(sink),
                                      arrival, std::move(grammar)});
    ++stats_.n_submitted;
    waker = waker_;
  }
  waker.wake();
  return id;
}

Result<GrammarCompiler*> Coordinator::grammar_compiler() {
  std::call_once(grammar_once_, [&] {
    if (!options_.structured_output) {
      grammar_status_ = make_error(StatusCode::kUnimplemented,
                                   "structured output is off on this server (--grammar-backend "
                                   "none)");
      return;
    }
    if (!tokenizer_) {
      grammar_status_ =
          invalid_argument("structured output needs a tokenizer, and this model has none");
      return;
    }
    std::vector<int32_t> stops = config_.eos_token_ids;
    if (stops.empty() && tokenizer_->eos_id()) stops.push_back(*tokenizer_->eos_id());
    Result<std::unique_ptr<GrammarCompiler>> c =
        GrammarCompiler::create(*tokenizer_, config_.n_vocab, std::move(stops));
    if (c.ok()) {
      grammar_compiler_ = std::move(*c);
    } else {
      grammar_status_ = c.status();
    }
  });
  if (!grammar_compiler_) return grammar_status_;
  return grammar_compiler_.get();
}

void Coordinator::cancel(uint64_t id) {
  transport::Waker waker;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    commands_.push_back(CancelCommand{id});
    waker = waker_;
  }
  waker.wake();
}

Status Coordinator::flush_cache() {
  auto done = std::make_shared<std::promise<Status>>();
  std::future<Status> result = done->get_future();
  transport::Waker waker;
  {
    std::lock_guard lock(mu_);
    if (closed_ || stopping_) return make_error(StatusCode::kUnavailable, "the engine has stopped");
    commands_.push_back(FlushCommand{std::move(done)});
    waker = waker_;
  }
  waker.wake();
  return result.get();  // the loop or the teardown answers every command it takes
}

Status Coordinator::stop() {
  if (!started_.load()) return ok_status();
  transport::Waker waker;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    waker = waker_;
  }
  waker.wake();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mu_);
  return failure_;
}

EngineStats Coordinator::stats() const {
  std::lock_guard lock(mu_);
  EngineStats s = stats_;
  s.uptime_s = std::chrono::duration<double>(Clock::now() - start_time_).count();
  return s;
}

Status Coordinator::health() const {
  std::lock_guard lock(mu_);
  if (!failure_.ok()) return failure_;
  if (closed_ || stopping_) return make_error(StatusCode::kUnavailable, "the engine has stopped");
  if (!recovering_.empty()) {
    return make_error(StatusCode::kUnavailable, "recovering: {}", recovering_);
  }
  return ok_status();
}

bool Coordinator::recovering() const {
  std::lock_guard lock(mu_);
  return failure_.ok() && !closed_ && !recovering_.empty();
}

std::vector<transport::StageTiming> Coordinator::timings() const {
  std::lock_guard lock(mu_);
  return timings_;
}

// ---------------------------------------------------------------------------------------------
// The loop

void Coordinator::handle_commands() {
  std::deque<Command> commands;
  {
    std::lock_guard lock(mu_);
    commands.swap(commands_);
  }
  for (Command& c : commands) {
    if (auto* s = std::get_if<SubmitCommand>(&c)) {
      Status st = scheduler_->submit(s->id, std::move(s->prompt_ids), std::move(s->params),
                                     s->arrival_s, std::move(s->grammar));
      if (!st.ok()) {
        RequestEvent e;
        e.request_id = s->id;
        e.kind = EventKind::kFinal;
        e.finish_reason = FinishReason::kAbort;
        if (s->sink) s->sink(EngineEvent{std::move(e), st});
        continue;
      }
      sinks_[s->id] = std::move(s->sink);
    } else if (auto* f = std::get_if<FlushCommand>(&c)) {
      // As SGLang: only with nothing queued or running (a waiting request may be about to hit).
      if (scheduler_->has_work()) {
        f->done->set_value(make_error(StatusCode::kFailedPrecondition,
                                      "cannot flush the cache while requests are waiting or "
                                      "running"));
      } else {
        const bool flushed = scheduler_->flush_prefix_cache();
        PP_ASSERT(flushed);  // nothing runs, so nothing holds a block
        if (scheduler_->kv_cache().caching()) spdlog::info("prefix cache flushed");
        publish_stats();  // so that stats() after flush_cache() shows the empty cache
        f->done->set_value(ok_status());
      }
    } else {
      (void)scheduler_->cancel(std::get<CancelCommand>(c).id);  // unknown ids are fine
    }
  }
}

// A plan that cannot reach a stage (its process died a moment ago: the socket says the peer is
// unreachable) loses that stage; the recovery that follows forgets this plan on every stage.
void Coordinator::send_plan(const transport::Plan& plan) {
  const int32_t P = options_.n_stages;
  for (int32_t k = 0; k < P; ++k) {
    // Every rank of a stage runs the stage's plan.
    std::optional<transport::Plan> part;
    if (P > 1) part = plan_for_stage(plan, k, P);
    for (int32_t r = 0; r < stages_.tp(); ++r) {
      Status s = server_->send(stages_[stages_.worker(k, r)].peer, part ? *part : plan);
      if (!s.ok()) note_lost(k, fmt::format("cannot send plan {}: {}", plan.seq, s.message()));
    }
  }
}

void Coordinator::issue_plans() {
  scheduler_->set_now(std::chrono::duration<double>(Clock::now() - start_time_).count());
  scheduler_->idle_groups(&idle_);
  for (int32_t g : idle_) {
    if (!lost_.empty()) break;  // a recovery comes first
    if (!scheduler_->build_plan(g, &plan_)) continue;
    int32_t n_tokens = 0;
    for (const transport::PlanEntry& e : plan_.entries) n_tokens += e.n_new;
    in_flight_[size_t(g)] = PlanSpan{plan_.seq, g, n_tokens, trace_now_us(), 0};
    next_seq_ = plan_.seq + 1;
    send_plan(plan_);
  }
}

Status Coordinator::handle_message(const transport::Incoming& in) {
  const int32_t k = stages_.stage_of(in.peer);
  if (in.event == transport::PeerEvent::kDisconnected) {
    if (k >= 0) note_lost(k, "connection dropped");
    return ok_status();
  }
  const transport::Message& m = in.message;
  if (const auto* t = std::get_if<transport::Tokens>(&m)) {
    // From a stage lost meanwhile, or of a plan a recovery forgot: stale.
    if (k < 0 || t->seq < live_seq_) return ok_status();
    if (t->group >= 0 && size_t(t->group) < in_flight_.size()) {
      PlanSpan& span = in_flight_[size_t(t->group)];
      if (span.seq == t->seq) {
        span.returned_us = trace_now_us();
        if (!options_.trace_path.empty()) trace_.add(span);
      }
    }
    return scheduler_->apply_tokens(*t).with_context("tokens from the last stage");
  }
  if (const auto* t = std::get_if<transport::StageTiming>(&m)) {
    if (k < 0 || t->seq < live_seq_) return ok_status();
    if (t->stage >= 0 && size_t(t->stage) < busy_.size()) {
      Busy& b = busy_[size_t(t->stage)];
      if (b.n == 0) b.first_us = t->start_us;
      b.last_us = std::max(b.last_us, t->end_us);
      b.compute_us += t->end_us - t->start_us;
      ++b.n;
    }
    if (!options_.trace_path.empty()) trace_.add(*t);
    if (options_.keep_timings) {
      std::lock_guard lock(mu_);
      timings_.push_back(*t);
    }
    return ok_status();
  }
  if (const auto* e = std::get_if<transport::StageError>(&m)) {
    // The stage stops after an error: it is lost (and restarted while restarts are left).
    if (k >= 0) note_lost(k, fmt::format("failed on plan {}: {}", e->seq, e->message));
    return ok_status();
  }
  if (const auto* h = std::get_if<transport::Hello>(&m)) {
    if (k < 0) {
      spdlog::warn("refusing a stage from '{}' (pid {}): the pipeline is complete", h->host,
                   h->pid);
      (void)server_->send(in.peer, transport::Shutdown{"the pipeline is complete"});
    }
  }
  return ok_status();  // heartbeats (last_seen is kept by the server), late stragglers
}

void Coordinator::dispatch_events() {
  scheduler_->take_events(&events_);
  for (RequestEvent& e : events_) {
    auto it = sinks_.find(e.request_id);
    if (it == sinks_.end()) continue;
    const bool final = e.kind == EventKind::kFinal;
    if (it->second) it->second(EngineEvent{std::move(e), {}});
    if (final) sinks_.erase(it);
  }
  events_.clear();
}

Status Coordinator::check_stages() {
  for (StageProcess& p : processes_) {
    if (auto exit = p.poll()) note_lost(p.stage(), fmt::format("pid {} {}", p.pid(), *exit));
  }
  for (const transport::PeerId& peer : server_->silent_peers(options_.stage_timeout)) {
    const int32_t k = stages_.stage_of(peer);
    if (k >= 0) {
      note_lost(k, fmt::format("no heartbeat for {} ms", options_.stage_timeout.count()));
    }
  }
  send_heartbeats();
  return ok_status();
}

void Coordinator::publish_stats() {
  std::lock_guard lock(mu_);
  if (scheduler_) stats_.scheduler = scheduler_->stats();
  stats_.stages.resize(busy_.size());
  for (size_t k = 0; k < busy_.size(); ++k) {
    StageBusy& s = stats_.stages[k];
    s.stage = int32_t(k);
    s.n_micro_batches = busy_[k].n;
    s.compute_s = double(busy_[k].compute_us) * 1e-6;
    s.wall_s = busy_[k].n > 0 ? double(busy_[k].last_us - busy_[k].first_us) * 1e-6 : 0.0;
  }
}

void Coordinator::abort_all(const Status& why) {
  for (auto& [id, sink] : sinks_) {
    RequestEvent e;
    e.request_id = id;
    e.kind = EventKind::kFinal;
    e.finish_reason = FinishReason::kAbort;
    if (scheduler_) {
      if (const Request* r = scheduler_->find(id)) {
        e.n_prompt_tokens = r->n_prompt();
        e.n_output_tokens = r->n_generated();
        e.n_preemptions = r->n_preemptions;
      }
    }
    if (sink) sink(EngineEvent{std::move(e), why});
  }
  sinks_.clear();
}

void Coordinator::fail(Status s) {
  spdlog::error("pipeline failed: {}", s.message());
  {
    std::lock_guard lock(mu_);
    if (failure_.ok()) failure_ = s;
    closed_ = true;
    recovering_.clear();
    stats_.recovering = false;
  }
  abort_all(s);
}

void Coordinator::loop() {
  next_heartbeat_ = Clock::now();
  for (;;) {
    // 1. What has arrived: messages first (tokens free blocks), then the callers' commands.
    bool failed = false;
    for (bool first = true;; first = false) {
      auto got = server_->receive(first ? kPollInterval : milliseconds(0));
      if (!got.ok()) {
        fail(got.status());
        failed = true;
        break;
      }
      if (!got->has_value()) break;
      if (Status s = handle_message(**got); !s.ok()) {
        fail(s);
        failed = true;
        break;
      }
    }
    if (failed) return;
    if (!lost_.empty()) {
      if (Status s = recover(); !s.ok()) {
        fail(s);
        return;
      }
    }
    {
      std::lock_guard lock(mu_);
      if (stopping_) break;
    }
    handle_commands();
    // 2. Fill and issue every idle group.
    issue_plans();
    // 3. Stream out (stats first, so that a caller seeing a final event sees its blocks freed).
    const int64_t n_preempted = scheduler_->stats().n_preemptions;
    if (n_preempted > preemptions_recorded_) {
      recorder_.event("preemption", std::nullopt,
                      fmt::format("{} requests preempted for recompute (KV cache full)",
                                  n_preempted - preemptions_recorded_));
      preemptions_recorded_ = n_preempted;
    }
    publish_stats();
    dispatch_events();
    // 4. Are the stages alive?
    if (Status s = check_stages(); !s.ok()) {
      fail(s);
      return;
    }
  }
  abort_all(make_error(StatusCode::kCancelled, "the engine shut down"));
}

void Coordinator::teardown() {
  // No more commands; refuse those that came too late.
  std::deque<Command> late;
  Status why, failure;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    late.swap(commands_);
    failure = failure_;
    why = failure_.ok() ? make_error(StatusCode::kCancelled, "the engine shut down") : failure_;
  }
  for (Command& c : late) {
    if (auto* f = std::get_if<FlushCommand>(&c)) f->done->set_value(why);
    if (auto* s = std::get_if<SubmitCommand>(&c); s && s->sink) {
      RequestEvent e;
      e.request_id = s->id;
      e.kind = EventKind::kFinal;
      e.finish_reason = FinishReason::kAbort;
      s->sink(EngineEvent{std::move(e), why});
    }
  }
  abort_all(why);

  // Stop the stages and wait for them.
  if (server_) {
    for (int32_t k = 0; k < stages_.size(); ++k) {
      if (stages_[k].joined()) {
        (void)server_->send(stages_[k].peer, transport::Shutdown{"the coordinator is stopping"});
      }
    }
  }
  const Clock::time_point deadline = Clock::now() + milliseconds(5000);
  for (StageProcess& p : processes_) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (!p.wait(std::max(left, milliseconds(0)))) {
      spdlog::warn("stage {} (pid {}) did not stop; killing it", p.stage(), p.pid());
      p.signal(SIGKILL);
      p.wait(milliseconds(2000));
    }
  }
  if (!processes_.empty()) {
    processes_.clear();
  } else if (server_) {
    // Remote stages: give the Shutdown a moment to leave before the socket closes.
    const Clock::time_point until = Clock::now() + milliseconds(300);
    while (Clock::now() < until) (void)server_->receive(milliseconds(50));
  }

  if (!options_.trace_path.empty() && scheduler_) {
    if (Status s = trace_.write(options_.trace_path); !s.ok()) spdlog::warn("{}", s.message());
  }
  recorder_.end(failure);
  {
    std::lock_guard lock(mu_);
    waker_ = transport::Waker();
  }
  server_.reset();
  if (!ipc_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(ipc_dir_, ec);
  }
}

}  // namespace pp::pipeline
