// Tests of tensor-parallel partitions (pp-partition split --tp N): every stage and rank gets a
// file holding exactly its slices (the local shapes of shard_tensors, the values of
// tp_slice_source over the model) under Hugging Face names; verify passes and catches a flipped
// byte and a rank file in another rank's place; a StageModel loaded from the rank files
// (presliced) gives bitwise the logits of the whole model loaded with the same TpRank (tied and
// untied Llama at N = 2, 3 over 1 and 2 stages; every 16/32-bit fixture family at N = 2); the
// reader and the resolver open only a rank's file and refuse another group size; the engine
// refuses a --tp other than the partition's and serves it with its own.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "pp/model/arch-tensors.h"
#include "pp/model/model-source.h"
#include "pp/model/safetensors.h"
#include "pp/model/stage-model.h"
#include "pp/model/tensor-parallel.h"
#include "pp/partition/model-resolver.h"
#include "pp/partition/partition-reader.h"
#include "pp/partition/shard-writer.h"
#include "pp/pipeline/engine.h"
#include "test-engine-util.h"
#include "test-partition-model.h"
#include "test-tp-group.h"
#include "test-util.h"

namespace pp::partition {
namespace {

namespace fs = std::filesystem;
using model::ModelSource;
using model::StageModel;

Result<PartitionManifest> split_tp(const ModelSource& src, int p, int32_t tp, const fs::path& out,
                                   model::DType dtype = model::DType::kF32) {
  PlanOptions po;
  po.n_stages = p;
  po.dtype = dtype;
  PP_ASSIGN_OR_RETURN(Plan plan, make_plan(src.config, po));
  WriteOptions o;
  o.out_dir = out;
  o.tp = tp;
  return write_partition(src, plan, o);
}

// Loads stage k as rank r (of the group the caller runs).
using Loader = std::function<Result<std::unique_ptr<StageModel>>(int k, int32_t r)>;

// Logits of a prompt and one decode token through `n_stages` stages run as `tp` ranks in
// threads; rank 0's logits.
std::vector<float> run_ranks(int n_stages, int32_t tp, const Loader& load,
                             const std::vector<int32_t>& prompt, int32_t next) {
  test::ThreadGroup group(tp);
  std::vector<std::vector<float>> logits(static_cast<size_t>(tp));
  std::vector<std::string> errors(static_cast<size_t>(tp));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < tp; ++r) {
    threads.emplace_back([&, r] {
      test::ThreadGroup::Comm comm(&group, r);
      std::vector<std::unique_ptr<StageModel>> stages;
      for (int k = 0; k < n_stages; ++k) {
        auto m = load(k, r);
        if (!m.ok()) {
          errors[size_t(r)] = m.status().message();
          return;  // every rank fails alike here, so no one waits at a barrier
        }
        (*m)->set_tp_comm(&comm);
        if (Status s = (*m)->allocate_kv(8, 16); !s.ok()) {
          errors[size_t(r)] = s.message();
          return;
        }
        stages.push_back(std::move(*m));
      }
      const std::vector<int32_t> table = {3, 0, 5, 1};
      for (int step = 0; step < 2; ++step) {
        model::Batch b;
        if (step == 0) {
          b.add_sequence(prompt, 0, table, true);
        } else {
          b.add_sequence(std::span<const int32_t>(&next, 1), int32_t(prompt.size()), table, true);
        }
        std::vector<float> h, out;
        for (auto& s : stages) {
          if (Status st = s->forward(b, h, out); !st.ok()) {
            errors[size_t(r)] = st.message();
            return;
          }
          h.swap(out);
        }
        logits[size_t(r)].insert(logits[size_t(r)].end(), h.begin(), h.end());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int32_t r = 0; r < tp; ++r) EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
  return logits[0];
}

// The tensors rank r's file of stage k must hold, by name in the file: the stage's table as the
// rank holds it, a head reading the embedding stored as lm_head.weight unless the stage holds
// the table itself.
std::map<std::string, model::ShardedTensor> expected_rank_tensors(const ModelSource& src,
                                                                  const StagePlan& s, int32_t r,
                                                                  int32_t tp) {
  const model::ModelConfig& c = src.config;
  const model::StageTensors st =
      model::stage_tensors(c, stage_parts(s), model::head_reads_embedding(c, *src.weights));
  auto layout = model::tp_layout(c, {r, tp});
  EXPECT_TRUE(layout.ok()) << layout.status().message();
  std::map<std::string, model::ShardedTensor> out;
  for (const model::ShardedTensor& t : model::shard_tensors(c, *layout, st.tensors)) {
    const bool head = t.local.slot == model::WeightSlot::kLmHead;
    out.emplace(head ? "lm_head.weight" : t.local.name, t);
  }
  return out;
}

void expect_tp_split(const fs::path& model_dir, int32_t tp, int p) {
  SCOPED_TRACE(::testing::Message() << model_dir.filename() << " tp " << tp << " stages " << p);
  test::TempDir tmp;
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok()) << src.status().message();
  const model::ModelConfig& c = src->config;
  const fs::path out = tmp.path() / "part";
  auto m = split_tp(*src, p, tp, out);
  ASSERT_TRUE(m.ok()) << m.status().message();

  // The manifest as read back: tp, version 2, one file per stage and rank.
  auto back = open_partition(out);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->tp, tp);
  EXPECT_EQ(back->format_version, kManifestFormatVersionTp);
  ASSERT_EQ(back->n_stages(), p);
  for (int k = 0; k < p; ++k) {
    ASSERT_EQ(back->files[k].ranks.size(), size_t(tp));
    for (int32_t r = 0; r < tp; ++r) {
      EXPECT_EQ(back->files[k].ranks[size_t(r)].file,
                "stage-" + std::to_string(k) + "-rank-" + std::to_string(r) + ".safetensors");
    }
  }
  EXPECT_FALSE(fs::exists(out / "stage-0.safetensors"));

  auto checks = verify_partition(out);
  ASSERT_TRUE(checks.ok()) << checks.status().message();
  EXPECT_EQ(checks->size(), size_t(p * tp + 1));  // every rank file and the tokenizer
  for (const FileCheck& fc : *checks) EXPECT_TRUE(fc.ok) << fc.file << ": " << fc.problem;

  // Each rank file holds exactly its slices: names, local shapes, and the values the rank
  // reads out of the whole model.
  for (int k = 0; k < p; ++k) {
    for (int32_t r = 0; r < tp; ++r) {
      auto f = model::open_safetensors(out / back->files[k].ranks[size_t(r)].file);
      ASSERT_TRUE(f.ok()) << f.status().message();
      const auto want = expected_rank_tensors(*src, back->plan.stages[k], r, tp);
      std::vector<std::string> names = (*f)->names();
      std::sort(names.begin(), names.end());
      std::vector<std::string> want_names;
      for (const auto& [name, t] : want) want_names.push_back(name);
      EXPECT_EQ(names, want_names) << "stage " << k << " rank " << r;
      std::vector<model::ShardedTensor> shards;
      for (const auto& [name, t] : want) shards.push_back(t);
      auto sliced = model::tp_slice_source(*src->weights, shards);
      for (const auto& [name, t] : want) {
        const model::TensorInfo* info = (*f)->find(name);
        ASSERT_NE(info, nullptr) << name;
        EXPECT_EQ(info->shape, t.local.shape) << name;
        std::vector<float> got(size_t(t.local.numel())), ref(got.size());
        ASSERT_TRUE((*f)->read_f32(name, got).ok());
        ASSERT_TRUE(sliced->read_f32(t.local.name, ref).ok());
        EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size() * sizeof(float)), 0) << name;
      }
    }
  }

  // Logits: the rank files loaded as they are vs the whole model sliced at load, bitwise.
  std::uniform_int_distribution<int32_t> tok(0, int32_t(c.n_vocab - 1));
  std::vector<int32_t> prompt(9);
  for (auto& t : prompt) t = tok(test::rng());
  const int32_t next = tok(test::rng());
  const std::vector<float> ref = run_ranks(
      p, tp,
      [&](int k, int32_t r) {
        const LayerRange l = back->plan.stages[k].layers;
        return StageModel::load(c, *src->weights, l.begin, l.end, model::CpuDtype::kAuto, {r, tp});
      },
      prompt, next);
  ASSERT_EQ(ref.size(), size_t(2 * c.n_vocab));
  std::vector<std::shared_ptr<const model::WeightSource>> keep(size_t(p * tp));
  std::mutex keep_mu;
  const std::vector<float> got = run_ranks(
      p, tp,
      [&](int k, int32_t r) -> Result<std::unique_ptr<StageModel>> {
        PP_ASSIGN_OR_RETURN(StageShard shard,
                            open_stage(out, k, /*verify_checksum=*/true, {r, tp}));
        if (shard.sliced_for != model::TpRank{r, tp}) return internal_error("not marked sliced");
        {
          std::lock_guard<std::mutex> lock(keep_mu);
          keep[size_t(k * tp + r)] = shard.weights;
        }
        return StageModel::load(shard.config, *shard.weights, shard.layers.begin, shard.layers.end,
                                model::CpuDtype::kAuto, {r, tp},
                                /*presliced=*/true);
      },
      prompt, next);
  ASSERT_EQ(got.size(), ref.size());
  EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0);

  // Another group size is refused by the reader and the resolver; the resolver opens a rank's
  // file and marks it sliced.
  auto wrong = open_stage(out, 0, false, {0, tp + 1});
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("groups of " + std::to_string(tp)), std::string::npos)
      << wrong.status().message();
  EXPECT_FALSE(open_stage(out, 0).ok());  // a group of 1
  auto resolved = resolve_model(out);
  ASSERT_TRUE(resolved.ok()) << resolved.status().message();
  EXPECT_EQ(resolved->fixed_tp(), tp);
  const LayerRange l0 = back->plan.stages[0].layers;
  auto w = resolved->open_stage(0, p, l0, {tp - 1, tp});
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_EQ(w->sliced_for, (model::TpRank{tp - 1, tp}));
  EXPECT_FALSE(resolved->open_stage(0, p, l0, {0, 1}).ok());
}

TEST(PartitionTp, SplitVerifyAndLoadBitwise) {
  test::TempDir tmp;
  for (bool tied : {false, true}) {
    const fs::path model =
        test::write_random_llama(tmp.path() / (tied ? "tied" : "untied"), 4, tied);
    for (int32_t tp : {2, 3}) {
      for (int p : {1, 2}) expect_tp_split(model, tp, p);
    }
  }
}

// Every 16- and 32-bit fixture family (q/k norms, biases, MoE, head_dim apart from n_embd):
// N = 2 over two stages.
TEST(PartitionTp, FixtureFamilies) {
  test::TempDir tmp;
  for (const char* name : {"tiny-llama", "tiny-llama3", "tiny-llama-headdim", "tiny-mistral",
                           "tiny-qwen2", "tiny-qwen3", "tiny-qwen3-moe", "tiny-mixtral"}) {
    expect_tp_split(test::fixture_model_with_tokenizer(name, tmp.path()), 2, 2);
  }
}

// fp8: the rank files hold what a rank cuts out of the tp 1 fp8 shards (linears quantized
// whole, then sliced), so both give bitwise the same logits.
TEST(PartitionTp, Fp8RankFilesAreSlicesOfTheTpOneShards) {
  test::TempDir tmp;
  auto src = model::open_model(test::write_random_llama(tmp.path() / "model", 4, true));
  ASSERT_TRUE(src.ok()) << src.status().message();
  const fs::path one = tmp.path() / "one", two = tmp.path() / "two";
  ASSERT_TRUE(split_tp(*src, 2, 1, one, model::DType::kF8E4M3).ok());
  ASSERT_TRUE(split_tp(*src, 2, 2, two, model::DType::kF8E4M3).ok());
  auto checks = verify_partition(two);
  ASSERT_TRUE(checks.ok()) << checks.status().message();
  for (const FileCheck& fc : *checks) EXPECT_TRUE(fc.ok) << fc.file << ": " << fc.problem;

  std::uniform_int_distribution<int32_t> tok(0, int32_t(src->config.n_vocab - 1));
  std::vector<int32_t> prompt(7);
  for (auto& t : prompt) t = tok(test::rng());
  const int32_t next = tok(test::rng());
  std::vector<StageShard> keep;
  std::mutex mu;
  auto loader = [&](const fs::path& dir, bool presliced) -> Loader {
    return [&, dir, presliced](int k, int32_t r) -> Result<std::unique_ptr<StageModel>> {
      PP_ASSIGN_OR_RETURN(
          StageShard shard,
          open_stage(dir, k, false, presliced ? model::TpRank{r, 2} : model::TpRank{}));
      {
        std::lock_guard<std::mutex> lock(mu);
        keep.push_back(shard);
      }
      return StageModel::load(shard.config, *shard.weights, shard.layers.begin, shard.layers.end,
                              model::CpuDtype::kAuto, {r, 2}, presliced);
    };
  };
  const std::vector<float> ref = run_ranks(2, 2, loader(one, false), prompt, next);
  const std::vector<float> got = run_ranks(2, 2, loader(two, true), prompt, next);
  ASSERT_EQ(ref.size(), size_t(2 * src->config.n_vocab));
  ASSERT_EQ(got.size(), ref.size());
  EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0);
}

TEST(PartitionTp, TpOneIsTodaysLayout) {
  test::TempDir tmp;
  auto src = model::open_model(test::write_random_llama(tmp.path() / "model", 3, false));
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto m = split_tp(*src, 2, 1, tmp.path() / "part");
  ASSERT_TRUE(m.ok()) << m.status().message();
  std::ifstream in(tmp.path() / "part" / kManifestName);
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["format_version"], kManifestFormatVersion);
  EXPECT_FALSE(j.contains("tp"));
  EXPECT_FALSE(j["stages"][0].contains("ranks"));
  EXPECT_EQ(j["stages"][1]["file"], "stage-1.safetensors");
  auto resolved = resolve_model(tmp.path() / "part");
  ASSERT_TRUE(resolved.ok()) << resolved.status().message();
  EXPECT_EQ(resolved->fixed_tp(), 0);
  // Any group reads the whole file, not marked sliced.
  auto w = resolved->open_stage(1, 2, m->plan.stages[1].layers, {1, 2});
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_FALSE(w->sliced_for.has_value());
}

TEST(PartitionTp, RefusesAGroupTheModelCannotHave) {
  test::TempDir tmp;
  auto src = model::open_model(test::write_random_llama(tmp.path() / "model", 2, false));
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto m = split_tp(*src, 1, 5, tmp.path() / "part");  // 4 query heads
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument) << m.status().message();
  EXPECT_FALSE(fs::exists(tmp.path() / "part"));
  for (const auto& e : fs::directory_iterator(tmp.path())) {
    EXPECT_EQ(e.path().filename().string().find("part.tmp-"), std::string::npos);
  }
}

TEST(PartitionTp, VerifyCatchesAFlippedByteAndASwappedRank) {
  test::TempDir tmp;
  auto src = model::open_model(test::write_random_llama(tmp.path() / "model", 4, false));
  ASSERT_TRUE(src.ok()) << src.status().message();
  const fs::path out = tmp.path() / "part";
  // 4 query heads over 3 ranks: rank 2 holds 2, ranks 0 and 1 one each.
  auto m = split_tp(*src, 2, 3, out);
  ASSERT_TRUE(m.ok()) << m.status().message();

  // Flip one byte of the data section of stage 0 rank 1.
  const fs::path f = out / "stage-0-rank-1.safetensors";
  const std::vector<uint8_t> original = test::read_file_bytes(f);
  std::vector<uint8_t> bytes = original;
  std::uniform_int_distribution<size_t> at(bytes.size() / 2, bytes.size() - 1);
  bytes[at(test::rng())] ^= 0x20;
  auto write = [](const fs::path& p, const std::vector<uint8_t>& b) {
    std::ofstream(p, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  };
  write(f, bytes);
  auto checks = verify_partition(out);
  ASSERT_TRUE(checks.ok()) << checks.status().message();
  ASSERT_EQ(checks->size(), 7u);
  for (const FileCheck& c : *checks) {
    if (c.file == "stage-0-rank-1.safetensors") {
      EXPECT_FALSE(c.ok);
      EXPECT_NE(c.problem.find("sha256"), std::string::npos) << c.problem;
    } else {
      EXPECT_TRUE(c.ok) << c.file << ": " << c.problem;
    }
  }
  auto opened = open_stage(out, 0, /*verify_checksum=*/true, {1, 3});
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kDataLoss);
  write(f, original);

  // Rank 0's and rank 2's entries swapped in the manifest: sizes and checksums match their
  // files, the shapes do not match the ranks.
  nlohmann::json j;
  std::ifstream(out / kManifestName) >> j;
  std::swap(j["stages"][1]["ranks"][0]["file"], j["stages"][1]["ranks"][2]["file"]);
  std::swap(j["stages"][1]["ranks"][0]["bytes"], j["stages"][1]["ranks"][2]["bytes"]);
  std::swap(j["stages"][1]["ranks"][0]["sha256"], j["stages"][1]["ranks"][2]["sha256"]);
  std::ofstream(out / kManifestName, std::ios::trunc) << j.dump(2);
  checks = verify_partition(out);
  ASSERT_TRUE(checks.ok()) << checks.status().message();
  int bad = 0;
  for (const FileCheck& c : *checks) {
    if (c.ok) continue;
    ++bad;
    EXPECT_NE(c.problem.find("has shape"), std::string::npos) << c.problem;
  }
  EXPECT_EQ(bad, 2);
}

// The engine: a --tp other than the partition's is refused before any stage starts; with its
// own it serves the greedy tokens of the whole model run with that --tp.
TEST(PartitionTp, EngineServesItsOwnTpOnly) {
  test::TempDir tmp;
  const fs::path model_dir = tmp.path() / "model";
  test::write_random_llama(model_dir, 4, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok()) << src.status().message();
  const fs::path out = tmp.path() / "part";
  ASSERT_TRUE(split_tp(*src, 2, 2, out).ok());

  auto refused = pipeline::Engine::start([&] {
    auto o = test::engine_options(out, 2, 1);
    o.load_tokenizer = false;  // the tiny tokenizer's pre-tokenizer is not one pp runs
    o.tp_size = 1;
    return o;
  }());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("2 tensor-parallel ranks, not 1"), std::string::npos)
      << refused.status().message();

  std::vector<test::EngineRequest> reqs(2);
  for (auto& r : reqs) {
    r.prompt.resize(size_t(test::random_int(3, 12)));
    for (auto& t : r.prompt) t = int32_t(test::random_int(3, src->config.n_vocab - 1));
    r.params.max_tokens = 6;
    r.params.temperature = 0;
    r.params.ignore_eos = true;
  }
  auto serve = [&](const fs::path& model) -> std::vector<test::EngineOutput> {
    auto o = test::engine_options(model, 2, 1);
    o.load_tokenizer = false;
    o.tp_size = 2;
    auto engine = pipeline::Engine::start(o);
    EXPECT_TRUE(engine.ok()) << engine.status().message();
    if (!engine.ok()) return {};
    return test::run_requests(**engine, reqs);
  };
  const auto whole = serve(model_dir);
  const auto part = serve(out);
  ASSERT_EQ(whole.size(), reqs.size());
  ASSERT_EQ(part.size(), reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(part[i].error, "") << i;
    EXPECT_EQ(part[i].n_finals, 1) << i;
    EXPECT_EQ(part[i].tokens.size(), 6u) << i;
    EXPECT_EQ(part[i].tokens, whole[i].tokens) << i;
  }
}

}  // namespace
}  // namespace pp::partition
