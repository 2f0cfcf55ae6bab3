// Fuzz target: the safetensors reader. Every input is parsed as a whole .safetensors image
// (SafetensorsFile::parse, the code open() runs on the mmapped file); an input that starts like
// JSON is also opened as a model.safetensors.index.json (SafetensorsWeights::open) in a scratch
// folder that holds two valid shards, shard-1.safetensors and shard-2.safetensors.
//
// Properties checked beyond "no crash": every tensor the reader accepts lies inside the data
// section and converts to f32 without error, and find() returns it.
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "fuzz-util.h"
#include "pp/model/safetensors-writer.h"
#include "pp/model/safetensors.h"

namespace {

using pp::model::SafetensorsFile;
using pp::model::SafetensorsWeights;
using pp::model::TensorInfo;

void check_file(const SafetensorsFile& f) {
  for (const TensorInfo& t : f.tensors()) {
    PP_FUZZ_CHECK(f.find(t.name) == &t);
    const std::span<const uint8_t> b = f.tensor_bytes(t);
    PP_FUZZ_CHECK(b.size() == t.nbytes);
    std::vector<float> out(static_cast<size_t>(t.numel()));
    PP_FUZZ_CHECK(f.read_f32(t, out).ok());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using pp::model::DType;
  using pp::model::SafetensorsEntry;
  const std::filesystem::path& dir = pp::fuzz::scratch_dir();
  const std::vector<float> a = {0.5f, -1.0f, 2.0f, 3.5f}, b = {1.0f, -2.0f}, c = {0.25f};
  const SafetensorsEntry s1[] = {{"a.weight", DType::kF32, {2, 2}, a}};
  const SafetensorsEntry s2[] = {{"b.weight", DType::kBF16, {2}, b},
                                 {"c.weight", DType::kF16, {1}, c}};
  if (!pp::model::write_safetensors(dir / "shard-1.safetensors", s1, {}).ok() ||
      !pp::model::write_safetensors(dir / "shard-2.safetensors", s2, {{"k", "v"}}).ok()) {
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = SafetensorsFile::parse({data, size}, "fuzz.safetensors");
  if (file.ok()) check_file(**file);

  // An index file: only worth the file system round trip when it may be JSON.
  if (size == 0 || (data[0] != '{' && data[0] != ' ')) return 0;
  const std::filesystem::path index = pp::fuzz::scratch_dir() / "model.safetensors.index.json";
  pp::fuzz::write_file(index, {reinterpret_cast<const char*>(data), size});
  auto w = SafetensorsWeights::open(index);
  if (!w.ok()) return 0;
  for (const std::string& name : (*w)->names()) {
    const TensorInfo* t = (*w)->find(name);
    PP_FUZZ_CHECK(t != nullptr);
    std::vector<float> out(static_cast<size_t>(t->numel()));
    PP_FUZZ_CHECK((*w)->read_f32(name, out).ok());
  }
  return 0;
}
