// Tensor parallelism in the stage model: the layouts tile the model (every query head, KV head
// a query head reads, row of n_ff and vocabulary row is held where it must be), and a model run
// as N ranks in threads (an in-process TpComm) gives the TP 1 logits within f32 tolerance and the
// same greedy tokens, for every family, for several N and stage splits, bitwise the same from
// run to run.
#include <gtest/gtest.h>

#include <numeric>
#include <thread>

#include "pp/model/model-source.h"
#include "pp/model/stage-model.h"
#include "pp/model/tensor-parallel.h"
#include "test-model-util.h"
#include "test-tp-group.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::Arch;
using model::Batch;
using model::ModelConfig;
using model::StageModel;
using model::TpLayout;

constexpr int64_t kBlockSize = 4;

std::vector<int32_t> random_ids(int64_t n, int64_t n_vocab) {
  std::uniform_int_distribution<int32_t> d(0, int32_t(n_vocab) - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = d(rng());
  return v;
}

// Logits of every position of `ids` (chunks of `chunk`), through stages split at `cuts`, as
// `tp` ranks in threads; rank 0's logits.
std::vector<float> run_tp(const ModelConfig& c, const model::WeightSource& w, int32_t tp,
                          const std::vector<int64_t>& cuts, const std::vector<int32_t>& ids,
                          int64_t chunk, model::CpuDtype cpu_dtype = model::CpuDtype::kAuto,
                          int32_t row_top_k = 0) {
  std::vector<int64_t> bounds{0};
  bounds.insert(bounds.end(), cuts.begin(), cuts.end());
  bounds.push_back(c.n_layer);
  ThreadGroup group(tp);
  std::vector<std::vector<float>> logits(static_cast<size_t>(tp));
  std::vector<std::string> errors(static_cast<size_t>(tp));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < tp; ++r) {
    threads.emplace_back([&, r] {
      ThreadGroup::Comm comm(&group, r);
      std::vector<std::unique_ptr<StageModel>> stages;
      for (size_t k = 0; k + 1 < bounds.size(); ++k) {
        auto m = StageModel::load(c, w, bounds[k], bounds[k + 1], cpu_dtype, {r, tp});
        if (!m.ok()) {
          errors[size_t(r)] = m.status().message();
          return;  // every rank fails alike (the same config), so no one waits at a barrier
        }
        (*m)->set_tp_comm(&comm);
        if (Status s = (*m)->allocate_kv(32, kBlockSize); !s.ok()) {
          errors[size_t(r)] = s.message();
          return;
        }
        stages.push_back(std::move(*m));
      }
      std::vector<int32_t> table(16);
      std::iota(table.begin(), table.end(), 5);
      for (int64_t b = 0; b < int64_t(ids.size()); b += chunk) {
        const int64_t len = std::min<int64_t>(chunk, int64_t(ids.size()) - b);
        Batch batch;
        batch.add_sequence(std::span(ids).subspan(size_t(b), size_t(len)), int32_t(b), table,
                           false);
        batch.logit_rows.resize(size_t(len));
        std::iota(batch.logit_rows.begin(), batch.logit_rows.end(), 0);
        const std::vector<int32_t> top_k(size_t(len), row_top_k);
        stages.back()->set_tp_row_top_k(top_k);
        std::vector<float> in, out;
        for (auto& s : stages) {
          if (Status st = s->forward(batch, in, out); !st.ok()) {
            errors[size_t(r)] = st.message();
            return;
          }
          std::swap(in, out);
        }
        logits[size_t(r)].insert(logits[size_t(r)].end(), in.begin(), in.end());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int32_t r = 0; r < tp; ++r) {
    EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
    if (r > 0) EXPECT_TRUE(logits[size_t(r)].empty()) << "only rank 0 has logits";
  }
  return logits[0];
}

TEST(TpLayout, TilesTheModel) {
  for (int trial = 0; trial < 200; ++trial) {
    ModelConfig c = tiny_config(Arch::kQwen3Moe);
    std::uniform_int_distribution<int64_t> kv(1, 8), group(1, 6), ff(1, 700), vocab(50, 3000);
    c.n_head_kv = kv(rng());
    c.n_head = c.n_head_kv * group(rng());
    c.n_ff = ff(rng());
    c.n_ff_expert = ff(rng());
    c.n_vocab = vocab(rng());
    const int32_t n = std::uniform_int_distribution<int32_t>(1, int32_t(c.n_head))(rng());
    auto layouts = model::tp_layouts(c, n);
    ASSERT_TRUE(layouts.ok()) << layouts.status().message();
    int64_t head = 0, ff_row = 0, vocab_row = 0, ffe_row = 0;
    for (const TpLayout& l : *layouts) {
      EXPECT_EQ(l.head_begin, head);
      EXPECT_GT(l.head_end, l.head_begin) << "every rank has a query head";
      head = l.head_end;
      // Every query head's KV head is held, and no more than those.
      EXPECT_EQ(l.kv_head_begin, l.head_begin / l.group);
      EXPECT_EQ(l.kv_head_end - 1, (l.head_end - 1) / l.group);
      EXPECT_EQ(l.ff_begin, ff_row);
      ff_row = l.ff_end;
      EXPECT_EQ(l.ff_expert_begin, ffe_row);
      ffe_row = l.ff_expert_end;
      EXPECT_EQ(l.vocab_begin, vocab_row);
      vocab_row = l.vocab_end;
      // Block-friendly cuts where the size allows.
      if (c.n_ff % 128 == 0 && c.n_ff / 128 >= n) EXPECT_EQ(l.ff_begin % 128, 0);
    }
    EXPECT_EQ(head, c.n_head);
    EXPECT_EQ(ff_row, c.n_ff);
    EXPECT_EQ(ffe_row, c.n_ff_expert);
    EXPECT_EQ(vocab_row, c.n_vocab);
  }
}

TEST(TpLayout, ClearErrors) {
  const ModelConfig c = tiny_config(Arch::kLlama);  // 6 heads
  EXPECT_EQ(model::tp_layout(c, {0, 7}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model::tp_layout(c, {2, 2}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model::tp_layout(c, {0, 0}).status().code(), StatusCode::kInvalidArgument);
  auto m = StageModel::load(c, random_weights(c), 0, c.n_layer, model::CpuDtype::kAuto, {0, 7});
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("attention heads"), std::string::npos);
}

class TpFamily : public ::testing::TestWithParam<Arch> {};

TEST_P(TpFamily, MatchesOneRank) {
  ModelConfig c = tiny_config(GetParam());
  c.n_layer = 3;
  const MemoryWeights w = random_weights(c);
  const std::vector<int32_t> ids = random_ids(23, c.n_vocab);
  const std::vector<float> ref = run_tp(c, w, 1, {}, ids, 7);
  ASSERT_EQ(ref.size(), ids.size() * size_t(c.n_vocab));
  for (int32_t tp : {2, 3, 4}) {
    for (const std::vector<int64_t>& cuts : std::vector<std::vector<int64_t>>{{}, {1}, {1, 2}}) {
      SCOPED_TRACE(::testing::Message() << "tp " << tp << ", " << cuts.size() + 1 << " stages");
      const std::vector<float> got = run_tp(c, w, tp, cuts, ids, 7);
      ASSERT_EQ(got.size(), ref.size());
      double max_err = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        const double err = std::abs(double(got[i]) - double(ref[i]));
        max_err = std::max(max_err, err);
        ASSERT_LE(err, 1e-4 + 1e-4 * std::abs(ref[i])) << "at " << i;
      }
      // Greedy tokens agree wherever TP 1's choice is not a near tie.
      const size_t V = size_t(c.n_vocab);
      for (size_t t = 0; t < ids.size(); ++t) {
        const float* a = ref.data() + t * V;
        const float* b = got.data() + t * V;
        std::vector<float> sorted(a, a + V);
        std::sort(sorted.rbegin(), sorted.rend());
        if (sorted[0] - sorted[1] < 1e-3f) continue;
        EXPECT_EQ(std::max_element(a, a + V) - a, std::max_element(b, b + V) - b) << "row " << t;
      }
      RecordProperty("max_abs_error_tp" + std::to_string(tp), std::to_string(max_err));
    }
  }
  // The same run again: the same bits (the sums are added in rank order).
  const std::vector<float> a = run_tp(c, w, 4, {1}, ids, 5);
  const std::vector<float> b = run_tp(c, w, 4, {1}, ids, 5);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// Rows whose sampler needs only the k most likely tokens travel as k (logit, id) pairs per rank:
// the row rank 0 gets samples the same token as the whole row, for greedy and for top-k with any
// temperature, top-p, min-p and seed.
TEST(TpSampling, TopKRowsSampleAsWholeRows) {
  ModelConfig c = tiny_config(Arch::kQwen3);
  c.n_vocab = 301;
  const MemoryWeights w = random_weights(c);
  const std::vector<int32_t> ids = random_ids(9, c.n_vocab);
  for (int32_t tp : {2, 3}) {
    const std::vector<float> whole = run_tp(c, w, tp, {1}, ids, 9);
    for (int32_t k : {1, 4, 30}) {
      const std::vector<float> compact = run_tp(c, w, tp, {1}, ids, 9, model::CpuDtype::kAuto, k);
      ASSERT_EQ(compact.size(), whole.size());
      const size_t V = size_t(c.n_vocab);
      std::vector<float> scratch;
      for (size_t t = 0; t < ids.size(); ++t) {
        const float* a = whole.data() + t * V;
        const float* b = compact.data() + t * V;
        int64_t finite = 0;
        for (size_t v = 0; v < V; ++v) {
          if (std::isfinite(b[v])) {
            ++finite;
            EXPECT_EQ(b[v], a[v]) << "token " << v;
          }
        }
        EXPECT_GE(finite, k);
        EXPECT_LE(finite, int64_t(k) * tp);
        for (int trial = 0; trial < 20; ++trial) {
          kernels::cpu::SampleParams sp;
          sp.n_vocab = c.n_vocab;
          sp.temperature = k == 1 ? 0.0f : float(random_int(1, 20)) / 10.0f;
          sp.top_k = k;
          sp.top_p = trial % 2 ? 1.0f : 0.5f + float(random_int(0, 50)) / 100.0f;
          sp.min_p = trial % 3 ? 0.0f : 0.05f;
          sp.seed = uint64_t(random_int(0, 1 << 30));
          sp.step = uint64_t(trial);
          sp.logits = a;
          const int32_t want = kernels::cpu::sample(sp, scratch).token;
          sp.logits = b;
          EXPECT_EQ(kernels::cpu::sample(sp, scratch).token, want) << "row " << t << " k " << k;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, TpFamily,
                         ::testing::Values(Arch::kLlama, Arch::kMistral, Arch::kQwen2, Arch::kQwen3,
                                           Arch::kQwen3Moe, Arch::kMixtral),
                         [](const auto& info) {
                           return std::string(model::arch_name(info.param));
                         });

}  // namespace
}  // namespace pp::test

namespace pp::test {
namespace {

// The default model (9 query heads over 3 KV heads), N ranks against one on a random prompt.
// Weights in f32: logits within f32 tolerance. GGUF blocks kept (each linear quantizes its input
// to 8 bits per block): the row-parallel sums' last bits, in another order, flip roundings of the
// next layer's quantization, so the logits move by about as much as the 8-bit activations
// themselves move them (measured against f32): bounded here by twice that (a draw of prompt
// may land either side of it), which a wrong slice or mapping exceeds by far.
TEST(TpDefaultModel, MatchesOneRank) {
  const std::filesystem::path path = default_model_path();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "default model missing: " << path;
  auto src = model::open_model(path);
  ASSERT_TRUE(src.ok()) << src.status().message();
  const ModelConfig& c = src->config;
  const std::vector<int32_t> ids = random_ids(12, c.n_vocab);
  auto max_diff = [](const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    double m = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
      m = std::max(m, std::abs(double(a[i]) - double(b[i])));
    }
    return m;
  };
  const auto f32 = model::CpuDtype::kF32, blocks = model::CpuDtype::kAuto;
  const std::vector<float> ref = run_tp(c, *src->weights, 1, {}, ids, 12, f32);
  const std::vector<float> ref_blocks = run_tp(c, *src->weights, 1, {}, ids, 12, blocks);
  double max_ref = 0;
  for (float x : ref) max_ref = std::max(max_ref, double(std::abs(x)));
  const double activation_noise = max_diff(ref, ref_blocks);  // 8-bit activations against f32
  for (int32_t tp : {2, 4}) {
    const double err = max_diff(run_tp(c, *src->weights, tp, {1}, ids, 12, f32), ref);
    const double err_blocks =
        max_diff(run_tp(c, *src->weights, tp, {}, ids, 12, blocks), ref_blocks);
    EXPECT_LE(err, 1e-4 * max_ref) << "tp " << tp;
    EXPECT_LE(err_blocks, 2 * activation_noise + 1e-4 * max_ref) << "tp " << tp;
    RecordProperty(fmt::format("tp{}_f32_max_abs_error", tp), fmt::format("{:.3g}", err));
    RecordProperty(fmt::format("tp{}_blocks_max_abs_error", tp), fmt::format("{:.3g}", err_blocks));
    fmt::print(
        "tp {}: max |logit error| f32 {:.3g}, blocks {:.3g}; blocks against f32 at tp 1 "
        "{:.3g}; max |logit| {:.3g}\n",
        tp, err, err_blocks, activation_noise, max_ref);
  }
}

}  // namespace
}  // namespace pp::test
