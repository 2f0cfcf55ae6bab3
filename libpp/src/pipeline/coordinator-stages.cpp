// The coordinator and its stages: forming the pipeline (admission, assignment, loading, the KV
// pool), losing a stage, and recovering from the loss, on the coordinator thread like
// everything named *_ here (see coordinator.h). The first start and every recovery form the
// pipeline by the same path, form_pipeline(); they differ in policy only: at start a stage that
// fails fails the start, in recovery it is lost again and restarted while restarts are left.
//
// Invariants: while the pipeline forms no plan is issued; every plan issued before a recovery
// has seq < live_seq_, and anything a stage says about such a plan (tokens, timings,
// activations) is ignored; a stage's slot is empty (no peer) from the moment it is lost until a
// new process says Hello for it, so the lost process's late messages match no stage.
#include <algorithm>
#include <csignal>
#include <limits>

#include <spdlog/spdlog.h>

#include "coordinator.h"
#include "pp/assert.h"
#include "pp/kernels/device.h"
#include "pp/kernels/gpu.h"

namespace pp::pipeline {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kPollInterval{50};
constexpr milliseconds kHeartbeatInterval{500};

// The endpoint a local stage connects to: a wildcard bind address becomes loopback.
std::string local_connect_endpoint(const std::string& bound) {
  for (const char* wildcard : {"tcp://0.0.0.0:", "tcp://*:"}) {
    const std::string w = wildcard;
    if (bound.rfind(w, 0) == 0) return "tcp://127.0.0.1:" + bound.substr(w.size());
  }
  return bound;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Launching and assigning

StageLaunch Coordinator::local_launch(int32_t w) const {
  StageLaunch launch;
  launch.binary = options_.stage_binary.empty() ? default_stage_binary() : options_.stage_binary;
  launch.coordinator = local_connect_endpoint(endpoint_);
  launch.stage = stages_.stage(w);
  if (stages_.tp() > 1) launch.rank = stages_.rank(w);
  launch.threads = options_.threads_per_stage;
  launch.log_level = options_.stage_log_level;
  launch.extra_args = options_.stage_args;
  if (options_.device == "cuda") {
    std::vector<int> gpus = options_.gpus;
    if (gpus.empty()) {
      for (const kernels::DeviceInfo& d : kernels::cuda_devices()) gpus.push_back(d.index);
    }
    if (!gpus.empty()) {
      // Stage k, rank r on GPU k N + r of the list.
      launch.extra_args.push_back("--device");
      launch.extra_args.push_back(fmt::format("cuda:{}", gpus[size_t(w) % gpus.size()]));
    }
  }
  return launch;
}

// GPU stages: NCCL link ids between neighbours (link k, rank r: stage k rank r -> stage k + 1
// rank r) and one per tensor-parallel group (made once, here: this process hosts each
// rendezvous until every rank has joined), and each device's memory share split among the
// workers on it.
Status Coordinator::gpu_links(int32_t w, transport::Assign& a) {
  const int32_t P = options_.n_stages, N = stages_.tp();
  auto on_gpu = [&](int32_t i) { return stages_[i].hello.device.rfind("cuda", 0) == 0; };
  auto place = [&](int32_t i) { return stages_[i].hello.host + "/" + stages_[i].hello.device; };
  int32_t sharing = 0;
  for (int32_t i = 0; i < stages_.size(); ++i) sharing += place(i) == place(w);
  a.mem_fraction = float(options_.mem_fraction / std::max(sharing, 1));
  if (!on_gpu(w)) return ok_status();
  if (nccl_ids_.empty()) {
    for (int32_t i = 0; i < stages_.size(); ++i) {
      if (!on_gpu(i)) {
        return invalid_argument(
            "{} runs on {} and {} on {}: a pipeline runs on GPUs or on CPUs, not both",
            stages_.name(i), stages_[i].hello.device, stages_.name(w), stages_[w].hello.device);
      }
      if (place(i) == place(w) && i != w && N > 1 && stages_.stage(i) == stages_.stage(w)) {
        return invalid_argument("{} and {} both run on {}: the ranks of a stage need a GPU each",
                                stages_.name(i), stages_.name(w), place(w));
      }
    }
    for (int32_t k = 0; k + 1 < P; ++k) {
      for (int32_t r = 0; r < N; ++r) {
        const int32_t from = stages_.worker(k, r), to = stages_.worker(k + 1, r);
        if (place(from) == place(to)) {
          return invalid_argument(
              "{} and {} both run on {}: NCCL cannot link two stages on one GPU (give each "
              "stage its own GPU)",
              stages_.name(from), stages_.name(to), place(from));
        }
        PP_ASSIGN_OR_RETURN(kernels::gpu::NcclId id, kernels::gpu::NcclComm::unique_id());
        nccl_ids_.emplace_back(reinterpret_cast<const char*>(id.data()), id.size());
      }
    }
    if (N > 1) {
      for (int32_t k = 0; k < P; ++k) {
        PP_ASSIGN_OR_RETURN(kernels::gpu::NcclId id, kernels::gpu::NcclComm::unique_id());
        tp_nccl_ids_.emplace_back(reinterpret_cast<const char*>(id.data()), id.size());
      }
    }
    if (nccl_ids_.empty()) nccl_ids_.emplace_back();  // made (one stage, one rank: no link)
  }
  const int32_t k = stages_.stage(w), r = stages_.rank(w);
  if (k > 0) a.nccl_id_from_previous = nccl_ids_[size_t((k - 1) * N + r)];
  if (k + 1 < P) a.nccl_id_to_next = nccl_ids_[size_t(k * N + r)];
  if (N > 1) a.tp_nccl_id = tp_nccl_ids_[size_t(k)];
  return ok_status();
}

std::string Coordinator::next_endpoint(int32_t w) const {
  const int32_t k = stages_.stage(w);
  return k + 1 < options_.n_stages
             ? stages_[stages_.worker(k + 1, stages_.rank(w))].hello.data_endpoint
             : "";
}

Status Coordinator::send_assign(int32_t w) {
  StageSlot& s = stages_[w];
  const int32_t k = stages_.stage(w);
  transport::Assign a;
  a.stage = k;
  a.n_stages = options_.n_stages;
  a.rank = stages_.rank(w);
  for (int32_t r = 0; r < stages_.tp(); ++r) {
    const transport::Hello& h = stages_[stages_.worker(k, r)].hello;
    a.devices.push_back(h.device);
    if (stages_.tp() > 1) a.tp_endpoints.push_back(h.tp_endpoint);
  }
  a.model_path = model_.path().string();
  a.layer_begin = layers_[size_t(k)].begin;
  a.layer_end = layers_[size_t(k)].end;
  a.next_data_endpoint = next_endpoint(w);
  a.kv_block_size = options_.kv_block_size;
  a.threads = options_.threads_per_stage;
  a.max_batch_tokens = options_.max_batch_tokens;
  a.max_running = options_.max_running_requests;
  a.cuda_graphs = options_.cuda_graphs;
  a.random_weights = options_.random_weights.has_value();
  a.random_seed = options_.random_weights.value_or(0);
  if (options_.quantization != model::Quantization::kNone) {
    a.quantization = model::quantization_name(options_.quantization);
  }
  if (options_.cpu_dtype != model::CpuDtype::kAuto)
    a.cpu_dtype = model::cpu_dtype_name(options_.cpu_dtype);
  PP_RETURN_IF_ERROR(gpu_links(w, a));
  PP_RETURN_IF_ERROR(server_->send(s.peer, a));
  s.assigned = true;
  s.told_next = a.next_data_endpoint;
  return ok_status();
}

void Coordinator::publish_stage_pids() {
  std::lock_guard lock(mu_);
  stats_.stage_pids.clear();
  stats_.worker_pids.clear();
  for (int32_t w = 0; w < stages_.size(); ++w) {
    const int32_t pid = stages_[w].joined() ? stages_[w].hello.pid : 0;
    if (stages_.rank(w) == 0) stats_.stage_pids.push_back(pid);
    stats_.worker_pids.push_back(pid);
  }
  stats_.n_stage_restarts = n_restarts_;
}

void Coordinator::send_heartbeats() {
  const Clock::time_point now = Clock::now();
  if (now < next_heartbeat_) return;
  next_heartbeat_ = now + kHeartbeatInterval;
  for (int32_t w = 0; w < stages_.size(); ++w) {
    if (stages_[w].joined()) {
      (void)server_->send(stages_[w].peer, transport::Heartbeat{-1, trace_now_us()});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forming the pipeline: one path for the first start and for recovery

void Coordinator::admit_stage(const transport::PeerId& peer, const transport::Hello& h,
                              Phase phase) {
  auto w = stages_.admit(peer, h);
  if (!w.ok()) {
    spdlog::warn("refusing a stage from '{}' (pid {}): {}", h.host, h.pid, w.status().message());
    (void)server_->send(peer, transport::Shutdown{w.status().message()});
    return;
  }
  const int32_t k = stages_.stage(*w);
  spdlog::log(phase == Phase::kStart ? spdlog::level::info : spdlog::level::warn,
              "{} {} from '{}' (pid {}, {})", stages_.name(*w),
              phase == Phase::kStart ? "joined" : "(re)joined", h.host, h.pid, h.device);
  RunStageRecord r;
  r.stage = k;
  r.host = h.host;
  r.device = h.device;
  r.pid = h.pid;
  r.layer_begin = int(layers_[size_t(k)].begin);
  r.layer_end = int(layers_[size_t(k)].end);
  recorder_.add_stage(r);
}

// What a stage says while the pipeline forms. At start a failing stage fails the start; in
// recovery it is lost (and restarted while restarts are left).
Status Coordinator::handle_registration_message(const transport::Incoming& in, Phase phase,
                                                bool allocated) {
  const bool start = phase == Phase::kStart;
  const int32_t w = stages_.worker_of(in.peer);
  const int32_t k = w < 0 ? -1 : stages_.stage(w);
  if (in.event == transport::PeerEvent::kDisconnected) {
    if (k < 0) return ok_status();
    if (start) {
      return make_error(StatusCode::kUnavailable, "lost {} (pid {} on '{}') while starting",
                        stages_.name(w), stages_[w].hello.pid, stages_[w].hello.host);
    }
    note_lost(k, "connection dropped");
    return ok_status();
  }
  const transport::Message& m = in.message;
  if (const auto* h = std::get_if<transport::Hello>(&m)) {
    if (k < 0) admit_stage(in.peer, *h, phase);
    return ok_status();
  }
  if (k < 0) return ok_status();  // a refused or lost stage's last words
  StageSlot& s = stages_[w];
  if (const auto* l = std::get_if<transport::Loaded>(&m)) {
    s.loaded = *l;
  } else if (std::holds_alternative<transport::Ready>(m)) {
    if (allocated) {
      s.ready = true;
    } else if (start) {
      return make_error(StatusCode::kFailedPrecondition, "{} is ready before allocating",
                        stages_.name(w));
    }
  } else if (const auto* e = std::get_if<transport::StageError>(&m)) {
    if (start) {
      return make_error(StatusCode::kInternal, "{} failed: {}", stages_.name(w), e->message);
    }
    note_lost(k, fmt::format("failed: {}", e->message));
  }
  // Tokens and timings: in recovery, of plans issued before it, all stale.
  return ok_status();
}

// Hello from every stage -> Assign; Loaded from every stage -> AllocateKv (at start, the pool's
// size: the minimum over the stages); Ready from every stage. At start, every stage joins,
// loads and allocates within register_timeout. In recovery a remote stage has stage_timeout to
// say Hello again, and loading has register_timeout; a stage lost meanwhile starts the round
// again; callers' commands go on (submissions queue, cancellations finish requests).
Status Coordinator::form_pipeline(Phase phase) {
  const bool start = phase == Phase::kStart;
  const Clock::time_point t0 = Clock::now();
  auto join_deadline = [&] {
    return Clock::now() + (start || options_.launch_local_stages ? options_.register_timeout
                                                                 : options_.stage_timeout);
  };
  Clock::time_point deadline = join_deadline();
  bool assigned = false, allocated = false;
  for (;;) {
    if (!start) {
      std::lock_guard lock(mu_);
      if (stopping_) return ok_status();  // the loop sees it and shuts down
    }
    for (StageProcess& p : processes_) {
      if (auto exit = p.poll()) {
        if (start) {
          return make_error(StatusCode::kUnavailable, "stage {} (pid {}) {} before it was ready",
                            p.stage(), p.pid(), *exit);
        }
        note_lost(p.stage(), fmt::format("pid {} {}", p.pid(), *exit));
      }
    }
    if (!start) {
      for (const transport::PeerId& peer : server_->silent_peers(options_.stage_timeout)) {
        const int32_t k = stages_.stage_of(peer);
        if (k >= 0) {
          note_lost(k, fmt::format("no heartbeat for {} ms", options_.stage_timeout.count()));
        }
      }
    }
    if (!lost_.empty()) {
      // Another loss: that round starts again (the new stage must load before anyone allocates).
      PP_RETURN_IF_ERROR(take_losses());
      publish_stage_pids();
      assigned = allocated = false;
      stages_.clear_ready();
      deadline = join_deadline();
    }
    if (Clock::now() > deadline) {
      if (start) {
        int32_t n_joined = 0, n_ready = 0;
        for (int32_t k = 0; k < stages_.size(); ++k) {
          n_joined += stages_[k].joined() ? 1 : 0;
          n_ready += stages_[k].ready ? 1 : 0;
        }
        return make_error(StatusCode::kDeadlineExceeded,
                          "stages not ready within {} s at '{}': {} of {} {} joined, {} ready",
                          options_.register_timeout.count() / 1000, endpoint_, n_joined,
                          stages_.size(), stages_.tp() > 1 ? "workers" : "stages", n_ready);
      }
      return make_error(StatusCode::kUnavailable, "the pipeline did not recover within {} ms: {}",
                        std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count(),
                        stages_.describe_missing());
    }
    send_heartbeats();
    PP_ASSIGN_OR_RETURN(auto got, server_->receive(kPollInterval));
    if (got) PP_RETURN_IF_ERROR(handle_registration_message(*got, phase, allocated));
    if (!start) {
      handle_commands();
      dispatch_events();
      if (!lost_.empty()) continue;
    }

    if (stages_.all_joined() && !assigned) {
      // Every new stage, and every survivor whose next stage now listens elsewhere (it keeps
      // its layers and only reconnects).
      for (int32_t w = 0; w < stages_.size(); ++w) {
        const StageSlot& s = stages_[w];
        if (s.assigned && s.told_next == next_endpoint(w)) continue;
        if (Status st = send_assign(w); !st.ok()) {
          if (start) return st;
          note_lost(stages_.stage(w), st.message());
        }
      }
      assigned = true;
      if (!start) deadline = Clock::now() + options_.register_timeout;
      publish_stage_pids();
    }
    if (assigned && stages_.all_loaded() && !allocated) {
      if (start) PP_RETURN_IF_ERROR(choose_kv_blocks());
      for (int32_t w = 0; w < stages_.size(); ++w) {
        const StageSlot& s = stages_[w];
        if (s.loaded->kv_blocks_capacity < n_blocks_) {
          spdlog::warn("{} says {} KV blocks fit; allocating the pipeline's {}", stages_.name(w),
                       s.loaded->kv_blocks_capacity, n_blocks_);
        }
        Status st = server_->send(s.peer, transport::AllocateKv{n_blocks_, options_.kv_block_size});
        if (!st.ok()) {
          if (start) return st;
          note_lost(stages_.stage(w), st.message());
        }
      }
      allocated = true;
    }
    if (allocated && stages_.all_ready()) return ok_status();
  }
}

Status Coordinator::choose_kv_blocks() {
  const int32_t bs = options_.kv_block_size;
  int64_t capacity = std::numeric_limits<int64_t>::max(), max_per_block = 0;
  for (int32_t w = 0; w < stages_.size(); ++w) {
    capacity = std::min(capacity, stages_[w].loaded->kv_blocks_capacity);
    max_per_block = std::max(max_per_block, stages_[w].loaded->kv_bytes_per_block);
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

// ---------------------------------------------------------------------------------------------
// Losing a stage, and recovering

void Coordinator::note_lost(int32_t stage, std::string why) {
  for (const Lost& l : lost_) {
    if (l.stage == stage) return;
  }
  lost_.push_back({stage, std::move(why)});
}

Status Coordinator::take_losses() {
  std::vector<Lost> lost;
  lost.swap(lost_);
  std::string what;
  for (const Lost& l : lost) {
    PP_RETURN_IF_ERROR(lose_stage(l.stage, l.why));
    what += fmt::format("{}stage {} lost ({})", what.empty() ? "" : ", ", l.stage, l.why);
  }
  std::lock_guard lock(mu_);
  recovering_ = what.empty() ? recovering_ : what;
  return ok_status();
}

Status Coordinator::lose_stage(int32_t k, const std::string& why) {
  PP_ASSERT(k >= 0 && k < options_.n_stages);
  const int32_t N = stages_.tp();
  const StageSlot& first = stages_[stages_.worker(k, 0)];
  const std::string who = first.joined() ? fmt::format("stage {} (pid {} on '{}')", k,
                                                       first.hello.pid, first.hello.host)
                                         : fmt::format("stage {}", k);
  spdlog::warn("lost {}: {}", who, why);
  recorder_.event("stage_lost", k, fmt::format("{}: {}", who, why));
  // A hung remote stage that wakes up later must not carry on with the old pipeline; the other
  // ranks of a lost stage go with it (their group cannot run without it).
  for (int32_t r = 0; r < N; ++r) {
    const StageSlot& s = stages_[stages_.worker(k, r)];
    if (s.joined()) (void)server_->send(s.peer, transport::Shutdown{"counted as lost: " + why});
  }
  stages_.vacate(k);
  if (!options_.launch_local_stages) return ok_status();  // a remote one: wait for it to rejoin

  if (n_restarts_ >= options_.stage_restarts) {
    return make_error(StatusCode::kUnavailable,
                      "lost {}: {}; no stage restart left ({} allowed per run)", who, why,
                      options_.stage_restarts);
  }
  for (int32_t r = 0; r < N; ++r) {
    const int32_t w = stages_.worker(k, r);
    PP_ASSERT(size_t(w) < processes_.size() && processes_[size_t(w)].stage() == k);
    StageProcess& old = processes_[size_t(w)];
    old.signal(SIGKILL);  // it may only hang (SIGSTOP, a deadlock): make sure it is gone
    if (!old.wait(milliseconds(5000))) {
      return internal_error("{} (pid {}) does not die after SIGKILL", stages_.name(w), old.pid());
    }
  }
  ++n_restarts_;
  for (int32_t r = 0; r < N; ++r) {
    const int32_t w = stages_.worker(k, r);
    PP_ASSIGN_OR_RETURN(StageProcess fresh, StageProcess::spawn(local_launch(w)));
    spdlog::warn("restarted {} as pid {} (restart {} of {})", stages_.name(w), fresh.pid(),
                 n_restarts_, options_.stage_restarts);
    recorder_.event("stage_restarted", k,
                    fmt::format("{} pid {} (restart {} of {} allowed)", stages_.name(w),
                                fresh.pid(), n_restarts_, options_.stage_restarts));
    processes_[size_t(w)] = std::move(fresh);
  }
  return ok_status();
}

Status Coordinator::recover() {
  const Clock::time_point t0 = Clock::now();
  {
    std::lock_guard lock(mu_);
    ++stats_.n_recoveries;
    stats_.recovering = true;
    // Which stages, at once: health() must not say less than take_losses() will.
    std::string what;
    for (const Lost& l : lost_) {
      what += fmt::format("{}stage {} lost ({})", what.empty() ? "" : ", ", l.stage, l.why);
    }
    recovering_ = what.empty() ? "a stage was lost" : what;
  }
  // Nothing in flight will come back usefully: forget it all and recompute.
  const int64_t n_requeued = scheduler_->preempt_all();
  live_seq_ = next_seq_;
  for (PlanSpan& span : in_flight_) span = PlanSpan{};
  stages_.clear_ready();
  PP_RETURN_IF_ERROR(take_losses());
  recorder_.event("recovery", std::nullopt,
                  fmt::format("{} running requests requeued for recompute; plans from seq {} on",
                              n_requeued, live_seq_));
  publish_stats();
  dispatch_events();
  publish_stage_pids();

  PP_RETURN_IF_ERROR(form_pipeline(Phase::kRecover));
  {
    std::lock_guard lock(mu_);
    if (stopping_) return ok_status();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::warn("the pipeline recovered in {:.2f} s; {} requests are recomputed", seconds,
               n_requeued);
  recorder_.event(
      "recovered", std::nullopt,
      fmt::format("pipeline back in {:.2f} s; {} requests recomputed", seconds, n_requeued));
  publish_stage_pids();
  {
    std::lock_guard lock(mu_);
    stats_.recovering = false;
    recovering_.clear();
  }
  return ok_status();
}

}  // namespace pp::pipeline
