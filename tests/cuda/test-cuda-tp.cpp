// The GPU stage model as tensor-parallel ranks (tensor-parallel.h) against the same model at TP 1:
// two ranks, each a thread bound to its own GPU with an NCCL communicator of the two, run a
// prefill and teacher-forced decode steps (graphs on, so the collectives are captured too), and
// rank 0's gathered logits must match the TP 1 model's within the tolerance the GPU's other
// tests use against the CPU (the partial sums are rounded to bf16 before they are added). A
// group whose heads the GPU attention cannot map is refused before any device work, on every
// rank. Needs two visible GPUs (NCCL cannot make a group of two ranks on one device); skipped
// otherwise.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda-test-util.h"
#include "pp/kernels/gpu.h"
#include "pp/model/config.h"
#include "pp/model/gpu-stage-model.h"
#include "pp/model/tensor-parallel.h"
#include "test-util.h"

namespace pp::model {
namespace {

namespace gpu = kernels::gpu;

constexpr int64_t kBlock = 16;

int visible_devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

ModelConfig family(const std::string& name) {
  nlohmann::json j = {{"hidden_size", 256},
                      {"intermediate_size", 512},
                      {"num_hidden_layers", 3},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"head_dim", 64},
                      {"vocab_size", 512},
                      {"max_position_embeddings", 4096},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"tie_word_embeddings", false},
                      {"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"}};
  if (name == "llama3-tied") {
    j["tie_word_embeddings"] = true;
  } else if (name == "qwen2") {  // q, k, v biases
    j["architectures"] = {"Qwen2ForCausalLM"};
    j["model_type"] = "qwen2";
  } else if (name == "qwen3") {  // q and k norms, head_dim 128
    j["architectures"] = {"Qwen3ForCausalLM"};
    j["model_type"] = "qwen3";
    j["head_dim"] = 128;
  } else if (name == "mqa") {  // one KV head, replicated on both ranks
    j["num_key_value_heads"] = 1;
  }
  auto c = config_from_hf_json(j);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return *c;
}

int32_t argmax(const float* row, int64_t n) {
  return int32_t(std::max_element(row, row + n) - row);
}

std::vector<float> logits_of(GpuStageModel& m, int64_t rows) {
  EXPECT_TRUE(m.stream().synchronize().ok());
  std::vector<float> out(size_t(rows * m.config().n_vocab));
  EXPECT_EQ(cudaMemcpy(out.data(), m.logits(), out.size() * 4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  return out;
}

// A prefill of every row's logits for prompts of `lens`, then `steps` greedy decode steps on
// the TP 1 model (device 0): the batches, and the logits of each.
struct RefRun {
  std::vector<Batch> batches;
  std::vector<std::vector<float>> logits;
};

GpuStageOptions options() {
  GpuStageOptions o;
  o.max_tokens = 512;
  o.max_seqs = 16;
  o.max_logit_rows = 512;
  return o;
}

RefRun reference(const ModelConfig& c, uint64_t seed, const std::vector<int64_t>& lens, int steps) {
  RefRun run;
  EXPECT_TRUE(gpu::set_device(0).ok());
  auto m = GpuStageModel::random(c, seed, 0, c.n_layer, options());
  EXPECT_TRUE(m.ok()) << m.status().message();
  if (!m.ok()) return run;
  const int64_t blocks_each = 32;
  EXPECT_TRUE((*m)->allocate_kv(blocks_each * int64_t(lens.size()), kBlock).ok());
  std::vector<std::vector<int32_t>> tokens, tables;
  std::vector<int32_t> cached;
  std::uniform_int_distribution<int32_t> tok(0, int32_t(c.n_vocab) - 1);
  for (size_t i = 0; i < lens.size(); ++i) {
    tokens.emplace_back(size_t(lens[i]));
    for (int32_t& t : tokens.back()) t = tok(test::rng());
    tables.emplace_back(size_t(blocks_each));
    std::iota(tables.back().begin(), tables.back().end(), int32_t(i * blocks_each));
    cached.push_back(0);
  }
  for (int step = 0; step <= steps; ++step) {
    Batch b;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::span<const int32_t> ids =
          std::span<const int32_t>(tokens[i]).subspan(size_t(cached[i]));
      const int32_t start = int32_t(b.n_tokens());
      b.add_sequence(ids, cached[i], tables[i], true);
      if (step == 0) {  // every row's logits
        b.logit_rows.pop_back();
        for (int32_t t = 0; t < int32_t(ids.size()); ++t) b.logit_rows.push_back(start + t);
      }
    }
    const Status st = (*m)->forward(b, nullptr, nullptr);
    EXPECT_TRUE(st.ok()) << st.message();
    std::vector<float> l = logits_of(**m, b.n_logit_rows());
    int64_t row = 0;
    for (size_t i = 0; i < tokens.size(); ++i) {
      row += step == 0 ? int64_t(tokens[i].size()) - cached[i] : 1;
      cached[i] = int32_t(tokens[i].size());
      tokens[i].push_back(argmax(&l[size_t((row - 1) * c.n_vocab)], c.n_vocab));
    }
    run.batches.push_back(std::move(b));
    run.logits.push_back(std::move(l));
  }
  return run;
}

// Runs `batches` through ranks 0 and 1 of a TP 2 group (one thread and one device each); rank
// 0's logits of each batch.
std::vector<std::vector<float>> tp2(const ModelConfig& c, uint64_t seed,
                                    const std::vector<Batch>& batches, int64_t n_blocks,
                                    int64_t* graph_replays) {
  auto id = gpu::NcclComm::unique_id();
  EXPECT_TRUE(id.ok()) << id.status().message();
  if (!id.ok()) return {};
  std::vector<std::vector<float>> out;
  auto rank_main = [&](int32_t rank) {
    ASSERT_TRUE(gpu::set_device(rank).ok());
    auto comm = gpu::NcclComm::init(*id, 2, rank);
    ASSERT_TRUE(comm.ok()) << comm.status().message();
    GpuStageOptions o = options();
    o.device = rank;
    // Both ranks load and run whatever happens, so that neither waits in a collective forever.
    auto m = GpuStageModel::random(c, seed, 0, c.n_layer, o, {rank, 2});
    ASSERT_TRUE(m.ok()) << m.status().message();
    ASSERT_TRUE((*m)->allocate_kv(n_blocks, kBlock).ok());
    (*m)->set_tp_comm(comm->get());
    for (const Batch& b : batches) {
      const Status st = (*m)->forward(b, nullptr, nullptr);
      ASSERT_TRUE(st.ok()) << st.message();
      ASSERT_TRUE((*m)->stream().synchronize().ok());
      if (rank == 0) {
        EXPECT_NE((*m)->logits(), nullptr);
        out.push_back(logits_of(**m, b.n_logit_rows()));
      } else {
        EXPECT_EQ((*m)->logits(), nullptr);
      }
    }
    if (rank == 0) *graph_replays = (*m)->graph_replays();
  };
  std::thread r1(rank_main, 1);
  rank_main(0);
  r1.join();
  return out;
}

class GpuTpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (visible_devices() < 2) GTEST_SKIP() << "tensor parallelism needs two GPUs";
  }
};

TEST_F(GpuTpTest, TwoRanksMatchOne) {
  for (const char* name : {"llama", "llama3-tied", "qwen2", "qwen3", "mqa"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = family(name);
    const uint64_t seed = test::rng()();
    const std::vector<int64_t> lens = {37, 5, 120};
    const RefRun ref = reference(c, seed, lens, 12);
    ASSERT_EQ(ref.batches.size(), 13u);
    int64_t replays = 0;
    const std::vector<std::vector<float>> got =
        tp2(c, seed, ref.batches, 32 * int64_t(lens.size()), &replays);
    ASSERT_EQ(got.size(), ref.logits.size());
    EXPECT_GT(replays, 0);  // the decode steps replayed graphs holding the collectives
    const int64_t V = c.n_vocab;
    double max_err = 0;
    int64_t agree = 0, rows = 0;
    for (size_t k = 0; k < got.size(); ++k) {
      ASSERT_EQ(got[k].size(), ref.logits[k].size());
      for (size_t r = 0; r < got[k].size() / size_t(V); ++r) {
        const float* g = &got[k][r * size_t(V)];
        const float* w = &ref.logits[k][r * size_t(V)];
        double scale = 1, err = 0;
        for (int64_t v = 0; v < V; ++v) {
          scale = std::max(scale, double(std::fabs(w[v])));
          err = std::max(err, double(std::fabs(g[v] - w[v])));
        }
        max_err = std::max(max_err, err / scale);
        agree += argmax(g, V) == argmax(w, V);
        ++rows;
      }
    }
    EXPECT_LT(max_err, 0.03);
    EXPECT_GE(double(agree) / double(rows), 0.95) << agree << "/" << rows;
  }
}

// 12 heads over 3 KV heads in 4 ranks: rank 1 holds heads 3..5, which read KV heads 0 and 1
// unevenly; every rank refuses, before touching a device.
TEST(GpuTp, UnevenHeadSplitRefused) {
  ModelConfig c = family("llama");
  c.n_head = 12;
  c.n_head_kv = 3;
  c.n_embd = 768;
  for (int32_t rank = 0; rank < 4; ++rank) {
    auto m = GpuStageModel::random(c, 1, 0, c.n_layer, options(), {rank, 4});
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument) << m.status().message();
    EXPECT_NE(m.status().message().find("do not split evenly"), std::string::npos)
        << m.status().message();
  }
}

}  // namespace
}  // namespace pp::model
