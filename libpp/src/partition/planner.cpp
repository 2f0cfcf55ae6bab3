// The planner: even, cost (exact dynamic programming over contiguous ranges) and manual plans,
// the per-stage cost model, the device-memory check and the plan table. See planner.h for the
// model itself.
#include "pp/partition/planner.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <span>

#include "pp/assert.h"
#include "pp/model/quantization.h"
#include "pp/partition/byte-size.h"

namespace pp::partition {

using model::DType;
using model::ModelConfig;

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::kEven:
      return "even";
    case Strategy::kCost:
      return "cost";
    case Strategy::kManual:
      return "manual";
  }
  return "?";
}

Result<Strategy> parse_strategy(std::string_view text) {
  if (text == "even") return Strategy::kEven;
  if (text == "cost") return Strategy::kCost;
  if (text == "manual") return Strategy::kManual;
  return invalid_argument("unknown strategy '{}' (expected even, cost or manual)", text);
}

Result<DType> parse_shard_dtype(std::string_view text) {
  if (text == "f32" || text == "float32") return DType::kF32;
  if (text == "f16" || text == "float16") return DType::kF16;
  if (text == "bf16" || text == "bfloat16") return DType::kBF16;
  if (text == "fp8" || text == "f8_e4m3") return DType::kF8E4M3;
  return invalid_argument("unknown dtype '{}' (expected bf16, f16, f32 or fp8)", text);
}

const char* shard_dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kF8E4M3:
      return "fp8";
    default:
      return "?";
  }
}

int64_t shard_dtype_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

uint64_t shard_tensor_bytes(const ModelConfig& c, const model::TensorSpec& t, DType dtype) {
  if (dtype != DType::kF8E4M3 || !model::quantized_on_load(t)) {
    return uint64_t(t.numel()) * uint64_t(shard_dtype_bytes(dtype));
  }
  // One byte per element plus f32 scales: the checkpoint's blocks when it is block FP8, else
  // one per output channel (what --dtype fp8 writes).
  using Strategy = model::WeightQuantConfig::Strategy;
  kernels::ScaleKind kind = kernels::ScaleKind::kPerChannel;
  if (c.quant.quantized() && c.quant.strategy == Strategy::kBlock) {
    kind = kernels::ScaleKind::kBlock128x128;
  } else if (c.quant.quantized() && c.quant.strategy == Strategy::kTensor) {
    kind = kernels::ScaleKind::kPerTensor;
  }
  return uint64_t(t.numel()) + 4 * uint64_t(kernels::scale_count(kind, t.rows(), t.cols()));
}

std::string format_layer_range(LayerRange r) {
  if (r.size() == 1) return fmt::format("{}", r.begin);
  return fmt::format("{}-{}", r.begin, r.end - 1);
}

namespace {

Result<int64_t> parse_layer_index(std::string_view s, std::string_view whole) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < 0) {
    return invalid_argument("invalid layer range '{}' in --layers '{}'", s, whole);
  }
  return v;
}

}  // namespace

Result<std::vector<LayerRange>> parse_layer_ranges(std::string_view text, int64_t n_layer,
                                                   int n_stages) {
  std::vector<LayerRange> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = text.substr(pos, comma - pos);
    if (item.empty()) return invalid_argument("empty layer range in --layers '{}'", text);
    size_t dash = item.find('-');
    LayerRange r;
    if (dash == std::string_view::npos) {
      PP_ASSIGN_OR_RETURN(r.begin, parse_layer_index(item, text));
      r.end = r.begin + 1;
    } else {
      PP_ASSIGN_OR_RETURN(r.begin, parse_layer_index(item.substr(0, dash), text));
      PP_ASSIGN_OR_RETURN(int64_t last, parse_layer_index(item.substr(dash + 1), text));
      if (last < r.begin) {
        return invalid_argument("layer range '{}' ends before it starts", item);
      }
      r.end = last + 1;
    }
    if (r.end > n_layer) {
      return invalid_argument("layer range '{}' is out of range: the model has layers 0-{}", item,
                              n_layer - 1);
    }
    out.push_back(r);
    pos = comma + 1;
  }
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i].begin < out[i - 1].begin) {
      return invalid_argument("layer ranges '{}' and '{}' are out of order",
                              format_layer_range(out[i - 1]), format_layer_range(out[i]));
    }
    if (out[i].begin < out[i - 1].end) {
      return invalid_argument("layer ranges '{}' and '{}' overlap", format_layer_range(out[i - 1]),
                              format_layer_range(out[i]));
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t expected = i == 0 ? 0 : out[i - 1].end;
    if (out[i].begin > expected) {
      LayerRange gap{expected, out[i].begin};
      return invalid_argument("--layers leaves out layer{} {}", gap.size() > 1 ? "s" : "",
                              format_layer_range(gap));
    }
  }
  if (out.back().end < n_layer) {
    LayerRange gap{out.back().end, n_layer};
    return invalid_argument("--layers leaves out layer{} {} (the model has {} layers)",
                            gap.size() > 1 ? "s" : "", format_layer_range(gap), n_layer);
  }
  if (int(out.size()) != n_stages) {
    return invalid_argument("--layers gives {} ranges but --pp is {}", out.size(), n_stages);
  }
  return out;
}

model::StageParts stage_parts(const StagePlan& s) {
  return {.layer_begin = s.layers.begin,
          .layer_end = s.layers.end,
          .embedding = s.has_embedding,
          .head = s.has_lm_head};
}

namespace {

// What one step touches of a layer's linear weights: all of a dense layer's; of an MoE layer's
// experts only the n_expert_used chosen per token (the router and attention are always run).
double touched_matrix_params(const ModelConfig& c, std::span<const model::TensorSpec> tensors) {
  double n = 0;
  for (const model::TensorSpec& t : tensors) {
    if (!t.is_matrix()) continue;
    const bool expert =
        t.slot == model::WeightSlot::kExpertGateUp || t.slot == model::WeightSlot::kExpertDown;
    n += expert ? double(t.numel()) * double(c.n_expert_used) / double(c.n_expert)
                : double(t.numel());
  }
  return n;
}

// One layer's share of a stage's cost.
struct LayerCost {
  int64_t params = 0;
  double flops_per_token = 0;
  uint64_t bytes = 0;
};

LayerCost layer_cost(const ModelConfig& c, int64_t il, DType dtype, const CostModel& m) {
  const std::vector<model::TensorSpec> tensors = model::layer_tensors(c, il);
  LayerCost out;
  out.params = model::tensor_params(tensors);
  out.flops_per_token = 2.0 * touched_matrix_params(c, tensors) +
                        4.0 * double(c.q_dim()) * double(m.attention_context);
  for (const model::TensorSpec& t : tensors) out.bytes += shard_tensor_bytes(c, t, dtype);
  return out;
}

// Every layer's cost. The layers of a family differ only in their MLP (dense or MoE, per
// ModelConfig::layer_is_moe), so each kind's table is read once: the planner's dynamic program
// asks for many ranges, and an MoE layer lists hundreds of expert tensors.
std::vector<LayerCost> layer_costs(const ModelConfig& c, DType dtype, const CostModel& m) {
  std::vector<LayerCost> out(size_t(c.n_layer));
  int64_t dense = -1, moe = -1;
  for (int64_t il = 0; il < c.n_layer; ++il) {
    int64_t& first = c.layer_is_moe(il) ? moe : dense;
    out[size_t(il)] = first < 0 ? layer_cost(c, il, dtype, m) : out[size_t(first)];
    if (first < 0) first = il;
  }
  return out;
}

StagePlan stage_cost_of(const ModelConfig& c, std::span<const LayerCost> costs, LayerRange layers,
                        bool has_embedding, bool has_lm_head, DType dtype, const CostModel& m) {
  StagePlan s;
  s.layers = layers;
  s.has_embedding = has_embedding;
  s.has_lm_head = has_lm_head;
  const int64_t table = c.n_vocab * c.n_embd;
  // The edges' tensors from the table (an empty layer range): the embedding, the final norm and
  // the lm_head, which a tied model shares with the embedding only when the same stage holds both.
  const model::StageTensors edges = model::stage_tensors(
      c, {layers.begin, layers.begin, has_embedding, has_lm_head}, c.tie_word_embeddings);
  s.params = model::tensor_params(edges.tensors);
  s.flops_per_token = 0;
  s.bytes = 0;
  // Memory holds every expert; the FLOPs count the touched ones. The step time below still
  // streams every expert's bytes, which holds for large batches (they touch every expert) and
  // overstates a small batch's MoE step.
  for (int64_t il = layers.begin; il < layers.end; ++il) {
    s.params += costs[size_t(il)].params;
    s.flops_per_token += costs[size_t(il)].flops_per_token;
    s.bytes += costs[size_t(il)].bytes;
  }
  if (has_lm_head) s.flops_per_token += 2.0 * double(table) + 5.0 * double(c.n_vocab);
  for (const model::TensorSpec& t : edges.tensors) s.bytes += shard_tensor_bytes(c, t, dtype);
  // fp8 is a weight format: the tensors it leaves alone, and the KV cache, stay 16-bit.
  const uint64_t elem = uint64_t(shard_dtype_bytes(dtype));
  s.kv_bytes_per_token =
      uint64_t(layers.size()) * uint64_t(c.kv_bytes_per_token_layer(int64_t(elem)));
  // Step time streams every weight once, except the embedding table: a step gathers only its
  // tokens' rows (a tied table that is also this stage's lm_head is streamed for the lm_head).
  // So the embedding weighs on the first stage's memory, not on its step time.
  uint64_t streamed = s.bytes;
  if (has_embedding && !(has_lm_head && c.tie_word_embeddings)) {
    streamed -= uint64_t(table) * elem;
    streamed += uint64_t(m.tokens_per_step * double(c.n_embd)) * elem;
  }
  double compute = m.tokens_per_step * s.flops_per_token / m.peak_flops;
  double memory = double(streamed) / m.bandwidth;
  s.est_time_s = std::max(compute, memory);
  return s;
}

}  // namespace

int64_t layer_params(const ModelConfig& c, int64_t il) {
  return model::tensor_params(model::layer_tensors(c, il));
}

double layer_flops_per_token(const ModelConfig& c, int64_t il, const CostModel& m) {
  return layer_cost(c, il, DType::kBF16, m).flops_per_token;
}

StagePlan stage_cost(const ModelConfig& c, LayerRange layers, bool has_embedding, bool has_lm_head,
                     DType dtype, const CostModel& m) {
  return stage_cost_of(c, layer_costs(c, dtype, m), layers, has_embedding, has_lm_head, dtype, m);
}

uint64_t stage_memory_needed(const ModelConfig& c, const StagePlan& s, const CostModel& m) {
  int64_t tokens = m.min_kv_tokens;
  if (c.max_position > 0) tokens = std::min(tokens, c.max_position);
  return s.bytes + s.kv_bytes_per_token * uint64_t(tokens);
}

void update_slowest(Plan& plan) {
  plan.slowest = 0;
  for (size_t k = 1; k < plan.stages.size(); ++k) {
    if (plan.stages[k].est_time_s > plan.stages[plan.slowest].est_time_s) plan.slowest = int(k);
  }
}

namespace {

Status check_fits(const ModelConfig& c, const StagePlan& s, const CostModel& m) {
  if (s.device_memory == 0) return ok_status();
  uint64_t need = stage_memory_needed(c, s, m);
  if (need <= s.device_memory) return ok_status();
  int64_t tokens = std::min(m.min_kv_tokens, c.max_position > 0 ? c.max_position : m.min_kv_tokens);
  return make_error(StatusCode::kResourceExhausted,
                    "stage {} (layers {}) does not fit its device: needs {} (weights {} + KV for "
                    "{} tokens {}), has {}",
                    s.index, format_layer_range(s.layers), format_bytes(double(need)),
                    format_bytes(double(s.bytes)), tokens,
                    format_bytes(double(s.kv_bytes_per_token * uint64_t(tokens))),
                    format_bytes(double(s.device_memory)));
}

std::vector<LayerRange> even_ranges(int64_t n_layer, int n_stages) {
  std::vector<LayerRange> out;
  int64_t base = n_layer / n_stages, extra = n_layer % n_stages, at = 0;
  for (int k = 0; k < n_stages; ++k) {
    int64_t n = base + (k < extra ? 1 : 0);
    out.push_back({at, at + n});
    at += n;
  }
  return out;
}

// Exact DP over contiguous ranges. First pass: T*, the smallest possible slowest-stage time
// among plans where every stage fits its device. Second pass: among plans with every stage at
// most T*, the one with the smallest sum of squared stage times (so stages that are not the
// bottleneck are balanced too, and the answer is deterministic). Empty when nothing fits.
std::vector<LayerRange> cost_ranges(const ModelConfig& c, const PlanOptions& o,
                                    const std::vector<uint64_t>& memory) {
  const int P = o.n_stages;
  const int64_t L = c.n_layer;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // cost[k][i][j]: time of stage k on [i, j), infinity when it does not fit.
  const std::vector<LayerCost> layers = layer_costs(c, o.dtype, o.cost_model);
  auto cost = [&](int k, int64_t i, int64_t j) {
    StagePlan s = stage_cost_of(c, layers, {i, j}, k == 0, k == P - 1, o.dtype, o.cost_model);
    if (memory[k] != 0 && stage_memory_needed(c, s, o.cost_model) > memory[k]) return kInf;
    return s.est_time_s;
  };
  std::vector<std::vector<std::vector<double>>> t(
      P, std::vector<std::vector<double>>(L + 1, std::vector<double>(L + 1, kInf)));
  for (int k = 0; k < P; ++k) {
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t j = i + 1; j <= L; ++j) t[k][i][j] = cost(k, i, j);
    }
  }
  // best[k][j]: smallest max time of stages 0..k-1 covering [0, j).
  std::vector<std::vector<double>> best(P + 1, std::vector<double>(L + 1, kInf));
  best[0][0] = 0;
  for (int k = 1; k <= P; ++k) {
    for (int64_t j = k; j <= L; ++j) {
      for (int64_t i = k - 1; i < j; ++i) {
        best[k][j] = std::min(best[k][j], std::max(best[k - 1][i], t[k - 1][i][j]));
      }
    }
  }
  const double limit = best[P][L];
  if (!std::isfinite(limit)) return {};
  const double cap = limit * (1 + 1e-9);
  // sq[k][j]: smallest sum of squared times of stages 0..k-1 covering [0, j), each <= cap.
  std::vector<std::vector<double>> sq(P + 1, std::vector<double>(L + 1, kInf));
  std::vector<std::vector<int64_t>> from(P + 1, std::vector<int64_t>(L + 1, -1));
  sq[0][0] = 0;
  for (int k = 1; k <= P; ++k) {
    for (int64_t j = k; j <= L; ++j) {
      for (int64_t i = k - 1; i < j; ++i) {
        double tk = t[k - 1][i][j];
        if (!(tk <= cap) || !std::isfinite(sq[k - 1][i])) continue;
        double v = sq[k - 1][i] + tk * tk;
        if (v < sq[k][j]) {
          sq[k][j] = v;
          from[k][j] = i;
        }
      }
    }
  }
  std::vector<LayerRange> out(P);
  int64_t j = L;
  for (int k = P; k >= 1; --k) {
    int64_t i = from[k][j];
    PP_ASSERT(i >= 0);
    out[k - 1] = {i, j};
    j = i;
  }
  return out;
}

}  // namespace

Result<Plan> make_plan(const ModelConfig& c, const PlanOptions& o) {
  if (c.n_layer < 1) return invalid_argument("the model has no layers");
  if (o.n_stages < 1) return invalid_argument("--pp must be at least 1, not {}", o.n_stages);
  if (o.n_stages > c.n_layer) {
    return invalid_argument(
        "cannot split {} layers into {} stages (--pp is larger than the layer count)", c.n_layer,
        o.n_stages);
  }
  if (o.dtype != DType::kF32 && o.dtype != DType::kF16 && o.dtype != DType::kBF16 &&
      o.dtype != DType::kF8E4M3) {
    return invalid_argument("unsupported shard dtype '{}'", model::dtype_name(o.dtype));
  }
  if (o.strategy != Strategy::kManual && !o.layers.empty()) {
    return invalid_argument("--layers needs --strategy manual");
  }
  std::vector<uint64_t> memory(o.n_stages, 0);
  if (o.device_memory.size() == 1) {
    std::fill(memory.begin(), memory.end(), o.device_memory[0]);
  } else if (!o.device_memory.empty()) {
    if (int(o.device_memory.size()) != o.n_stages) {
      return invalid_argument("--device-memory gives {} sizes but --pp is {}",
                              o.device_memory.size(), o.n_stages);
    }
    memory = o.device_memory;
  }

  std::vector<LayerRange> ranges;
  switch (o.strategy) {
    case Strategy::kEven:
      ranges = even_ranges(c.n_layer, o.n_stages);
      break;
    case Strategy::kManual:
      if (o.layers.empty()) return invalid_argument("--strategy manual needs --layers");
      if (int(o.layers.size()) != o.n_stages) {
        return invalid_argument("--layers gives {} ranges but --pp is {}", o.layers.size(),
                                o.n_stages);
      }
      ranges = o.layers;
      break;
    case Strategy::kCost:
      ranges = cost_ranges(c, o, memory);
      // Nothing fits: fall back to the even plan so that the error below names a stage.
      if (ranges.empty()) ranges = even_ranges(c.n_layer, o.n_stages);
      break;
  }
  Plan plan;
  plan.strategy = o.strategy;
  plan.dtype = o.dtype;
  plan.n_layer = c.n_layer;
  plan.cost_model = o.cost_model;
  for (int k = 0; k < o.n_stages; ++k) {
    StagePlan s = stage_cost(c, ranges[k], k == 0, k == o.n_stages - 1, o.dtype, o.cost_model);
    s.index = k;
    s.device_memory = memory[k];
    plan.stages.push_back(s);
  }
  for (const StagePlan& s : plan.stages) PP_RETURN_IF_ERROR(check_fits(c, s, o.cost_model));
  update_slowest(plan);
  return plan;
}

namespace {

// "135.3 M", "8.19 B": parameter counts at a glance.
std::string format_count(int64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f} B", double(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.1f} M", double(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.1f} K", double(n) / 1e3);
  return fmt::format("{}", n);
}

}  // namespace

std::string format_plan_table(const Plan& plan) {
  bool any_memory = false;
  for (const auto& s : plan.stages) any_memory |= s.device_memory != 0;
  std::string out = fmt::format(
      "{:>5}  {:>9}  {:>5}  {:>7}  {:>11}  {:>10}  {:>11}  {:>10}  {:>10}", "stage", "layers",
      "embed", "lm_head", "params", "bytes", "GFLOP/token", "KV/token", "est. step");
  if (any_memory) out += fmt::format("  {:>10}", "device");
  out += "\n";
  for (const auto& s : plan.stages) {
    out += fmt::format("{:>5}  {:>9}  {:>5}  {:>7}  {:>11}  {:>10}  {:>11.3f}  {:>10}  {:>7.3f} ms",
                       s.index, format_layer_range(s.layers), s.has_embedding ? "yes" : "-",
                       s.has_lm_head ? "yes" : "-", format_count(s.params),
                       format_bytes(double(s.bytes)), s.flops_per_token / 1e9,
                       format_bytes(double(s.kv_bytes_per_token)), s.est_time_s * 1e3);
    if (any_memory) {
      out += fmt::format("  {:>10}", s.device_memory ? format_bytes(double(s.device_memory)) : "-");
    }
    if (int(s.index) == plan.slowest) out += "  *";
    out += "\n";
  }
  if (!plan.stages.empty()) {
    const StagePlan& s = plan.stages[plan.slowest];
    out += fmt::format(
        "strategy {}, dtype {}; predicted slowest stage: {} (layers {}, {:.3f} ms per step of {:g} "
        "tokens at {:g} TFLOP/s, {:g} GB/s)\n",
        strategy_name(plan.strategy), shard_dtype_name(plan.dtype), s.index,
        format_layer_range(s.layers), s.est_time_s * 1e3, plan.cost_model.tokens_per_step,
        plan.cost_model.peak_flops / 1e12, plan.cost_model.bandwidth / 1e9);
  }
  return out;
}

}  // namespace pp::partition
