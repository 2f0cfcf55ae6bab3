// Fuzz target: partition.json. Each input is written as DIR/partition.json and read with
// open_partition (JSON parse, then manifest_from_json's checks); an accepted manifest is then
// used as a stage host uses it: open_stage for stages inside and outside the plan (the folder
// holds no shards, so each must fail cleanly) and stage_of_tensor for typical tensor names.
//
// Properties checked beyond "no crash": an accepted manifest survives a round trip
// (manifest_to_json, then manifest_from_json accepts it and writes the same JSON again), and
// stage_of_tensor only answers -1 or a stage of the plan.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz-util.h"
#include "pp/partition/manifest.h"
#include "pp/partition/partition-reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pp::partition;
  const std::filesystem::path& dir = pp::fuzz::scratch_dir();
  pp::fuzz::write_file(dir / kManifestName, {reinterpret_cast<const char*>(data), size});
  auto m = open_partition(dir);
  if (!m.ok()) return 0;

  const nlohmann::json j = manifest_to_json(*m);
  auto again = manifest_from_json(j, "round trip");
  PP_FUZZ_CHECK(again.ok());
  PP_FUZZ_CHECK(manifest_to_json(*again) == j);

  const int n = m->n_stages();
  for (int k : {-1, 0, n - 1, n}) PP_FUZZ_CHECK(!open_stage(dir, *m, k).ok());
  for (const char* name : {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                           "model.layers.7.self_attn.q_proj.weight", "model.norm.weight",
                           "lm_head.weight", "model.layers.99999999999.x", "rotary.inv_freq"}) {
    const int s = stage_of_tensor(m->config, name, m->plan.stages);
    PP_FUZZ_CHECK(s >= -1 && s < n);
  }
  return 0;
}
