// The stage worker's two threads and its compute loop (see stage-worker.h).
//
// The compute thread is the only user of the stage backend; the I/O thread the only user of the
// control client. They meet in two queues under one mutex: the inbox (messages for compute,
// stamped with their arrival) and the outbox (messages to send). The worker speaks the protocol,
// mirrors block tables and builds batches; everything that touches a device is the backend's.
#include "pp/pipeline/stage-worker.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

#include "pp/assert.h"
#include "pp/kernels/cpu.h"
#include "pp/model/batch.h"
#include "pp/partition/model-resolver.h"
#include "pp/pipeline/stage-backend.h"
#include "pp/pipeline/trace.h"
#include "pp/transport/activation.h"
#include "pp/transport/channel.h"

namespace pp::pipeline {

namespace cpu = kernels::cpu;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

// The local address the kernel would use to reach host:port (a UDP connect sends nothing).
Result<std::string> local_address_towards(const std::string& host, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return make_error(StatusCode::kUnavailable, "cannot resolve '{}': {}", host, gai_strerror(rc));
  }
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  std::string out;
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char text[INET_ADDRSTRLEN] = {};
      if (::inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text))) out = text;
    }
  }
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(res);
  if (out.empty()) {
    return make_error(StatusCode::kUnavailable, "cannot find a local address that reaches '{}'",
                      host);
  }
  return out;
}

// Where this stage binds a socket of its own (`what`: "data" for activations, "tp" for its
// group's collectives), from the coordinator's endpoint.
Result<std::string> data_endpoint_for(const StageWorkerOptions& o, const char* what) {
  const std::string& c = o.coordinator;
  if (c.rfind("ipc://", 0) == 0) {
    const std::filesystem::path control = c.substr(6);
    return "ipc://" +
           (control.parent_path() / fmt::format("stage-{}.{}", ::getpid(), what)).string();
  }
  if (c.rfind("tcp://", 0) == 0) {
    std::string address = o.data_address;
    if (address.empty()) {
      const std::string rest = c.substr(6);
      const size_t colon = rest.rfind(':');
      if (colon == std::string::npos) {
        return invalid_argument("coordinator endpoint '{}' has no port", c);
      }
      std::string host = rest.substr(0, colon);
      if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
      PP_ASSIGN_OR_RETURN(address, local_address_towards(host, rest.substr(colon + 1)));
    }
    return "tcp://" + address + ":0";
  }
  return invalid_argument("coordinator endpoint '{}' is neither ipc:// nor tcp://", c);
}

struct Inbound {
  transport::Message message;
  int64_t arrived_us = 0;
};

// What the last stage keeps per running request, mirrored from the plans.
struct Mirror {
  std::vector<int32_t> table;           // KV block ids
  std::vector<int32_t> penalty_prompt;  // the original prompt (penalties only)
  std::vector<int32_t> penalty_output;  // generated so far (penalties only)
};

bool has_penalties(const transport::WireSampling& s) {
  return s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f || s.repetition_penalty != 1.0f;
}

// A plan given up because the pipeline is being reset (see reset_): not an error.
Status abandoned(uint64_t seq) {
  return make_error(StatusCode::kCancelled, "plan {} abandoned: the pipeline is being reset", seq);
}

class StageWorker {
 public:
  explicit StageWorker(const StageWorkerOptions& options) : options_(options) {}
  ~StageWorker() {
    stop_ = true;
    if (io_thread_.joinable()) io_thread_.join();
  }

  Status run();

 private:
  // --- shared between the threads
  void post(transport::Message m);
  void fail(Status s);
  Status failure() {
    std::lock_guard lock(mu_);
    return failure_;
  }
  bool stopped() const {
    return stop_.load() || (options_.interrupted && options_.interrupted->load());
  }
  Result<Inbound> next_inbound();

  // --- I/O thread
  void io_loop();

  // --- compute thread
  Status compute();
  Status load(const transport::Assign& a);
  Status reassign(const transport::Assign& a);
  Status run_plan(const transport::Plan& plan, int64_t arrived_us);
  // While the backend waits for plan `seq`'s activations: why to stop waiting, if at all.
  Status check_wait(uint64_t seq);

  StageWorkerOptions options_;
  int32_t stage_ = -1;
  std::string device_;  // "cpu" or "cuda:N"
  std::string data_endpoint_;

  std::mutex mu_;
  std::condition_variable inbox_cv_;
  std::deque<Inbound> inbox_;
  std::deque<transport::Message> outbox_;
  Status failure_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> shutdown_received_{false};
  // Set by the I/O thread when an Assign or AllocateKv arrives (the coordinator resets the
  // pipeline after losing a stage): the plans not yet run are dropped from the inbox, and the
  // one waiting for activations gives up. Cleared when the compute thread allocates again.
  std::atomic<bool> reset_{false};
  bool error_reported_ = false;  // compute thread only
  transport::Waker io_waker_;
  std::optional<transport::ControlClient> client_;  // the I/O thread's once it runs
  std::thread io_thread_;

  // --- compute state
  std::optional<transport::ActivationReceiver> receiver_;  // bound before Hello (CPU transport)
  std::optional<transport::TpChannel> tp_channel_;         // likewise, for a group's collectives
  std::unique_ptr<StageBackend> backend_;                  // after the Assign
  bool first_ = false, last_ = false;
  int64_t n_vocab_ = 0;
  model::Batch batch_;
  std::unordered_map<uint64_t, Mirror> mirrors_;
  std::vector<SampleRow> rows_;  // the plan's sampled rows (last stage)
};

void StageWorker::post(transport::Message m) {
  {
    std::lock_guard lock(mu_);
    outbox_.push_back(std::move(m));
  }
  io_waker_.wake();
}

void StageWorker::fail(Status s) {
  {
    std::lock_guard lock(mu_);
    if (failure_.ok()) failure_ = std::move(s);
  }
  stop_ = true;
  inbox_cv_.notify_all();
}

Result<Inbound> StageWorker::next_inbound() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (!inbox_.empty()) {
      Inbound in = std::move(inbox_.front());
      inbox_.pop_front();
      return in;
    }
    if (!failure_.ok()) return failure_;
    if (options_.interrupted && options_.interrupted->load()) {
      return make_error(StatusCode::kCancelled, "stage {} interrupted", stage_);
    }
    if (stop_.load()) return make_error(StatusCode::kCancelled, "stage {} stopped", stage_);
    inbox_cv_.wait_for(lock, milliseconds(50));
  }
}

void StageWorker::io_loop() {
  transport::ControlClient& client = *client_;
  const Clock::time_point started = Clock::now();
  Clock::time_point next_heartbeat = started;
  std::deque<transport::Message> sending;
  auto flush = [&]() -> Status {
    {
      std::lock_guard lock(mu_);
      sending.swap(outbox_);
    }
    for (transport::Message& m : sending) {
      PP_RETURN_IF_ERROR(client.send(m));
    }
    sending.clear();
    return ok_status();
  };
  while (!stopped()) {
    if (Status s = flush(); !s.ok()) {
      fail(s.with_context("cannot send to the coordinator"));
      break;
    }
    const Clock::time_point now = Clock::now();
    if (now >= next_heartbeat) {
      (void)client.send(transport::Heartbeat{stage_, trace_now_us()});
      next_heartbeat = now + options_.heartbeat_interval;
    }
    auto got = client.receive(milliseconds(20));
    if (!got.ok()) {
      fail(got.status());
      break;
    }
    if (got->has_value()) {
      transport::Message& m = **got;
      if (std::holds_alternative<transport::Heartbeat>(m)) continue;
      const bool shutdown = std::holds_alternative<transport::Shutdown>(m);
      const bool reset = std::holds_alternative<transport::Assign>(m) ||
                         std::holds_alternative<transport::AllocateKv>(m);
      {
        std::lock_guard lock(mu_);
        if (reset) {
          // Plans issued before a reset will never get their activations: forget them.
          std::erase_if(inbox_, [](const Inbound& i) {
            return std::holds_alternative<transport::Plan>(i.message);
          });
          reset_ = true;
        }
        inbox_.push_back({std::move(m), trace_now_us()});
      }
      inbox_cv_.notify_all();
      if (shutdown) {
        shutdown_received_ = true;
        break;
      }
      continue;
    }
    // Is the coordinator still there?
    const Clock::time_point t = Clock::now();
    if (auto since = client.disconnected_since(); since && t - *since > milliseconds(1500)) {
      fail(make_error(StatusCode::kUnavailable,
                      "lost the coordinator at '{}': the connection dropped",
                      options_.coordinator));
      break;
    }
    const Clock::time_point heard = client.last_received().value_or(started);
    if (t - heard > options_.coordinator_timeout) {
      fail(make_error(StatusCode::kUnavailable,
                      "lost the coordinator at '{}': no heartbeat for {} ms", options_.coordinator,
                      std::chrono::duration_cast<milliseconds>(t - heard).count()));
      break;
    }
  }
  // Last words (a StageError, the final timings) before the socket closes and lingers.
  (void)flush();
}

Status StageWorker::load(const transport::Assign& a) {
  const Clock::time_point t0 = Clock::now();
  stage_ = a.stage;
  if (a.n_stages < 1 || a.stage < 0 || a.stage >= a.n_stages) {
    return invalid_argument("bad assignment: stage {} of {}", a.stage, a.n_stages);
  }
  StageSpec spec;
  spec.stage = a.stage;
  spec.n_stages = a.n_stages;
  spec.devices = a.devices.empty() ? std::vector<std::string>{device_} : a.devices;
  spec.rank = a.rank;
  if (spec.rank < 0 || size_t(spec.rank) >= spec.devices.size()) {
    return invalid_argument("bad assignment: rank {} of a group of {}", a.rank,
                            spec.devices.size());
  }
  if (spec.device() != device_) {
    return invalid_argument("stage {} rank {} was assigned device '{}', this worker runs on '{}'",
                            a.stage, a.rank, spec.device(), device_);
  }
  partition::ResolveOptions ro;
  if (a.random_weights) ro.random_weights = a.random_seed;
  if (!a.quantization.empty()) {
    PP_ASSIGN_OR_RETURN(ro.quantization, model::parse_quantization(a.quantization));
  }
  if (!a.cpu_dtype.empty()) {
    PP_ASSIGN_OR_RETURN(ro.cpu_dtype, model::parse_cpu_dtype(a.cpu_dtype));
  }
  PP_ASSIGN_OR_RETURN(partition::ResolvedModel source, partition::resolve_model(a.model_path, ro));
  PP_ASSIGN_OR_RETURN(spec.weights,
                      source.open_stage(a.stage, a.n_stages, {a.layer_begin, a.layer_end},
                                        {spec.rank, spec.tp_size()}));
  spec.links = {a.next_data_endpoint, a.nccl_id_from_previous, a.nccl_id_to_next};
  spec.tp_endpoints = a.tp_endpoints;
  spec.tp_nccl_id = a.tp_nccl_id;
  spec.kv_block_size = a.kv_block_size;
  spec.max_batch_tokens = a.max_batch_tokens;
  spec.max_running = a.max_running;
  spec.threads = options_.threads > 0 ? options_.threads : a.threads;
  spec.kv_memory = options_.kv_memory;
  spec.mem_fraction = options_.mem_fraction > 0 ? options_.mem_fraction : a.mem_fraction;
  spec.cuda_graphs = a.cuda_graphs;
  first_ = spec.first();
  last_ = spec.last();
  n_vocab_ = spec.weights.config.n_vocab;

  StageEnv env;
  env.post = [this](transport::Message m) { post(std::move(m)); };
  env.check = [this](uint64_t seq) { return check_wait(seq); };
  env.receiver = receiver_ ? &*receiver_ : nullptr;
  env.tp = tp_channel_ ? &*tp_channel_ : nullptr;
  PP_ASSIGN_OR_RETURN(backend_, make_stage_backend(spec, env));

  transport::Loaded loaded;
  loaded.stage = stage_;
  loaded.kv_bytes_per_block = backend_->kv_bytes_per_block(a.kv_block_size);
  PP_ASSIGN_OR_RETURN(loaded.kv_blocks_capacity, backend_->kv_capacity(a.kv_block_size));
  loaded.load_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info(
      "stage {}: loaded layers [{}, {}) of '{}' on {} in {:.2f} s ({:.2f} GiB of weights); room "
      "for {} KV blocks",
      stage_, spec.weights.layers.begin, spec.weights.layers.end, a.model_path,
      backend_->describe(), loaded.load_seconds, double(backend_->weight_bytes()) / double(1 << 30),
      loaded.kv_blocks_capacity);
  post(loaded);
  return ok_status();
}

// A later Assign (the coordinator recovering from a lost stage): the same stage keeps its
// layers; only where its activations go may have changed (a restarted next stage listens
// elsewhere).
Status StageWorker::reassign(const transport::Assign& a) {
  if (a.stage != stage_) {
    return invalid_argument("stage {} was reassigned as stage {}", stage_, a.stage);
  }
  return backend_->relink({a.next_data_endpoint, a.nccl_id_from_previous, a.nccl_id_to_next});
}

Status StageWorker::check_wait(uint64_t seq) {
  if (reset_.load()) return abandoned(seq);
  if (stopped() || shutdown_received_.load()) {
    Status f = failure();
    return f.ok() ? make_error(StatusCode::kCancelled, "stage {} stopped", stage_) : f;
  }
  return ok_status();
}

Status StageWorker::run_plan(const transport::Plan& plan, int64_t arrived_us) {
  if (backend_->kv_blocks() == 0) {
    return make_error(StatusCode::kFailedPrecondition,
                      "stage {}: plan {} arrived before the KV pool was allocated", stage_,
                      plan.seq);
  }
  // Metadata first: the tables and the batch, before the activations are taken.
  for (uint64_t id : plan.released) mirrors_.erase(id);
  batch_.clear();
  rows_.clear();
  for (const transport::PlanEntry& e : plan.entries) {
    Mirror& m = mirrors_[e.request_id];
    if (e.reset_table) m.table.clear();
    m.table.insert(m.table.end(), e.new_blocks.begin(), e.new_blocks.end());
    if (!e.penalty_prompt_ids.empty()) m.penalty_prompt = e.penalty_prompt_ids;
    const bool want_logits = e.sample && last_;
    if (first_) {
      if (int64_t(e.token_ids.size()) != e.n_new) {
        return data_loss("plan {}: request {} has {} token ids for {} new tokens", plan.seq,
                         e.request_id, e.token_ids.size(), e.n_new);
      }
      batch_.add_sequence(e.token_ids, e.pos_begin, m.table, want_logits);
    } else {
      batch_.add_sequence(e.n_new, e.pos_begin, m.table, want_logits);
    }
    if (!want_logits) continue;
    SampleRow row;
    row.request_id = e.request_id;
    row.sampling = e.sampling;
    row.step = e.sample_step;
    if (!e.allowed_tokens.empty()) {
      if (int64_t(e.allowed_tokens.size()) != (n_vocab_ + 31) / 32) {
        return data_loss("plan {}: request {} has an allowed-token mask of {} words for {} tokens",
                         plan.seq, e.request_id, e.allowed_tokens.size(), n_vocab_);
      }
      row.allowed = e.allowed_tokens;
    }
    if (e.sampling.bias_ids.size() != e.sampling.bias_values.size()) {
      return data_loss("plan {}: request {} has {} logit bias ids for {} values", plan.seq,
                       e.request_id, e.sampling.bias_ids.size(), e.sampling.bias_values.size());
    }
    for (int32_t id : e.sampling.bias_ids) {
      if (id < 0 || id >= n_vocab_) {
        return data_loss("plan {}: request {} has a logit bias for token {} outside [0, {})",
                         plan.seq, e.request_id, id, n_vocab_);
      }
    }
    if (has_penalties(e.sampling)) {
      m.penalty_output = e.penalty_output_ids;
      row.prompt_ids = m.penalty_prompt;
      row.output_ids = m.penalty_output;
    }
    rows_.push_back(row);
  }
  const std::string where = fmt::format("stage {}: plan {}", stage_, plan.seq);
  PP_RETURN_IF_ERROR(
      batch_.validate(backend_->kv_block_size(), backend_->kv_blocks(), first_ ? n_vocab_ : 0)
          .with_context(where));
  return backend_->run(plan, batch_, rows_, arrived_us).with_context(where);
}

Status StageWorker::compute() {
  // 1. The assignment, and loading.
  PP_ASSIGN_OR_RETURN(Inbound in, next_inbound());
  if (const auto* bye = std::get_if<transport::Shutdown>(&in.message)) {
    return make_error(StatusCode::kFailedPrecondition,
                      "the coordinator at '{}' refused this stage: {}", options_.coordinator,
                      bye->reason);
  }
  if (!std::holds_alternative<transport::Assign>(in.message)) {
    return make_error(StatusCode::kFailedPrecondition,
                      "expected Assign from the coordinator, got {}",
                      transport::message_name(in.message));
  }
  PP_RETURN_IF_ERROR(load(std::get<transport::Assign>(in.message)));

  // 2. Plans, in issue order, with (re)allocations of the KV pool in between.
  for (;;) {
    PP_ASSIGN_OR_RETURN(Inbound next, next_inbound());
    transport::Message& m = next.message;
    if (std::holds_alternative<transport::Shutdown>(m)) {
      spdlog::info("stage {}: shutting down ({})", stage_, std::get<transport::Shutdown>(m).reason);
      return ok_status();
    }
    if (auto* a = std::get_if<transport::Assign>(&m)) {
      PP_RETURN_IF_ERROR(reassign(*a));
      continue;
    }
    if (auto* a = std::get_if<transport::AllocateKv>(&m)) {
      reset_ = false;
      PP_RETURN_IF_ERROR(backend_->allocate_kv(a->n_blocks, a->block_size)
                             .with_context(fmt::format("stage {}", stage_)));
      mirrors_.clear();
      post(transport::Ready{stage_});
      continue;
    }
    if (auto* plan = std::get_if<transport::Plan>(&m)) {
      Status s = run_plan(*plan, next.arrived_us);
      if (!s.ok() && s.code() == StatusCode::kCancelled && reset_.load()) continue;  // abandoned
      if (!s.ok()) {
        // Told to shut down while waiting for activations that will never come: a clean end.
        if (s.code() == StatusCode::kCancelled && shutdown_received_.load()) return ok_status();
        if (!stop_.load()) {
          post(transport::StageError{stage_, plan->seq, s.message()});
          error_reported_ = true;
        }
        return s;
      }
      continue;
    }
    return make_error(StatusCode::kFailedPrecondition, "stage {}: unexpected {} message", stage_,
                      transport::message_name(m));
  }
}

Status StageWorker::run() {
  PP_ASSIGN_OR_RETURN(const int device_index, parse_device(options_.device));
  device_ = device_index >= 0 ? fmt::format("cuda:{}", device_index) : "cpu";
  PP_ASSIGN_OR_RETURN(const kernels::DeviceInfo device, device_info(options_.device));
  if (options_.threads > 0) cpu::set_num_threads(options_.threads);
  stage_ = options_.stage;
  PP_ASSIGN_OR_RETURN(data_endpoint_, data_endpoint_for(options_, "data"));
  {
    PP_ASSIGN_OR_RETURN(auto receiver, transport::ActivationReceiver::bind(data_endpoint_));
    receiver_.emplace(std::move(receiver));
    data_endpoint_ = receiver_->endpoint();
  }
  {
    PP_ASSIGN_OR_RETURN(const std::string at, data_endpoint_for(options_, "tp"));
    PP_ASSIGN_OR_RETURN(auto channel, transport::TpChannel::bind(at));
    tp_channel_.emplace(std::move(channel));
  }
  PP_ASSIGN_OR_RETURN(auto client, transport::ControlClient::connect(options_.coordinator));
  client_.emplace(std::move(client));
  PP_RETURN_IF_ERROR(client_->wait_connected(options_.connect_timeout)
                         .with_context("cannot reach the coordinator"));
  io_waker_ = client_->waker();

  transport::Hello hello;
  hello.stage = options_.stage;
  hello.rank = options_.rank;  // -1: whichever the coordinator assigns
  hello.host = host_name();
  hello.pid = int32_t(::getpid());
  hello.device = device_;
  hello.device_name = device.name;
  hello.device_total_bytes = device.total_bytes;
  hello.device_free_bytes = device.free_bytes;
  hello.data_endpoint = data_endpoint_;
  hello.tp_endpoint = tp_channel_->endpoint();
  post(hello);
  io_thread_ = std::thread([this] { io_loop(); });

  Status s = compute();
  if (backend_) {
    // The last tokens and timings go out before the control socket closes. A link whose
    // neighbour is gone can hold a receive forever: then leave the device state to the exit.
    if (!backend_->drain(milliseconds(3000))) {
      spdlog::warn("stage {}: work still queued at exit; not waiting for it", stage_);
      backend_->abort();
      (void)backend_.release();
    }
  }
  if (!s.ok() && !error_reported_ && s.code() != StatusCode::kCancelled &&
      s.code() != StatusCode::kUnavailable) {
    // A failure of this stage: tell the coordinator (if compute did not already).
    post(transport::StageError{stage_, 0, s.message()});
  }
  stop_ = true;
  io_waker_.wake();
  io_thread_.join();
  backend_.reset();  // a sender lingers until queued activations are out
  if (s.ok()) return ok_status();
  if (s.code() == StatusCode::kCancelled && options_.interrupted && options_.interrupted->load()) {
    return make_error(StatusCode::kCancelled, "stage {} interrupted", stage_);
  }
  return s;
}

}  // namespace

Status run_stage_worker(const StageWorkerOptions& options) {
  StageWorker worker(options);
  return worker.run();
}

}  // namespace pp::pipeline
