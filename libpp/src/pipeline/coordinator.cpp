// The coordinator thread: start-up of the stages, then the loop of the in-flight ring (see
// coordinator.h). Everything named *_ without a lock below is touched by that thread only.
#include "pp/pipeline/coordinator.h"

#include <stdlib.h>

#include <algorithm>
#include <csignal>
#include <future>
#include <limits>

#include <spdlog/spdlog.h>

#include "pp/assert.h"
#include "pp/kernels/device.h"
#include "pp/kernels/gpu.h"
#include "pp/model/model-source.h"
#include "pp/partition/partition-reader.h"

namespace pp::pipeline {

namespace fs = std::filesystem;
namespace tp = transport;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kHeartbeatInterval{500};
constexpr milliseconds kPollInterval{50};

// The plan as stage `k` of `n` needs it: token ids only at stage 0; sampling and penalty ids
// only at the last stage.
tp::Plan plan_for_stage(const tp::Plan& plan, int32_t k, int32_t n) {
  tp::Plan p = plan;
  for (tp::PlanEntry& e : p.entries) {
    if (k != 0) e.token_ids.clear();
    if (k != n - 1) {
      e.sampling = tp::WireSampling{};
      e.penalty_prompt_ids.clear();
      e.penalty_output_ids.clear();
    }
  }
  return p;
}

// The endpoint a local stage connects to: a wildcard bind address becomes loopback.
std::string local_connect_endpoint(const std::string& bound) {
  for (const char* wildcard : {"tcp://0.0.0.0:", "tcp://*:"}) {
    const std::string w = wildcard;
    if (bound.rfind(w, 0) == 0) return "tcp://127.0.0.1:" + bound.substr(w.size());
  }
  return bound;
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
  if (options_.model_path.empty()) return invalid_argument("no model given");
  if (options_.async_depth < 0) {
    return invalid_argument("async depth must be 0 or more, not {}", options_.async_depth);
  }
  if (options_.n_stages < 0) return invalid_argument("bad stage count {}", options_.n_stages);
  std::error_code ec;
  const fs::path path = fs::absolute(options_.model_path, ec);
  model_path_ = path.string();
  std::shared_ptr<const model::Tokenizer> tokenizer = options_.tokenizer;
  // A split given as text is parsed once the config (its layer count) is known.
  auto parse_split = [&]() -> Status {
    if (options_.layer_split.empty() || !options_.layers.empty()) return ok_status();
    if (options_.n_stages == 0) options_.n_stages = 1;
    PP_ASSIGN_OR_RETURN(
        options_.layers,
        partition::parse_layer_ranges(options_.layer_split, config_.n_layer, options_.n_stages));
    return ok_status();
  };
  if (options_.random_weights) {
    // A config alone: random weights on every stage; a tokenizer.json beside it is used.
    PP_ASSIGN_OR_RETURN(config_, model::config_from_path(path));
    PP_RETURN_IF_ERROR(parse_split());
    if (options_.n_stages == 0) options_.n_stages = 1;
    partition::PlanOptions po;
    po.n_stages = options_.n_stages;
    po.strategy = options_.layers.empty() ? options_.strategy : partition::Strategy::kManual;
    po.layers = options_.layers;
    po.dtype = model::DType::kBF16;
    PP_ASSIGN_OR_RETURN(partition::Plan plan, partition::make_plan(config_, po));
    for (const partition::StagePlan& sp : plan.stages) layers_.push_back(sp.layers);
    const fs::path tok =
        (fs::is_directory(path, ec) ? path : path.parent_path()) / "tokenizer.json";
    if (!tokenizer && options_.load_tokenizer && fs::exists(tok, ec)) {
      PP_ASSIGN_OR_RETURN(tokenizer, model::Tokenizer::from_hf_file(tok));
    }
  } else if (fs::is_directory(path, ec) && fs::exists(path / partition::kManifestName, ec)) {
    PP_ASSIGN_OR_RETURN(partition::PartitionManifest m, partition::open_partition(path));
    is_partition_ = true;
    if (options_.n_stages == 0) options_.n_stages = m.n_stages();
    if (options_.n_stages != m.n_stages()) {
      return invalid_argument("partition '{}' has {} stages, not {}", path.string(), m.n_stages(),
                              options_.n_stages);
    }
    config_ = m.config;
    for (const partition::StagePlan& sp : m.plan.stages) layers_.push_back(sp.layers);
    if (!options_.layers.empty() && options_.layers != layers_) {
      return invalid_argument("partition '{}' fixes its layer split; it cannot be changed",
                              path.string());
    }
    if (!tokenizer && options_.load_tokenizer && !m.tokenizer.file.empty()) {
      PP_ASSIGN_OR_RETURN(tokenizer, model::Tokenizer::from_hf_file(path / m.tokenizer.file));
    }
  } else {
    PP_ASSIGN_OR_RETURN(model::ModelSource src, model::open_model(path));
    config_ = src.config;
    PP_RETURN_IF_ERROR(parse_split());
    if (options_.n_stages == 0) options_.n_stages = 1;
    partition::PlanOptions po;
    po.n_stages = options_.n_stages;
    po.strategy = options_.layers.empty() ? options_.strategy : partition::Strategy::kManual;
    po.layers = options_.layers;
    po.dtype = model::DType::kF32;
    PP_ASSIGN_OR_RETURN(partition::Plan plan, partition::make_plan(config_, po));
    for (const partition::StagePlan& sp : plan.stages) layers_.push_back(sp.layers);
    if (!tokenizer && options_.load_tokenizer) {
      if (src.kind == model::SourceKind::kGguf && src.gguf) {
        PP_ASSIGN_OR_RETURN(tokenizer, model::Tokenizer::from_gguf(*src.gguf));
      } else if (!src.tokenizer_json.empty() && fs::exists(src.tokenizer_json, ec)) {
        PP_ASSIGN_OR_RETURN(tokenizer, model::Tokenizer::from_hf_file(src.tokenizer_json));
      }
    }
  }
  tokenizer_ = std::move(tokenizer);
  const int32_t P = options_.n_stages;
  if (P < 1 || int64_t(layers_.size()) != P) {
    return invalid_argument("cannot split the model into {} stages", P);
  }
  return ok_status();
}

int32_t Coordinator::stage_of_peer(const tp::PeerId& peer) const {
  for (size_t k = 0; k < stages_.size(); ++k) {
    if (!stages_[k].peer.empty() && stages_[k].peer == peer) return int32_t(k);
  }
  return -1;
}

StageLaunch Coordinator::local_launch(int32_t stage) const {
  StageLaunch launch;
  launch.binary = options_.stage_binary.empty() ? default_stage_binary() : options_.stage_binary;
  launch.coordinator = local_connect_endpoint(endpoint_);
  launch.stage = stage;
  launch.threads = options_.threads_per_stage;
  launch.log_level = options_.stage_log_level;
  launch.extra_args = options_.stage_args;
  if (options_.device == "cuda") {
    std::vector<int> gpus = options_.gpus;
    if (gpus.empty()) {
      for (const kernels::DeviceInfo& d : kernels::cuda_devices()) gpus.push_back(d.index);
    }
    if (!gpus.empty()) {
      launch.extra_args.push_back("--device");
      launch.extra_args.push_back(fmt::format("cuda:{}", gpus[size_t(stage) % gpus.size()]));
    }
  }
  return launch;
}

// GPU stages: NCCL link ids between neighbours (made once, here: this process hosts each
// link's rendezvous until both ends join), and each device's memory share split among the
// stages on it.
Status Coordinator::gpu_links(int32_t k, tp::Assign& a) {
  auto on_gpu = [&](int32_t i) { return stages_[size_t(i)].hello.device.rfind("cuda", 0) == 0; };
  auto place = [&](int32_t i) {
    return stages_[size_t(i)].hello.host + "/" + stages_[size_t(i)].hello.device;
  };
  int32_t sharing = 0;
  for (int32_t i = 0; i < options_.n_stages; ++i) sharing += place(i) == place(k);
  a.mem_fraction = float(options_.mem_fraction / std::max(sharing, 1));
  if (!on_gpu(k)) return ok_status();
  if (nccl_ids_.empty()) {
    for (int32_t i = 0; i + 1 < options_.n_stages; ++i) {
      if (!on_gpu(i) || !on_gpu(i + 1)) {
        return invalid_argument(
            "stage {} runs on {} and stage {} on {}: a pipeline runs on GPUs "
            "or on CPUs, not both",
            i, stages_[size_t(i)].hello.device, i + 1, stages_[size_t(i + 1)].hello.device);
      }
      if (place(i) == place(i + 1)) {
        return invalid_argument(
            "stages {} and {} both run on {}: NCCL cannot link two stages on "
            "one GPU (give each stage its own GPU)",
            i, i + 1, place(i));
      }
      PP_ASSIGN_OR_RETURN(kernels::gpu::NcclId id, kernels::gpu::NcclComm::unique_id());
      nccl_ids_.emplace_back(reinterpret_cast<const char*>(id.data()), id.size());
    }
  }
  if (k > 0) a.nccl_id_from_previous = nccl_ids_[size_t(k - 1)];
  if (k + 1 < options_.n_stages) a.nccl_id_to_next = nccl_ids_[size_t(k)];
  return ok_status();
}

std::string Coordinator::next_endpoint(int32_t stage) const {
  return stage + 1 < options_.n_stages ? stages_[size_t(stage + 1)].hello.data_endpoint : "";
}

Status Coordinator::send_assign(int32_t k) {
  tp::Assign a;
  a.stage = k;
  a.n_stages = options_.n_stages;
  a.model_path = model_path_;
  a.layer_begin = layers_[size_t(k)].begin;
  a.layer_end = layers_[size_t(k)].end;
  a.next_data_endpoint = next_endpoint(k);
  a.kv_block_size = options_.kv_block_size;
  a.threads = options_.threads_per_stage;
  a.max_batch_tokens = options_.max_batch_tokens;
  a.max_running = options_.max_running_requests;
  a.cuda_graphs = options_.cuda_graphs;
  a.random_weights = options_.random_weights.has_value();
  a.random_seed = options_.random_weights.value_or(0);
  PP_RETURN_IF_ERROR(gpu_links(k, a));
  PP_RETURN_IF_ERROR(server_->send(stages_[size_t(k)].peer, a));
  stages_[size_t(k)].assigned = true;
  told_next_[size_t(k)] = a.next_data_endpoint;
  return ok_status();
}

void Coordinator::publish_stage_pids() {
  std::lock_guard lock(mu_);
  stats_.stage_pids.clear();
  for (const Stage& s : stages_) stats_.stage_pids.push_back(s.peer.empty() ? 0 : s.hello.pid);
  stats_.n_stage_restarts = n_restarts_;
}

void Coordinator::send_heartbeats() {
  const Clock::time_point now = Clock::now();
  if (now < next_heartbeat_) return;
  next_heartbeat_ = now + kHeartbeatInterval;
  for (const Stage& s : stages_) {
    if (!s.peer.empty()) (void)server_->send(s.peer, tp::Heartbeat{-1, trace_now_us()});
  }
}

Status Coordinator::handle_startup_message(const tp::Incoming& in, bool* assigned,
                                           bool* allocated) {
  const int32_t k = stage_of_peer(in.peer);
  if (in.event == tp::PeerEvent::kDisconnected) {
    if (k < 0) return ok_status();
    return make_error(StatusCode::kUnavailable, "lost stage {} (pid {} on '{}') while starting", k,
                      stages_[size_t(k)].hello.pid, stages_[size_t(k)].hello.host);
  }
  const tp::Message& m = in.message;
  if (const auto* h = std::get_if<tp::Hello>(&m)) {
    if (k >= 0) return ok_status();
    int32_t index = h->stage;
    if (index < 0) {
      for (size_t i = 0; i < stages_.size(); ++i) {
        if (stages_[i].peer.empty()) {
          index = int32_t(i);
          break;
        }
      }
    }
    const int32_t P = options_.n_stages;
    if (index < 0 || index >= P || !stages_[size_t(index)].peer.empty() || *assigned) {
      const std::string why = index >= P
                                  ? fmt::format("this pipeline has {} stages (0..{})", P, P - 1)
                                  : fmt::format("stage {} is taken", index);
      spdlog::warn("refusing a stage from '{}' (pid {}): {}", h->host, h->pid, why);
      (void)server_->send(in.peer, tp::Shutdown{why});
      return ok_status();
    }
    stages_[size_t(index)].peer = in.peer;
    stages_[size_t(index)].hello = *h;
    spdlog::info("stage {} joined from '{}' (pid {}, {})", index, h->host, h->pid, h->device);
    if (store_) {
      RunStageRecord r;
      r.stage = index;
      r.host = h->host;
      r.device = h->device;
      r.pid = h->pid;
      r.layer_begin = int(layers_[size_t(index)].begin);
      r.layer_end = int(layers_[size_t(index)].end);
      if (Status s = store_->add_run_stage(run_id_, r); !s.ok()) {
        spdlog::warn("run store: {}", s.message());
      }
    }
    return ok_status();
  }
  if (k < 0) return ok_status();  // someone we did not admit
  Stage& stage = stages_[size_t(k)];
  if (const auto* l = std::get_if<tp::Loaded>(&m)) {
    stage.loaded = *l;
  } else if (std::holds_alternative<tp::Ready>(m)) {
    if (!*allocated) {
      return make_error(StatusCode::kFailedPrecondition, "stage {} is ready before allocating", k);
    }
    stage.ready = true;
  } else if (const auto* e = std::get_if<tp::StageError>(&m)) {
    return make_error(StatusCode::kInternal, "stage {} failed: {}", k, e->message);
  }
  return ok_status();
}

Status Coordinator::choose_kv_blocks() {
  const int32_t bs = options_.kv_block_size;
  int64_t capacity = std::numeric_limits<int64_t>::max(), max_per_block = 0;
  for (const Stage& s : stages_) {
    capacity = std::min(capacity, s.loaded->kv_blocks_capacity);
    max_per_block = std::max(max_per_block, s.loaded->kv_bytes_per_block);
  }
  int64_t n = 0;
  if (options_.kv_blocks > 0) {
    n = options_.kv_blocks;
  } else if (options_.kv_memory > 0) {
    n = max_per_block > 0 ? options_.kv_memory / max_per_block : 0;
  } else {
    // What the stages can hold, but no more than the running requests could ever use.
    const int64_t per_request = (config_.max_context() + bs - 1) / bs;
    n = std::min(capacity, per_request * options_.max_running_requests);
  }
  n = std::min<int64_t>(n, std::numeric_limits<int32_t>::max());
  if (n < 1) {
    return make_error(StatusCode::kResourceExhausted,
                      "no room for a KV cache: the stages hold {} blocks of {} tokens", capacity,
                      bs);
  }
  n_blocks_ = n;
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
  PP_ASSIGN_OR_RETURN(auto server, tp::ControlServer::bind(bind_at));
  server_.emplace(std::move(server));
  endpoint_ = server_->endpoint();
  {
    std::lock_guard lock(mu_);
    waker_ = server_->waker();
  }
  if (options_.on_listening) options_.on_listening(endpoint_);

  // The run store.
  if (options_.db_path) {
    auto store = RunStore::open(*options_.db_path);
    if (!store.ok()) {
      spdlog::warn("run store: {}; this run is not recorded", store.status().message());
    } else {
      store_ = std::move(*store);
      if (auto marked = store_->mark_abandoned_runs(); !marked.ok()) {
        spdlog::warn("run store: {}", marked.status().message());
      }
      ServingRunRecord run;
      run.config_json = options_.config_json.empty() ? "{}" : options_.config_json;
      run.model = model_path_;
      run.pp = P;
      run.async_depth = options_.async_depth;
      auto id = store_->begin_serving_run(run);
      if (!id.ok()) {
        spdlog::warn("run store: {}; this run is not recorded", id.status().message());
        store_.reset();
      } else {
        run_id_ = *id;
      }
    }
  }

  // Local stages.
  stages_.assign(size_t(P), Stage{});
  told_next_.assign(size_t(P), std::string());
  if (options_.launch_local_stages) {
    for (int32_t k = 0; k < P; ++k) {
      PP_ASSIGN_OR_RETURN(StageProcess p, StageProcess::spawn(local_launch(k)));
      processes_.push_back(std::move(p));
    }
  }

  // Registration: Hello from all -> Assign; Loaded from all -> AllocateKv; Ready from all.
  const Clock::time_point deadline = Clock::now() + options_.register_timeout;
  bool assigned = false, allocated = false;
  for (;;) {
    for (StageProcess& p : processes_) {
      if (auto exit = p.poll()) {
        return make_error(StatusCode::kUnavailable, "stage {} (pid {}) {} before it was ready",
                          p.stage(), p.pid(), *exit);
      }
    }
    if (Clock::now() > deadline) {
      int32_t n_joined = 0, n_ready = 0;
      for (const Stage& s : stages_) {
        n_joined += s.peer.empty() ? 0 : 1;
        n_ready += s.ready ? 1 : 0;
      }
      return make_error(StatusCode::kDeadlineExceeded,
                        "stages not ready within {} s at '{}': {} of {} joined, {} ready",
                        options_.register_timeout.count() / 1000, endpoint_, n_joined, P, n_ready);
    }
    send_heartbeats();
    PP_ASSIGN_OR_RETURN(auto got, server_->receive(kPollInterval));
    if (got) PP_RETURN_IF_ERROR(handle_startup_message(*got, &assigned, &allocated));

    const bool all_joined =
        std::all_of(stages_.begin(), stages_.end(), [](const Stage& s) { return !s.peer.empty(); });
    if (all_joined && !assigned) {
      for (int32_t k = 0; k < P; ++k) PP_RETURN_IF_ERROR(send_assign(k));
      assigned = true;
    }
    const bool all_loaded = std::all_of(stages_.begin(), stages_.end(),
                                        [](const Stage& s) { return s.loaded.has_value(); });
    if (all_loaded && !allocated) {
      PP_RETURN_IF_ERROR(choose_kv_blocks());
      for (const Stage& s : stages_) {
        PP_RETURN_IF_ERROR(
            server_->send(s.peer, tp::AllocateKv{n_blocks_, options_.kv_block_size}));
      }
      allocated = true;
    }
    if (std::all_of(stages_.begin(), stages_.end(), [](const Stage& s) { return s.ready; })) break;
  }

  for (int32_t k = 0; k < P; ++k) {
    const Stage& s = stages_[size_t(k)];
    StageInfo info;
    info.stage = k;
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
  PP_RETURN_IF_ERROR(so.validate());
  scheduler_ = std::make_unique<Scheduler>(so, tokenizer_.get());
  in_flight_.assign(size_t(so.n_groups), PlanSpan{});
  busy_.assign(size_t(P), Busy{});
  publish_stage_pids();
  trace_ = TraceRecorder(P);
  spdlog::info("pipeline ready: {} stages, {} groups, {} KV blocks of {} tokens", P, so.n_groups,
               n_blocks_, options_.kv_block_size);
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
  const uint64_t id = next_id_.fetch_add(1);
  const double arrival = std::chrono::duration<double>(Clock::now() - start_time_).count();
  tp::Waker waker;
  {
    std::lock_guard lock(mu_);
    if (closed_ || stopping_) {
      return make_error(StatusCode::kUnavailable, "the engine is shutting down");
    }
    commands_.push_back(
        SubmitCommand{id, std::move(prompt_ids), std::move(params), std::move(sink), arrival});
    ++stats_.n_submitted;
    waker = waker_;
  }
  waker.wake();
  return id;
}

void Coordinator::cancel(uint64_t id) {
  tp::Waker waker;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    commands_.push_back(CancelCommand{id});
    waker = waker_;
  }
  waker.wake();
}

Status Coordinator::stop() {
  if (!started_.load()) return ok_status();
  tp::Waker waker;
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

std::vector<tp::StageTiming> Coordinator::timings() const {
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
      Status st =
          scheduler_->submit(s->id, std::move(s->prompt_ids), std::move(s->params), s->arrival_s);
      if (!st.ok()) {
        RequestEvent e;
        e.request_id = s->id;
        e.kind = EventKind::kFinal;
        e.finish_reason = FinishReason::kAbort;
        if (s->sink) s->sink(EngineEvent{std::move(e), st});
        continue;
      }
      sinks_[s->id] = std::move(s->sink);
    } else {
      (void)scheduler_->cancel(std::get<CancelCommand>(c).id);  // unknown ids are fine
    }
  }
}

Status Coordinator::send_plan(const tp::Plan& plan) {
  const int32_t P = options_.n_stages;
  for (int32_t k = 0; k < P; ++k) {
    Status s = P == 1 ? server_->send(stages_[0].peer, plan)
                      : server_->send(stages_[size_t(k)].peer, plan_for_stage(plan, k, P));
    if (!s.ok()) return s.with_context(fmt::format("cannot send plan {} to stage {}", plan.seq, k));
  }
  return ok_status();
}

Status Coordinator::issue_plans() {
  scheduler_->set_now(std::chrono::duration<double>(Clock::now() - start_time_).count());
  scheduler_->idle_groups(&idle_);
  for (int32_t g : idle_) {
    if (!scheduler_->build_plan(g, &plan_)) continue;
    int32_t n_tokens = 0;
    for (const tp::PlanEntry& e : plan_.entries) n_tokens += e.n_new;
    in_flight_[size_t(g)] = PlanSpan{plan_.seq, g, n_tokens, trace_now_us(), 0};
    next_seq_ = plan_.seq + 1;
    PP_RETURN_IF_ERROR(send_plan(plan_));
  }
  return ok_status();
}

Status Coordinator::handle_message(const tp::Incoming& in) {
  const int32_t k = stage_of_peer(in.peer);
  if (in.event == tp::PeerEvent::kDisconnected) {
    if (k >= 0) note_lost(k, "connection dropped");
    return ok_status();
  }
  const tp::Message& m = in.message;
  if (const auto* t = std::get_if<tp::Tokens>(&m)) {
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
  if (const auto* t = std::get_if<tp::StageTiming>(&m)) {
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
  if (const auto* e = std::get_if<tp::StageError>(&m)) {
    // The stage stops after an error: it is lost (and restarted while restarts are left).
    if (k >= 0) note_lost(k, fmt::format("failed on plan {}: {}", e->seq, e->message));
    return ok_status();
  }
  if (const auto* h = std::get_if<tp::Hello>(&m)) {
    if (k < 0) {
      spdlog::warn("refusing a stage from '{}' (pid {}): the pipeline is complete", h->host,
                   h->pid);
      (void)server_->send(in.peer, tp::Shutdown{"the pipeline is complete"});
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
  for (const tp::PeerId& peer : server_->silent_peers(options_.stage_timeout)) {
    const int32_t k = stage_of_peer(peer);
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

void Coordinator::record_event(const std::string& kind, std::optional<int> stage,
                               const std::string& msg) {
  if (!store_) return;
  EventRecord e;
  e.run_id = run_id_;
  e.kind = kind;
  e.stage = stage;
  e.message = msg;
  if (auto r = store_->record_event(e); !r.ok())
    spdlog::warn("run store: {}", r.status().message());
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
    if (Status s = issue_plans(); !s.ok()) {
      fail(s);
      return;
    }
    // 3. Stream out (stats first, so that a caller seeing a final event sees its blocks freed).
    const int64_t n_preempted = scheduler_->stats().n_preemptions;
    if (n_preempted > preemptions_recorded_) {
      record_event("preemption", std::nullopt,
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
    for (const Stage& s : stages_) {
      if (!s.peer.empty()) (void)server_->send(s.peer, tp::Shutdown{"the coordinator is stopping"});
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
  if (store_) {
    const bool ok = failure.ok();
    if (Status s = store_->end_serving_run(run_id_, ok ? RunOutcome::kOk : RunOutcome::kError,
                                           ok ? "" : failure.message());
        !s.ok()) {
      spdlog::warn("run store: {}", s.message());
    }
    store_.reset();
  }
  {
    std::lock_guard lock(mu_);
    waker_ = tp::Waker();
  }
  server_.reset();
  if (!ipc_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(ipc_dir_, ec);
  }
}

}  // namespace pp::pipeline
