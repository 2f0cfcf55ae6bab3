// The coordinator's recovery from lost stages (see coordinator.h, "Recovery"): the pipeline is
// rebuilt around the stages that survive, and every running request is recomputed, so that no
// request fails while a restart is left. Runs on the coordinator thread, like everything named
// *_ here.
//
// Invariants: while recovering no plan is issued; every plan issued before the recovery has
// seq < live_seq_, and anything a stage says about such a plan (tokens, timings, activations)
// is ignored; a stage's slot is empty (no peer) from the moment it is lost until a new process
// says Hello for it, so the lost process's late messages match no stage.
#include <csignal>

#include <spdlog/spdlog.h>

#include "pp/assert.h"
#include "pp/pipeline/coordinator.h"

namespace pp::pipeline {

namespace tp = transport;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr milliseconds kPollInterval{50};

}  // namespace

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
  Stage& s = stages_[size_t(k)];
  const std::string who =
      s.peer.empty() ? fmt::format("stage {}", k)
                     : fmt::format("stage {} (pid {} on '{}')", k, s.hello.pid, s.hello.host);
  spdlog::warn("lost {}: {}", who, why);
  record_event("stage_lost", k, fmt::format("{}: {}", who, why));
  // A hung remote stage that wakes up later must not carry on with the old pipeline.
  if (!s.peer.empty()) (void)server_->send(s.peer, tp::Shutdown{"counted as lost: " + why});
  s = Stage{};
  told_next_[size_t(k)].clear();
  if (!options_.launch_local_stages) return ok_status();  // a remote one: wait for it to rejoin

  if (n_restarts_ >= options_.stage_restarts) {
    return make_error(StatusCode::kUnavailable,
                      "lost {}: {}; no stage restart left ({} allowed per run)", who, why,
                      options_.stage_restarts);
  }
  PP_ASSERT(size_t(k) < processes_.size() && processes_[size_t(k)].stage() == k);
  StageProcess& old = processes_[size_t(k)];
  old.signal(SIGKILL);  // it may only hang (SIGSTOP, a deadlock): make sure it is gone
  if (!old.wait(milliseconds(5000))) {
    return internal_error("stage {} (pid {}) does not die after SIGKILL", k, old.pid());
  }
  PP_ASSIGN_OR_RETURN(StageProcess fresh, StageProcess::spawn(local_launch(k)));
  ++n_restarts_;
  spdlog::warn("restarted stage {} as pid {} (restart {} of {})", k, fresh.pid(), n_restarts_,
               options_.stage_restarts);
  record_event("stage_restarted", k,
               fmt::format("pid {} (restart {} of {} allowed)", fresh.pid(), n_restarts_,
                           options_.stage_restarts));
  processes_[size_t(k)] = std::move(fresh);
  return ok_status();
}

void Coordinator::handle_recovery_message(const tp::Incoming& in, bool allocated) {
  const int32_t k = stage_of_peer(in.peer);
  if (in.event == tp::PeerEvent::kDisconnected) {
    if (k >= 0) note_lost(k, "connection dropped");
    return;
  }
  const tp::Message& m = in.message;
  if (const auto* h = std::get_if<tp::Hello>(&m)) {
    if (k >= 0) return;
    int32_t index = h->stage;
    if (index < 0) {
      for (size_t i = 0; i < stages_.size(); ++i) {
        if (stages_[i].peer.empty()) {
          index = int32_t(i);
          break;
        }
      }
    }
    if (index < 0 || index >= options_.n_stages || !stages_[size_t(index)].peer.empty()) {
      spdlog::warn("refusing a stage from '{}' (pid {}): stage {} is not missing", h->host, h->pid,
                   h->stage);
      (void)server_->send(in.peer, tp::Shutdown{"that stage is not missing"});
      return;
    }
    Stage& s = stages_[size_t(index)];
    s.peer = in.peer;
    s.hello = *h;
    spdlog::warn("stage {} (re)joined from '{}' (pid {})", index, h->host, h->pid);
    if (store_) {
      RunStageRecord r;
      r.stage = index;
      r.host = h->host;
      r.device = h->device;
      r.pid = h->pid;
      r.layer_begin = int(layers_[size_t(index)].begin);
      r.layer_end = int(layers_[size_t(index)].end);
      if (Status st = store_->add_run_stage(run_id_, r); !st.ok()) {
        spdlog::warn("run store: {}", st.message());
      }
    }
    return;
  }
  if (k < 0) return;  // a lost stage's last words
  Stage& s = stages_[size_t(k)];
  if (const auto* l = std::get_if<tp::Loaded>(&m)) {
    s.loaded = *l;
  } else if (std::holds_alternative<tp::Ready>(m)) {
    if (allocated) s.ready = true;
  } else if (const auto* e = std::get_if<tp::StageError>(&m)) {
    note_lost(k, fmt::format("failed: {}", e->message));
  }
  // Tokens and timings: of plans issued before the recovery, all stale.
}

Status Coordinator::recover() {
  const Clock::time_point t0 = Clock::now();
  {
    std::lock_guard lock(mu_);
    ++stats_.n_recoveries;
    stats_.recovering = true;
    recovering_ = "a stage was lost";
  }
  // Nothing in flight will come back usefully: forget it all and recompute.
  const int64_t n_requeued = scheduler_->preempt_all();
  live_seq_ = next_seq_;
  for (PlanSpan& span : in_flight_) span = PlanSpan{};
  for (Stage& s : stages_) s.ready = false;
  PP_RETURN_IF_ERROR(take_losses());
  record_event("recovery", std::nullopt,
               fmt::format("{} running requests requeued for recompute; plans from seq {} on",
                           n_requeued, live_seq_));
  publish_stats();
  dispatch_events();
  publish_stage_pids();

  // A remote stage has stage_timeout to say Hello again; loading has register_timeout.
  auto join_deadline = [&] {
    return Clock::now() +
           (options_.launch_local_stages ? options_.register_timeout : options_.stage_timeout);
  };
  Clock::time_point deadline = join_deadline();
  bool assigned = false, allocated = false;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return ok_status();  // the loop sees it and shuts down
    }
    for (StageProcess& p : processes_) {
      if (auto exit = p.poll()) note_lost(p.stage(), fmt::format("pid {} {}", p.pid(), *exit));
    }
    for (const tp::PeerId& peer : server_->silent_peers(options_.stage_timeout)) {
      const int32_t k = stage_of_peer(peer);
      if (k >= 0) {
        note_lost(k, fmt::format("no heartbeat for {} ms", options_.stage_timeout.count()));
      }
    }
    if (!lost_.empty()) {
      // Another loss: that round starts again (the new stage must load before anyone allocates).
      PP_RETURN_IF_ERROR(take_losses());
      publish_stage_pids();
      assigned = allocated = false;
      for (Stage& s : stages_) s.ready = false;
      deadline = join_deadline();
    }
    if (Clock::now() > deadline) {
      std::string missing;
      for (size_t k = 0; k < stages_.size(); ++k) {
        const Stage& s = stages_[k];
        if (s.peer.empty() || !s.ready) {
          missing += fmt::format("{}stage {} ({})", missing.empty() ? "" : ", ", k,
                                 s.peer.empty() ? "not joined"
                                 : !s.loaded    ? "not loaded"
                                                : "not ready");
        }
      }
      return make_error(StatusCode::kUnavailable, "the pipeline did not recover within {} ms: {}",
                        std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count(),
                        missing);
    }
    send_heartbeats();
    PP_ASSIGN_OR_RETURN(auto got, server_->receive(kPollInterval));
    if (got) handle_recovery_message(*got, allocated);
    // Callers' commands go on: submissions queue, cancellations finish requests.
    handle_commands();
    dispatch_events();
    if (!lost_.empty()) continue;

    const bool all_joined =
        std::all_of(stages_.begin(), stages_.end(), [](const Stage& s) { return !s.peer.empty(); });
    if (all_joined && !assigned) {
      for (int32_t k = 0; k < options_.n_stages; ++k) {
        const Stage& s = stages_[size_t(k)];
        if (!s.assigned || told_next_[size_t(k)] != next_endpoint(k)) {
          if (Status st = send_assign(k); !st.ok()) note_lost(k, st.message());
        }
      }
      assigned = true;
      deadline = Clock::now() + options_.register_timeout;
      publish_stage_pids();
    }
    const bool all_loaded = std::all_of(stages_.begin(), stages_.end(),
                                        [](const Stage& s) { return s.loaded.has_value(); });
    if (assigned && all_loaded && !allocated) {
      for (int32_t k = 0; k < options_.n_stages; ++k) {
        const Stage& s = stages_[size_t(k)];
        if (s.loaded->kv_blocks_capacity < n_blocks_) {
          spdlog::warn("stage {} says {} KV blocks fit; allocating the pipeline's {}", k,
                       s.loaded->kv_blocks_capacity, n_blocks_);
        }
        if (Status st = server_->send(s.peer, tp::AllocateKv{n_blocks_, options_.kv_block_size});
            !st.ok()) {
          note_lost(k, st.message());
        }
      }
      allocated = true;
    }
    if (allocated &&
        std::all_of(stages_.begin(), stages_.end(), [](const Stage& s) { return s.ready; })) {
      break;
    }
  }

  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::warn("the pipeline recovered in {:.2f} s; {} requests are recomputed", seconds,
               n_requeued);
  record_event(
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
