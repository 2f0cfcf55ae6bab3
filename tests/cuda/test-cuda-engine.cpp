// The GPU pipeline end to end (label gpu): pp-stage processes on CUDA devices linked by NCCL,
// driven by the Engine. The same requests (greedy, seeded sampling, penalties) give the same
// tokens whatever the number of stages, with the same number of micro-batch groups so that
// every stage sees the same batches. Stages go round-robin over the GPUs, so P = 4 runs on two
// GPUs (two stages each; neighbours always on different GPUs, as NCCL needs); P >= 2 needs two.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "../pp/test-engine-util.h"
#include "cuda-test-util.h"
#include "pp/kernels/device.h"

namespace pp::test {
namespace {

std::filesystem::path gpu_stage_binary() {
  if (const char* s = std::getenv("PP_STAGE_BINARY")) return s;
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec && std::filesystem::exists(self.parent_path() / "pp-stage")) {
    return self.parent_path() / "pp-stage";
  }
  return stage_binary();
}

// SmolLM2-135M's shape with 8 layers: small enough to load fast, real head sizes.
std::filesystem::path write_config(const TempDir& dir) {
  const auto path = dir.path() / "config.json";
  std::ofstream(path) << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 8,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": true, "eos_token_id": 2})";
  return path;
}

TEST(GpuEngine, SameTokensForEverySplit) {
  const int n_gpus = int(kernels::cuda_devices().size());
  if (n_gpus == 0) GTEST_SKIP() << "no GPU";
  TempDir dir;
  const auto config = write_config(dir);
  std::mt19937_64& g = rng();
  std::vector<EngineRequest> reqs = make_requests(24, 49152, 150, 32, g);
  for (EngineRequest& r : reqs) r.delay_ms = 0;
  const int kGroups = 4;
  std::map<int, std::vector<EngineOutput>> outs;
  for (int P : {1, 2, 4}) {
    if (P > 1 && n_gpus < 2) continue;
    pipeline::EngineOptions o = engine_options(config, P, kGroups - P);
    o.stage_binary = gpu_stage_binary();
    o.device = "cuda";
    o.random_weights = 1234;
    o.max_batch_tokens = 256;
    o.max_running_requests = 64;
    o.mem_fraction = 0.3;
    auto engine = pipeline::Engine::start(o);
    ASSERT_TRUE(engine.ok()) << "P=" << P << ": " << engine.status().message();
    outs[P] = run_requests(**engine, reqs);
    ASSERT_TRUE((*engine)->shutdown().ok());
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(outs[P][i].n_finals, 1) << "P=" << P << " request " << i;
      EXPECT_EQ(outs[P][i].error, "") << "P=" << P << " request " << i;
      EXPECT_FALSE(outs[P][i].tokens.empty()) << "P=" << P << " request " << i;
    }
  }
  for (auto& [P, out] : outs) {
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(out[i].tokens, outs[1][i].tokens) << "P=" << P << " request " << i;
    }
  }
}

}  // namespace
}  // namespace pp::test
