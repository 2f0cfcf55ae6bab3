// read_source_config: a model's config from config.json or GGUF metadata, never its weights.
#include "pp/partition/source-config.h"

#include <system_error>

#include "pp/model/gguf.h"

namespace pp::partition {

namespace fs = std::filesystem;

Result<SourceConfig> read_source_config(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    return not_found("cannot open '{}': no such file or directory", path.string());
  SourceConfig out;
  if (fs::is_directory(path, ec)) {
    out.kind = model::SourceKind::kHfDir;
    if (!fs::exists(path / "config.json", ec)) {
      return not_found(
          "'{}' has no config.json (expected a Hugging Face model folder or a .gguf file)",
          path.string());
    }
    auto c = model::config_from_hf_dir(path);
    if (!c.ok()) return c.status().with_context(fmt::format("'{}'", path.string()));
    out.config = std::move(c).value();
  } else {
    out.kind = model::SourceKind::kGguf;
    PP_ASSIGN_OR_RETURN(auto file, model::GgufFile::open(path));
    auto c = model::config_from_gguf(*file);
    if (!c.ok()) return c.status().with_context(fmt::format("'{}'", path.string()));
    out.config = std::move(c).value();
  }
  auto v = out.config.validate();
  if (!v.ok()) return v.with_context(fmt::format("'{}'", path.string()));
  return out;
}

model::DType default_shard_dtype(const model::ModelConfig& c, model::SourceKind kind) {
  if (kind == model::SourceKind::kGguf) return model::DType::kBF16;
  if (c.quant.quantized()) return model::DType::kF8E4M3;  // an FP8 checkpoint stays fp8
  if (c.torch_dtype == "float32") return model::DType::kF32;
  if (c.torch_dtype == "float16") return model::DType::kF16;
  return model::DType::kBF16;
}

}  // namespace pp::partition
