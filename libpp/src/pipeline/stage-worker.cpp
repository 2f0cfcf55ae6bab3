// The stage worker's two threads and its compute loop (see stage-worker.h).
//
// The compute thread is the only user of the StageModel and the activation channel; the I/O
// thread the only user of the control client. They meet in two queues under one mutex: the
// inbox (messages for compute, stamped with their arrival) and the outbox (messages to send).
#include "pp/pipeline/stage-worker.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

#include "gpu-stage.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/device.h"
#include "pp/model/batch.h"
#include "pp/model/gpu-stage-model.h"
#include "pp/model/model-source.h"
#include "pp/model/random-weights.h"
#include "pp/model/stage-model.h"
#include "pp/partition/partition-reader.h"
#include "pp/pipeline/trace.h"
#include "pp/transport/activation.h"
#include "pp/transport/channel.h"

namespace pp::pipeline {

namespace tp = transport;
namespace cpu = kernels::cpu;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

int64_t meminfo_field(const char* name) {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb) {
    std::getline(f, unit);
    if (key == name) return kb * 1024;
  }
  return 0;
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t b = line.find_first_not_of(' ', colon + 1);
        return b == std::string::npos ? "" : line.substr(b);
      }
    }
  }
  return "cpu";
}

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

// Where this stage binds its activation receiver, from the coordinator's endpoint.
Result<std::string> data_endpoint_for(const StageWorkerOptions& o) {
  const std::string& c = o.coordinator;
  if (c.rfind("ipc://", 0) == 0) {
    const std::filesystem::path control = c.substr(6);
    return "ipc://" + (control.parent_path() / fmt::format("stage-{}.data", ::getpid())).string();
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

// A ring of float vectors; a slot stays out of use between acquire() and release() (see the
// buffer rule in stage-worker.h). release() may come from another thread (a send's `done`).
class VectorRing {
 public:
  explicit VectorRing(size_t n) : buffers_(n), in_use_(n, false) {}

  // The next slot in ring order, once it is free; empty when `stop` (or `reset`) is set
  // meanwhile.
  std::optional<size_t> acquire(const std::atomic<bool>& stop, const std::atomic<bool>* reset) {
    std::unique_lock lock(mu_);
    const size_t i = next_;
    while (in_use_[i]) {
      if (stop.load() || (reset && reset->load())) return std::nullopt;
      cv_.wait_for(lock, milliseconds(50));
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

struct Inbound {
  tp::Message message;
  int64_t arrived_us = 0;
};

// What the last stage keeps per running request, mirrored from the plans.
struct Mirror {
  std::vector<int32_t> table;           // KV block ids
  std::vector<int32_t> penalty_prompt;  // the original prompt (penalties only)
  std::vector<int32_t> penalty_output;  // generated so far (penalties only)
};

bool has_penalties(const tp::WireSampling& s) {
  return s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f || s.repetition_penalty != 1.0f;
}

// "cpu" -> -1; "cuda" -> 0; "cuda:N" -> N.
Result<int> parse_device(const std::string& d) {
  if (d == "cpu") return -1;
  if (d == "cuda") return 0;
  if (d.rfind("cuda:", 0) == 0 && d.size() > 5 &&
      d.find_first_not_of("0123456789", 5) == std::string::npos && d.size() < 10) {
    return std::stoi(d.substr(5));
  }
  return invalid_argument("bad device '{}': expected cpu, cuda or cuda:N", d);
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
  void post(tp::Message m);
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
  Status load(const tp::Assign& a);
  Status reassign(const tp::Assign& a);
  Status run_plan(const tp::Plan& plan, int64_t arrived_us);
  Status sample(const tp::Plan& plan, const std::vector<float>& logits, tp::Tokens* out);
  Status load_gpu(const tp::Assign& a, const model::ModelConfig& config,
                  const model::WeightSource* weights, int64_t layer_begin, int64_t layer_end);
  Status run_plan_gpu(const tp::Plan& plan, int64_t arrived_us);

  StageWorkerOptions options_;
  int32_t stage_ = -1;
  std::string data_endpoint_;

  std::mutex mu_;
  std::condition_variable inbox_cv_;
  std::deque<Inbound> inbox_;
  std::deque<tp::Message> outbox_;
  Status failure_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> shutdown_received_{false};
  // Set by the I/O thread when an Assign or AllocateKv arrives (the coordinator resets the
  // pipeline after losing a stage): the plans not yet run are dropped from the inbox, and the
  // one waiting for activations gives up. Cleared when the compute thread allocates again.
  std::atomic<bool> reset_{false};
  bool error_reported_ = false;  // compute thread only
  tp::Waker io_waker_;
  std::optional<tp::ControlClient> client_;  // the I/O thread's once it runs
  std::thread io_thread_;

  // --- compute state (declared before the channel: its pending sends release these rings)
  std::unique_ptr<model::StageModel> model_;  // the CPU backend
  std::unique_ptr<GpuStage> gpu_;             // or the GPU one
  int gpu_device_ = -1;
  std::vector<model::GpuSampleSpec> gpu_specs_;
  std::vector<GpuSampledRow> gpu_rows_;
  bool first_ = false, last_ = false;
  int64_t n_embd_ = 0, n_vocab_ = 0, block_size_ = 16;
  model::Batch batch_;
  std::unordered_map<uint64_t, Mirror> mirrors_;
  VectorRing send_ring_{4};
  VectorRing recv_ring_{2};
  std::vector<float> logits_;
  std::vector<float> penalized_, sample_scratch_;
  std::vector<const tp::PlanEntry*> sampled_;
  std::optional<tp::ActivationReceiver> receiver_;
  std::optional<tp::ActivationSender> sender_;
};

void StageWorker::post(tp::Message m) {
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

kernels::DeviceInfo cpu_device_info() {
  kernels::DeviceInfo d;
  d.name = cpu_model_name();
  d.total_bytes = host_total_memory();
  d.free_bytes = host_available_memory();
  return d;
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
  tp::ControlClient& client = *client_;
  const Clock::time_point started = Clock::now();
  Clock::time_point next_heartbeat = started;
  std::deque<tp::Message> sending;
  auto flush = [&]() -> Status {
    {
      std::lock_guard lock(mu_);
      sending.swap(outbox_);
    }
    for (tp::Message& m : sending) {
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
      (void)client.send(tp::Heartbeat{stage_, trace_now_us()});
      next_heartbeat = now + options_.heartbeat_interval;
    }
    auto got = client.receive(milliseconds(20));
    if (!got.ok()) {
      fail(got.status());
      break;
    }
    if (got->has_value()) {
      tp::Message& m = **got;
      if (std::holds_alternative<tp::Heartbeat>(m)) continue;
      const bool shutdown = std::holds_alternative<tp::Shutdown>(m);
      const bool reset =
          std::holds_alternative<tp::Assign>(m) || std::holds_alternative<tp::AllocateKv>(m);
      {
        std::lock_guard lock(mu_);
        if (reset) {
          // Plans issued before a reset will never get their activations: forget them.
          std::erase_if(
              inbox_, [](const Inbound& i) { return std::holds_alternative<tp::Plan>(i.message); });
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

Status StageWorker::load(const tp::Assign& a) {
  const Clock::time_point t0 = Clock::now();
  stage_ = a.stage;
  if (a.n_stages < 1 || a.stage < 0 || a.stage >= a.n_stages) {
    return invalid_argument("bad assignment: stage {} of {}", a.stage, a.n_stages);
  }
  const int32_t threads = options_.threads > 0 ? options_.threads : a.threads;
  if (threads > 0) cpu::set_num_threads(threads);

  const std::filesystem::path path = a.model_path;
  std::error_code ec;
  model::ModelConfig config;
  int64_t layer_begin = a.layer_begin, layer_end = a.layer_end;
  std::optional<partition::StageShard> shard;
  std::optional<model::ModelSource> src;
  std::unique_ptr<model::WeightSource> random;
  const model::WeightSource* weights = nullptr;  // null: random weights made on the GPU
  if (a.random_weights) {
    PP_ASSIGN_OR_RETURN(config, model::config_from_path(path));
    if (gpu_device_ < 0) {
      PP_ASSIGN_OR_RETURN(random, model::random_weights(config, a.random_seed));
      weights = random.get();
    }
  } else if (std::filesystem::is_directory(path, ec) &&
             std::filesystem::exists(path / partition::kManifestName, ec)) {
    PP_ASSIGN_OR_RETURN(shard, partition::open_stage(path, a.stage));
    if (shard->n_stages != a.n_stages) {
      return invalid_argument("partition '{}' has {} stages, the coordinator runs {}",
                              path.string(), shard->n_stages, a.n_stages);
    }
    if (a.layer_end > 0 &&
        (shard->layers.begin != a.layer_begin || shard->layers.end != a.layer_end)) {
      return invalid_argument("partition '{}' stage {} holds layers [{}, {}), assigned [{}, {})",
                              path.string(), a.stage, shard->layers.begin, shard->layers.end,
                              a.layer_begin, a.layer_end);
    }
    config = shard->config;
    weights = shard->weights.get();
    layer_begin = shard->layers.begin;
    layer_end = shard->layers.end;
  } else {
    PP_ASSIGN_OR_RETURN(src, model::open_model(path));
    config = src->config;
    weights = src->weights.get();
  }
  if (gpu_device_ >= 0) {
    if (layer_end <= layer_begin || (layer_begin == 0) != (a.stage == 0) ||
        (layer_end == config.n_layer) != (a.stage == a.n_stages - 1)) {
      return invalid_argument("stage {} of {} was assigned layers [{}, {}) of {}", a.stage,
                              a.n_stages, layer_begin, layer_end, config.n_layer);
    }
    return load_gpu(a, config, weights, layer_begin, layer_end);
  }
  PP_ASSIGN_OR_RETURN(model_, model::StageModel::load(config, *weights, layer_begin, layer_end));
  first_ = model_->has_embedding();
  last_ = model_->has_lm_head();
  if (first_ != (a.stage == 0) || last_ != (a.stage == a.n_stages - 1)) {
    return invalid_argument("stage {} of {} was assigned layers [{}, {}) of {}", a.stage,
                            a.n_stages, model_->layer_begin(), model_->layer_end(),
                            model_->config().n_layer);
  }
  n_embd_ = model_->config().n_embd;
  n_vocab_ = model_->config().n_vocab;
  block_size_ = a.kv_block_size;
  if (!last_) {
    if (a.next_data_endpoint.empty()) {
      return invalid_argument("stage {} of {} was not told where stage {} listens", a.stage,
                              a.n_stages, a.stage + 1);
    }
    PP_ASSIGN_OR_RETURN(auto sender, tp::ActivationSender::connect(a.next_data_endpoint));
    sender_.emplace(std::move(sender));
  }

  const int64_t per_block = model_->kv_bytes_per_block(block_size_);
  const int64_t budget = options_.kv_memory > 0 ? options_.kv_memory : host_available_memory() / 4;
  tp::Loaded loaded;
  loaded.stage = stage_;
  loaded.kv_bytes_per_block = per_block;
  loaded.kv_blocks_capacity = per_block > 0 ? budget / per_block : 0;
  loaded.load_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info("stage {}: loaded layers [{}, {}) of '{}' in {:.2f} s; room for {} KV blocks",
               stage_, model_->layer_begin(), model_->layer_end(), path.string(),
               loaded.load_seconds, loaded.kv_blocks_capacity);
  post(loaded);
  return ok_status();
}

Status StageWorker::load_gpu(const tp::Assign& a, const model::ModelConfig& config,
                             const model::WeightSource* weights, int64_t layer_begin,
                             int64_t layer_end) {
  const Clock::time_point t0 = Clock::now();
  model::GpuStageOptions o;
  o.device = gpu_device_;
  o.max_tokens = std::max(a.max_batch_tokens, 1);
  o.max_seqs = std::max(a.max_running, 1);
  o.cuda_graphs = a.cuda_graphs;
  std::unique_ptr<model::GpuStageModel> m;
  if (weights) {
    PP_ASSIGN_OR_RETURN(m, model::GpuStageModel::load(config, *weights, layer_begin, layer_end, o));
  } else {
    PP_ASSIGN_OR_RETURN(
        m, model::GpuStageModel::random(config, a.random_seed, layer_begin, layer_end, o));
  }
  first_ = m->has_embedding();
  last_ = m->has_lm_head();
  n_embd_ = config.n_embd;
  n_vocab_ = config.n_vocab;
  block_size_ = a.kv_block_size;
  const int64_t weight_bytes = m->weight_bytes();
  if ((!first_ && a.nccl_id_from_previous.empty()) || (!last_ && a.nccl_id_to_next.empty())) {
    return invalid_argument(
        "stage {} of {} on cuda:{} was given no NCCL link to its neighbours "
        "(every stage of a GPU pipeline must run on a GPU)",
        a.stage, a.n_stages, gpu_device_);
  }
  GpuStageLinks links{a.nccl_id_from_previous, a.nccl_id_to_next};
  PP_ASSIGN_OR_RETURN(gpu_, GpuStage::create(std::move(m), a.stage, a.n_stages, links,
                                             [this](tp::Message msg) { post(std::move(msg)); }));
  const double fraction = options_.mem_fraction > 0 ? options_.mem_fraction : a.mem_fraction;
  tp::Loaded loaded;
  loaded.stage = stage_;
  loaded.kv_bytes_per_block = gpu_->model().kv_bytes_per_block(block_size_);
  PP_ASSIGN_OR_RETURN(loaded.kv_blocks_capacity, gpu_->kv_capacity(block_size_, fraction));
  loaded.load_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info(
      "stage {}: loaded layers [{}, {}) of '{}' on cuda:{} in {:.2f} s ({:.2f} GiB of "
      "weights); room for {} KV blocks at --mem-fraction {:.2f}",
      stage_, layer_begin, layer_end, a.model_path, gpu_device_, loaded.load_seconds,
      double(weight_bytes) / double(1 << 30), loaded.kv_blocks_capacity, fraction);
  post(loaded);
  return ok_status();
}

// The GPU path of run_plan, once the batch is built: sampling specs for the last stage, then
// everything is queued (GpuStage posts the tokens and the timing when the GPU is done).
Status StageWorker::run_plan_gpu(const tp::Plan& plan, int64_t arrived_us) {
  gpu_specs_.clear();
  gpu_rows_.clear();
  for (const tp::PlanEntry* e : sampled_) {
    const tp::WireSampling& w = e->sampling;
    model::GpuSampleSpec spec;
    spec.temperature = w.temperature;
    spec.top_k = std::max(w.top_k, 0);
    spec.top_p = w.top_p;
    spec.min_p = w.min_p;
    spec.seed = w.seed;
    spec.step = e->sample_step;
    if (has_penalties(w)) {
      Mirror& m = mirrors_[e->request_id];
      m.penalty_output = e->penalty_output_ids;
      spec.repetition = w.repetition_penalty;
      spec.presence = w.presence_penalty;
      spec.frequency = w.frequency_penalty;
      spec.prompt_ids = m.penalty_prompt;
      spec.output_ids = m.penalty_output;
    }
    gpu_specs_.push_back(spec);
    gpu_rows_.push_back({e->request_id, w.top_logprobs});
  }
  return gpu_->run(plan, batch_, gpu_specs_, gpu_rows_, arrived_us)
      .with_context(fmt::format("stage {}: plan {}", stage_, plan.seq));
}

// A later Assign (the coordinator recovering from a lost stage): the same stage keeps its
// layers; only where its activations go may have changed (a restarted next stage listens
// elsewhere). Dropping the old sender also frees the send buffers held by its dead link.
Status StageWorker::reassign(const tp::Assign& a) {
  if (a.stage != stage_) {
    return invalid_argument("stage {} was reassigned as stage {}", stage_, a.stage);
  }
  if (gpu_) {
    return unimplemented("stage {} on cuda:{} cannot re-form its NCCL links after a lost stage",
                         stage_, gpu_device_);
  }
  if (last_ || (sender_ && sender_->endpoint() == a.next_data_endpoint)) return ok_status();
  sender_.reset();
  PP_ASSIGN_OR_RETURN(auto sender, tp::ActivationSender::connect(a.next_data_endpoint));
  sender_.emplace(std::move(sender));
  spdlog::info("stage {}: now sending to '{}'", stage_, a.next_data_endpoint);
  return ok_status();
}

Status StageWorker::sample(const tp::Plan& plan, const std::vector<float>& logits,
                           tp::Tokens* out) {
  out->seq = plan.seq;
  out->group = plan.group;
  out->tokens.clear();
  const size_t V = size_t(n_vocab_);
  PP_ASSERT(logits.size() >= sampled_.size() * V);
  for (size_t i = 0; i < sampled_.size(); ++i) {
    const tp::PlanEntry& e = *sampled_[i];
    const tp::WireSampling& w = e.sampling;
    const float* row = logits.data() + i * V;
    cpu::PenaltyParams pen;
    if (has_penalties(w)) {
      Mirror& m = mirrors_[e.request_id];
      m.penalty_output = e.penalty_output_ids;
      pen = {.prompt_ids = m.penalty_prompt.data(),
             .n_prompt = int64_t(m.penalty_prompt.size()),
             .output_ids = m.penalty_output.data(),
             .n_output = int64_t(m.penalty_output.size()),
             .repetition = w.repetition_penalty,
             .presence = w.presence_penalty,
             .frequency = w.frequency_penalty};
    }
    cpu::SampleResult r =
        cpu::sample_with_penalties(pen,
                                   {.logits = row,
                                    .n_vocab = n_vocab_,
                                    .temperature = w.temperature,
                                    .top_k = std::max(w.top_k, 0),
                                    .top_p = w.top_p,
                                    .min_p = w.min_p,
                                    .seed = w.seed,
                                    .step = e.sample_step,
                                    .n_top_logprobs = std::max(w.top_logprobs, 0)},
                                   penalized_, sample_scratch_);
    tp::SampledToken t;
    t.request_id = e.request_id;
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
  return ok_status();
}

Status StageWorker::run_plan(const tp::Plan& plan, int64_t arrived_us) {
  const bool have_kv = gpu_ ? gpu_->model().kv_blocks() > 0 : (model_ && model_->kv());
  if (!have_kv) {
    return make_error(StatusCode::kFailedPrecondition,
                      "stage {}: plan {} arrived before the KV pool was allocated", stage_,
                      plan.seq);
  }
  // Metadata first: the tables and the batch, before the activations are taken.
  for (uint64_t id : plan.released) mirrors_.erase(id);
  batch_.clear();
  sampled_.clear();
  for (const tp::PlanEntry& e : plan.entries) {
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
    if (want_logits) sampled_.push_back(&e);
  }
  const int64_t kv_block_size = gpu_ ? gpu_->model().kv_block_size() : model_->kv()->block_size();
  const int64_t kv_blocks = gpu_ ? gpu_->model().kv_blocks() : model_->kv()->n_blocks();
  PP_RETURN_IF_ERROR(batch_.validate(kv_block_size, kv_blocks, first_ ? n_vocab_ : 0)
                         .with_context(fmt::format("stage {}: plan {}", stage_, plan.seq)));
  if (gpu_) return run_plan_gpu(plan, arrived_us);
  const int32_t n_tokens = int32_t(batch_.n_tokens());

  // The activations of this plan from the previous stage.
  std::optional<size_t> in_slot;
  std::span<const float> input;
  if (!first_) {
    in_slot = recv_ring_.acquire(stop_, &reset_);
    if (!in_slot) return reset_.load() ? abandoned(plan.seq) : failure();
    std::vector<float>& buf = recv_ring_.at(*in_slot);
    buf.resize(size_t(n_tokens) * size_t(n_embd_));
    for (;;) {
      auto got = receiver_->receive(plan.seq, buf, milliseconds(100));
      if (!got.ok()) {
        recv_ring_.release(*in_slot);
        return got.status().with_context(fmt::format("stage {}", stage_));
      }
      if (got->has_value()) {
        const tp::ActivationHeader& h = **got;
        if (h.n_tokens != n_tokens || h.n_embd != n_embd_) {
          recv_ring_.release(*in_slot);
          return data_loss("stage {}: activation of seq {} is [{}, {}], the plan says [{}, {}]",
                           stage_, plan.seq, h.n_tokens, h.n_embd, n_tokens, n_embd_);
        }
        break;
      }
      if (reset_.load()) {
        recv_ring_.release(*in_slot);
        return abandoned(plan.seq);
      }
      if (stopped() || shutdown_received_.load()) {
        recv_ring_.release(*in_slot);
        Status f = failure();
        return f.ok() ? make_error(StatusCode::kCancelled, "stage {} stopped", stage_) : f;
      }
    }
    input = buf;
  }

  tp::StageTiming timing;
  timing.stage = stage_;
  timing.seq = plan.seq;
  timing.group = plan.group;
  timing.n_tokens = n_tokens;
  timing.queued_us = arrived_us;
  timing.start_us = trace_now_us();

  if (last_) {
    Status s = model_->forward(batch_, input, logits_);
    if (in_slot) recv_ring_.release(*in_slot);
    PP_RETURN_IF_ERROR(s.with_context(fmt::format("stage {}: plan {}", stage_, plan.seq)));
    tp::Tokens tokens;
    PP_RETURN_IF_ERROR(sample(plan, logits_, &tokens));
    timing.end_us = trace_now_us();
    post(std::move(tokens));
    timing.sent_us = trace_now_us();
    post(timing);
    return ok_status();
  }

  std::optional<size_t> out_slot = send_ring_.acquire(stop_, &reset_);
  if (!out_slot) {
    if (in_slot) recv_ring_.release(*in_slot);
    return reset_.load() ? abandoned(plan.seq) : failure();
  }
  std::vector<float>& out = send_ring_.at(*out_slot);
  Status s = model_->forward(batch_, input, out);
  if (in_slot) recv_ring_.release(*in_slot);
  if (!s.ok()) {
    send_ring_.release(*out_slot);
    return s.with_context(fmt::format("stage {}: plan {}", stage_, plan.seq));
  }
  timing.end_us = trace_now_us();
  const size_t slot = *out_slot;
  tp::ActivationHeader h{plan.seq, plan.group, n_tokens, int32_t(n_embd_)};
  // The send keeps the buffer until ZeroMQ has written it; then the slot is free again and the
  // timing, with the moment the bytes left, goes to the coordinator.
  Status sent = sender_->send(h, std::span<const float>(out.data(), h.n_floats()),
                              [this, slot, timing]() mutable {
                                timing.sent_us = trace_now_us();
                                send_ring_.release(slot);
                                post(timing);
                              });
  return sent.with_context(fmt::format("stage {}", stage_));
}

Status StageWorker::compute() {
  // 1. The assignment, and loading.
  PP_ASSIGN_OR_RETURN(Inbound in, next_inbound());
  if (const auto* bye = std::get_if<tp::Shutdown>(&in.message)) {
    return make_error(StatusCode::kFailedPrecondition,
                      "the coordinator at '{}' refused this stage: {}", options_.coordinator,
                      bye->reason);
  }
  if (!std::holds_alternative<tp::Assign>(in.message)) {
    return make_error(StatusCode::kFailedPrecondition,
                      "expected Assign from the coordinator, got {}", tp::message_name(in.message));
  }
  PP_RETURN_IF_ERROR(load(std::get<tp::Assign>(in.message)));

  // 2. Plans, in issue order, with (re)allocations of the KV pool in between.
  for (;;) {
    PP_ASSIGN_OR_RETURN(Inbound next, next_inbound());
    tp::Message& m = next.message;
    if (std::holds_alternative<tp::Shutdown>(m)) {
      spdlog::info("stage {}: shutting down ({})", stage_, std::get<tp::Shutdown>(m).reason);
      return ok_status();
    }
    if (auto* a = std::get_if<tp::Assign>(&m)) {
      PP_RETURN_IF_ERROR(reassign(*a));
      continue;
    }
    if (auto* a = std::get_if<tp::AllocateKv>(&m)) {
      reset_ = false;
      PP_RETURN_IF_ERROR((gpu_ ? gpu_->allocate_kv(a->n_blocks, a->block_size)
                               : model_->allocate_kv(a->n_blocks, a->block_size))
                             .with_context(fmt::format("stage {}", stage_)));
      block_size_ = a->block_size;
      mirrors_.clear();
      post(tp::Ready{stage_});
      continue;
    }
    if (auto* plan = std::get_if<tp::Plan>(&m)) {
      Status s = run_plan(*plan, next.arrived_us);
      if (!s.ok() && s.code() == StatusCode::kCancelled && reset_.load()) continue;  // abandoned
      if (!s.ok()) {
        // Told to shut down while waiting for activations that will never come: a clean end.
        if (s.code() == StatusCode::kCancelled && shutdown_received_.load()) return ok_status();
        if (!stop_.load()) {
          post(tp::StageError{stage_, plan->seq, s.message()});
          error_reported_ = true;
        }
        return s;
      }
      continue;
    }
    return make_error(StatusCode::kFailedPrecondition, "stage {}: unexpected {} message", stage_,
                      tp::message_name(m));
  }
}

Status StageWorker::run() {
  PP_ASSIGN_OR_RETURN(gpu_device_, parse_device(options_.device));
  kernels::DeviceInfo device = cpu_device_info();
  if (gpu_device_ >= 0) {
    if (!kernels::built_with_cuda()) {
      return unimplemented("device '{}': this pp-stage was built without CUDA", options_.device);
    }
    PP_ASSIGN_OR_RETURN(device, kernels::cuda_device(gpu_device_));
  }
  if (options_.threads > 0) cpu::set_num_threads(options_.threads);
  stage_ = options_.stage;
  PP_ASSIGN_OR_RETURN(data_endpoint_, data_endpoint_for(options_));
  {
    PP_ASSIGN_OR_RETURN(auto receiver, tp::ActivationReceiver::bind(data_endpoint_));
    receiver_.emplace(std::move(receiver));
    data_endpoint_ = receiver_->endpoint();
  }
  PP_ASSIGN_OR_RETURN(auto client, tp::ControlClient::connect(options_.coordinator));
  client_.emplace(std::move(client));
  PP_RETURN_IF_ERROR(client_->wait_connected(options_.connect_timeout)
                         .with_context("cannot reach the coordinator"));
  io_waker_ = client_->waker();

  tp::Hello hello;
  hello.stage = options_.stage;
  hello.host = host_name();
  hello.pid = int32_t(::getpid());
  hello.device = gpu_device_ >= 0 ? fmt::format("cuda:{}", gpu_device_) : "cpu";
  hello.device_name = device.name;
  hello.device_total_bytes = device.total_bytes;
  hello.device_free_bytes = device.free_bytes;
  hello.data_endpoint = data_endpoint_;
  post(hello);
  io_thread_ = std::thread([this] { io_loop(); });

  Status s = compute();
  if (gpu_) {
    // The last tokens and timings go out before the control socket closes. A link whose
    // neighbour is gone can hold a receive forever: then leave the GPU state to the exit.
    if (!gpu_->drain_for(milliseconds(3000))) {
      spdlog::warn("stage {}: GPU work still queued at exit; not waiting for it", stage_);
      (void)gpu_.release();
    } else {
      gpu_.reset();
    }
  }
  if (!s.ok() && !error_reported_ && s.code() != StatusCode::kCancelled &&
      s.code() != StatusCode::kUnavailable) {
    // A failure of this stage: tell the coordinator (if compute did not already).
    post(tp::StageError{stage_, 0, s.message()});
  }
  stop_ = true;
  io_waker_.wake();
  io_thread_.join();
  sender_.reset();  // lingers until queued activations are out; releases the send ring
  if (s.ok()) return ok_status();
  if (s.code() == StatusCode::kCancelled && options_.interrupted && options_.interrupted->load()) {
    return make_error(StatusCode::kCancelled, "stage {} interrupted", stage_);
  }
  return s;
}

}  // namespace

int64_t host_available_memory() { return meminfo_field("MemAvailable:"); }
int64_t host_total_memory() { return meminfo_field("MemTotal:"); }

Status run_stage_worker(const StageWorkerOptions& options) {
  StageWorker worker(options);
  return worker.run();
}

}  // namespace pp::pipeline
