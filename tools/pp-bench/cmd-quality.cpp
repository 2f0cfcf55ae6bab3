// `pp-bench quality`: what quantization costs in accuracy. The model is loaded whole on one
// device twice, as stored (the reference) and quantized (--quantization), and both read the same
// sequence of random token ids teacher-forced; at every position the two next-token
// distributions are compared: top-1 agreement, KL(reference || quantized) mean, p99 and max.
// The numbers are printed and recorded in the run store as an offline run (params mode
// "quality").
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "pp/kernels/gpu.h"
#include "pp/model/gpu-stage-model.h"
#include "pp/model/quantization.h"
#include "pp/model/random-weights.h"
#include "pp/model/stage-model.h"
#include "pp/partition/model-resolver.h"
#include "pp/store/run-store.h"

namespace pp::bench_tool {

namespace {

constexpr int64_t kBlock = 16;

model::Batch one_sequence(const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size()), n_blocks = (T + kBlock - 1) / kBlock;
  std::vector<int32_t> table(static_cast<size_t>(n_blocks));
  std::iota(table.begin(), table.end(), 0);
  model::Batch b;
  b.add_sequence(ids, 0, table, false);
  b.logit_rows.resize(size_t(T));
  std::iota(b.logit_rows.begin(), b.logit_rows.end(), 0);
  return b;
}

// Teacher-forced logits [T, n_vocab] of `ids` from the whole model on the CPU.
Result<std::vector<float>> cpu_logits(const partition::StageWeights& w,
                                      const std::vector<int32_t>& ids) {
  std::shared_ptr<const model::WeightSource> src = w.weights;
  if (!src) {
    PP_ASSIGN_OR_RETURN(std::unique_ptr<model::WeightSource> random,
                        model::random_weights(w.config, *w.random_seed));
    src = model::quantize_on_load(std::move(random), w.config, w.quantization);
  }
  PP_ASSIGN_OR_RETURN(auto m, model::StageModel::load(w.config, *src, 0, w.config.n_layer));
  const int64_t T = int64_t(ids.size());
  PP_RETURN_IF_ERROR(m->allocate_kv((T + kBlock - 1) / kBlock, kBlock));
  std::vector<float> out;
  PP_RETURN_IF_ERROR(m->forward(one_sequence(ids), {}, out));
  return out;
}

// The same on GPU `device`.
Result<std::vector<float>> gpu_logits(const partition::StageWeights& w,
                                      const std::vector<int32_t>& ids, int device) {
  const int64_t T = int64_t(ids.size()), V = w.config.n_vocab;
  model::GpuStageOptions o;
  o.device = device;
  o.max_tokens = T;
  o.max_seqs = 1;
  o.max_logit_rows = T;
  o.cuda_graphs = false;
  o.quantization = w.quantization;
  std::unique_ptr<model::GpuStageModel> m;
  if (w.weights) {
    PP_ASSIGN_OR_RETURN(m,
                        model::GpuStageModel::load(w.config, *w.weights, 0, w.config.n_layer, o));
  } else {
    PP_ASSIGN_OR_RETURN(
        m, model::GpuStageModel::random(w.config, *w.random_seed, 0, w.config.n_layer, o));
  }
  PP_RETURN_IF_ERROR(m->allocate_kv((T + kBlock - 1) / kBlock, kBlock));
  PP_RETURN_IF_ERROR(m->forward(one_sequence(ids), nullptr, nullptr));
  const size_t bytes = size_t(T * V) * sizeof(float);
  PP_ASSIGN_OR_RETURN(kernels::gpu::HostBuffer host, kernels::gpu::HostBuffer::allocate(bytes));
  PP_RETURN_IF_ERROR(kernels::gpu::copy_async(host.data(), m->logits(), bytes, m->stream()));
  PP_RETURN_IF_ERROR(m->stream().synchronize());
  std::vector<float> out(size_t(T * V));
  std::copy_n(host.as<float>(), out.size(), out.begin());
  return out;
}

// log-softmax of one row, in double.
void log_softmax(const float* x, int64_t n, std::vector<double>& out) {
  out.resize(size_t(n));
  const double mx = *std::max_element(x, x + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - mx);
  const double lse = mx + std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = double(x[i]) - lse;
}

}  // namespace

Status quality_command(const QualityArgs& a) {
  if (a.tokens < 1 || a.tokens > 32768) {
    return invalid_argument("--tokens must be in [1, 32768], not {}", a.tokens);
  }
  if (a.device != "cpu" && a.device != "cuda") {
    return invalid_argument("--device must be cpu or cuda, not '{}'", a.device);
  }
  PP_ASSIGN_OR_RETURN(model::Quantization q, model::parse_quantization(a.quantization));
  if (q == model::Quantization::kNone) {
    return invalid_argument("--quantization none compares the model with itself; give fp8");
  }
  PP_ASSIGN_OR_RETURN(partition::ResolvedModel ref_model,
                      partition::resolve_model(a.model, {.random_weights = a.random_weights}));
  if (ref_model.kind() == partition::SourceKind::kPartition) {
    return invalid_argument(
        "'{}' is a partition; quality loads a whole model (a folder, .gguf or "
        "a config with --random-weights)",
        a.model);
  }
  PP_ASSIGN_OR_RETURN(
      partition::ResolvedModel q_model,
      partition::resolve_model(a.model, {.random_weights = a.random_weights, .quantization = q}));
  const model::ModelConfig& c = ref_model.config();
  const partition::LayerRange all{0, c.n_layer};
  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int32_t> id(0, int32_t(c.n_vocab - 1));
  std::vector<int32_t> ids(size_t(a.tokens));
  for (int32_t& t : ids) t = id(rng);

  auto logits = [&](const partition::ResolvedModel& m) -> Result<std::vector<float>> {
    PP_ASSIGN_OR_RETURN(partition::StageWeights w, m.open_stage(0, 1, all));
    if (a.device == "cpu") return cpu_logits(w, ids);
    return gpu_logits(w, ids, a.gpu);
  };
  spdlog::info("quality: reference ({}) on {}", ref_model.path().string(), a.device);
  PP_ASSIGN_OR_RETURN(std::vector<float> ref, logits(ref_model));
  spdlog::info("quality: {} on {}", model::quantization_name(q), a.device);
  PP_ASSIGN_OR_RETURN(std::vector<float> got, logits(q_model));

  const int64_t T = a.tokens, V = c.n_vocab;
  std::vector<double> kl(static_cast<size_t>(T)), lp, lq;
  int64_t agree = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* r = ref.data() + t * V;
    const float* g = got.data() + t * V;
    agree += std::max_element(r, r + V) - r == std::max_element(g, g + V) - g;
    log_softmax(r, V, lp);
    log_softmax(g, V, lq);
    double d = 0;
    for (int64_t i = 0; i < V; ++i) d += std::exp(lp[size_t(i)]) * (lp[size_t(i)] - lq[size_t(i)]);
    kl[size_t(t)] = std::max(d, 0.0);
  }
  std::vector<double> sorted = kl;
  std::sort(sorted.begin(), sorted.end());
  const double mean = std::accumulate(kl.begin(), kl.end(), 0.0) / double(T);
  const double p99 = sorted[size_t(std::min<int64_t>(T - 1, int64_t(std::ceil(0.99 * T)) - 1))];
  const double top1 = double(agree) / double(T);
  std::printf("============ Quantization quality ============\n");
  std::printf("%-32s %s\n", "Model:", a.model.c_str());
  std::printf("%-32s %s\n", "Quantization:", model::quantization_name(q));
  std::printf("%-32s %s\n", "Device:", a.device.c_str());
  std::printf("%-32s %lld\n", "Positions (teacher-forced):", static_cast<long long>(T));
  std::printf("%-32s %.4f\n", "Top-1 agreement:", top1);
  std::printf("%-32s %.6f\n", "KL mean (nats):", mean);
  std::printf("%-32s %.6f\n", "KL p99 (nats):", p99);
  std::printf("%-32s %.6f\n", "KL max (nats):", sorted.back());
  std::printf("==============================================\n");
  std::fflush(stdout);

  BenchRecord rec;
  rec.kind = BenchKind::kOffline;
  rec.label = a.label;
  nlohmann::json params;
  params["mode"] = "quality";
  params["model"] = a.model;
  if (a.random_weights) params["random_weights"] = *a.random_weights;
  params["quantization"] = model::quantization_name(q);
  params["device"] = a.device;
  params["tokens"] = T;
  params["seed"] = a.seed;
  rec.params_json = params.dump();
  rec.metrics["top1_agreement"] = {top1, ""};
  rec.metrics["kl_mean"] = {mean, "nats"};
  rec.metrics["kl_p99"] = {p99, "nats"};
  rec.metrics["kl_max"] = {sorted.back(), "nats"};
  PP_ASSIGN_OR_RETURN(auto store, RunStore::open(a.db));
  PP_ASSIGN_OR_RETURN(const int64_t run_id, store->record_bench_run(rec));
  std::printf("recorded as run %lld\n", static_cast<long long>(run_id));
  return ok_status();
}

}  // namespace pp::bench_tool
