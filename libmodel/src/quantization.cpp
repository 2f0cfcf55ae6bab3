// Quantization on load: the tensor rule and the quantizing weight source.
#include "pp/model/quantization.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pp/kernels/host-weight.h"

namespace pp::model {

const char* quantization_name(Quantization q) { return q == Quantization::kFp8 ? "fp8" : "none"; }

Result<Quantization> parse_quantization(std::string_view s) {
  if (s == "fp8") return Quantization::kFp8;
  if (s == "none") return Quantization::kNone;
  return invalid_argument("unknown quantization '{}' (choices: fp8, none)", s);
}

const char* cpu_dtype_name(CpuDtype d) { return d == CpuDtype::kF32 ? "f32" : "auto"; }

Result<CpuDtype> parse_cpu_dtype(std::string_view s) {
  if (s == "auto") return CpuDtype::kAuto;
  if (s == "f32") return CpuDtype::kF32;
  return invalid_argument("unknown CPU dtype '{}' (choices: auto, f32)", s);
}

bool quantized_on_load(const TensorSpec& t) {
  if (t.owner != TensorOwner::kLayer || !t.is_matrix()) return false;
  switch (t.slot) {
    case WeightSlot::kQkv:
    case WeightSlot::kO:
    case WeightSlot::kGateUp:
    case WeightSlot::kDown:
    case WeightSlot::kExpertGateUp:  // each expert's gate, up and down; the router stays
    case WeightSlot::kExpertDown:
      return true;
    default:
      return false;
  }
}

namespace {

class QuantizingSource final : public WeightSource {
 public:
  QuantizingSource(std::shared_ptr<const WeightSource> inner, const ModelConfig& config)
      : inner_(std::move(inner)) {
    for (const std::string& name : inner_->names()) {
      const TensorInfo* info = inner_->find(name);
      const std::optional<TensorSpec> spec = find_tensor_spec(config, name);
      if (!info || !spec || !quantized_on_load(*spec) || info->dtype == DType::kF8E4M3) continue;
      TensorInfo q = *info;
      q.dtype = DType::kF8E4M3;
      q.scale_kind = kernels::ScaleKind::kPerChannel;
      q.nbytes = uint64_t(q.numel());
      quantized_.emplace(name, std::move(q));
    }
  }

  std::vector<std::string> names() const override { return inner_->names(); }
  const TensorInfo* find(std::string_view name) const override {
    if (auto it = quantized_.find(name); it != quantized_.end()) return &it->second;
    return inner_->find(name);
  }
  Status read_f32(std::string_view name, std::span<float> out) const override {
    if (!quantized_.contains(name)) return inner_->read_f32(name, out);
    PP_ASSIGN_OR_RETURN(kernels::HostWeight w, read_weight(name));
    w.dequantize(out);
    return ok_status();
  }
  using WeightSource::read_f32;
  Result<kernels::HostWeight> read_weight(std::string_view name) const override {
    auto it = quantized_.find(name);
    if (it == quantized_.end()) return inner_->read_weight(name);
    const TensorInfo& t = it->second;
    PP_ASSIGN_OR_RETURN(std::vector<float> values, inner_->read_f32(name));
    return kernels::HostWeight::quantize_fp8(values, t.shape[0], t.shape[1],
                                             kernels::ScaleKind::kPerChannel);
  }
  std::string describe() const override { return inner_->describe() + " (fp8 on load)"; }

 private:
  std::shared_ptr<const WeightSource> inner_;
  std::map<std::string, TensorInfo, std::less<>> quantized_;
};

}  // namespace

std::shared_ptr<const WeightSource> quantize_on_load(std::shared_ptr<const WeightSource> inner,
                                                     const ModelConfig& config, Quantization q) {
  if (q == Quantization::kNone) return inner;
  return std::make_shared<QuantizingSource>(std::move(inner), config);
}

}  // namespace pp::model
