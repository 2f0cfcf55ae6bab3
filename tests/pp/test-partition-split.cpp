// Tests of the shard writer and partition reader: tensors survive a split (f32 exactly, bf16
// within rounding), running the P stage shards in sequence gives bitwise the logits of the whole
// model (P = 1..4, every tiny fixture family and the default GGUF model; the FP8 fixtures in f32
// and in fp8), --dtype fp8 quantizes the layers' linears per channel and keeps an FP8
// checkpoint's own bytes (or dequantizes it for bf16), tied embeddings give
// the last stage its own lm_head, writes are atomic under injected failures and cancellation,
// --force replaces atomically, and verification catches a flipped byte and a truncated file.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/statvfs.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>

#include "pp/kernels/float-convert.h"
#include "pp/kernels/host-weight.h"
#include "pp/model/arch-tensors.h"
#include "pp/model/model-source.h"
#include "pp/model/quantization.h"
#include "pp/model/safetensors.h"
#include "pp/model/stage-model.h"
#include "pp/partition/partition-reader.h"
#include "pp/partition/sha256.h"
#include "pp/partition/shard-writer.h"
#include "test-partition-model.h"
#include "test-util.h"

namespace pp::partition {
namespace {

namespace fs = std::filesystem;
using model::ModelSource;
using model::StageModel;

Result<PartitionManifest> split(const ModelSource& src, int p, model::DType dtype,
                                const fs::path& out, WriteOptions o = {},
                                Strategy strategy = Strategy::kEven) {
  PlanOptions po;
  po.n_stages = p;
  po.dtype = dtype;
  po.strategy = strategy;
  PP_ASSIGN_OR_RETURN(Plan plan, make_plan(src.config, po));
  o.out_dir = out;
  return write_partition(src, plan, o);
}

// Entries of `dir` whose names start with `prefix` (temporary folders left behind).
std::vector<std::string> leftovers(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.starts_with(prefix)) out.push_back(n);
  }
  return out;
}

// Runs `stages` in sequence on a prompt and then one decode token; returns both logit rows.
std::vector<float> run_pipeline(std::vector<std::unique_ptr<StageModel>>& stages,
                                const std::vector<int32_t>& prompt, int32_t next) {
  for (auto& s : stages) {
    Status st = s->allocate_kv(8, 16);
    EXPECT_TRUE(st.ok()) << st.message();
  }
  std::vector<int32_t> table = {3, 0, 5, 1};
  std::vector<float> all;
  for (int step = 0; step < 2; ++step) {
    model::Batch b;
    if (step == 0) {
      b.add_sequence(prompt, 0, table, true);
    } else {
      b.add_sequence(std::span<const int32_t>(&next, 1), int32_t(prompt.size()), table, true);
    }
    std::vector<float> h, out;
    for (auto& s : stages) {
      Status st = s->forward(b, h, out);
      EXPECT_TRUE(st.ok()) << st.message();
      h.swap(out);
    }
    all.insert(all.end(), h.begin(), h.end());
  }
  return all;
}

// A folder for large scratch partitions: under /dev/shm when it has room (fsync on tmpfs costs
// nothing, so the default model's four f32 splits take seconds, not minutes), else the temp dir.
fs::path fast_scratch_base() {
  struct statvfs st {};
  if (::statvfs("/dev/shm", &st) == 0 && uint64_t(st.f_bavail) * st.f_frsize > (4ull << 30)) {
    return "/dev/shm";
  }
  return fs::temp_directory_path();
}

// Whole model vs its P-stage split in `dtype` (f32 by default; fp8 for an FP8 checkpoint keeps
// its bytes and scales), bitwise, for P = 1..min(4, n_layer).
void expect_split_bitwise(const fs::path& model_path, int max_p = 4, bool large = false,
                          model::DType dtype = model::DType::kF32) {
  auto src = model::open_model(model_path);
  ASSERT_TRUE(src.ok()) << src.status().message();
  const auto& c = src->config;
  std::uniform_int_distribution<int32_t> tok(0, int32_t(c.n_vocab - 1));
  std::vector<int32_t> prompt(11);
  for (auto& t : prompt) t = tok(test::rng());
  int32_t next = tok(test::rng());

  // Shards hold f32 (or bf16) tensors, so the whole model's reference is the f32 load of a GGUF.
  std::vector<std::unique_ptr<StageModel>> whole;
  auto w = StageModel::load(c, *src->weights, 0, c.n_layer, model::CpuDtype::kF32);
  ASSERT_TRUE(w.ok()) << w.status().message();
  whole.push_back(std::move(w).value());
  std::vector<float> ref = run_pipeline(whole, prompt, next);
  ASSERT_EQ(ref.size(), size_t(2 * c.n_vocab));

  for (int p = 1; p <= std::min<int64_t>(max_p, c.n_layer); ++p) {
    test::TempDir tmp;
    fs::path base = tmp.path();
    std::string shm;
    if (large) {
      shm = (fast_scratch_base() / "pp-partition-test-XXXXXX").string();
      ASSERT_NE(mkdtemp(shm.data()), nullptr);
      base = shm;
    }
    struct Cleanup {
      std::string dir;
      ~Cleanup() {
        std::error_code ec;
        if (!dir.empty()) fs::remove_all(dir, ec);
      }
    } cleanup{shm};
    fs::path out = base / "part";
    auto m = split(*src, p, dtype, out);
    ASSERT_TRUE(m.ok()) << m.status().message();
    std::vector<std::unique_ptr<StageModel>> stages;
    for (int k = 0; k < p; ++k) {
      auto shard = open_stage(out, k, /*verify_checksum=*/true);
      ASSERT_TRUE(shard.ok()) << shard.status().message();
      auto sm =
          StageModel::load(shard->config, *shard->weights, shard->layers.begin, shard->layers.end);
      ASSERT_TRUE(sm.ok()) << sm.status().message();
      stages.push_back(std::move(sm).value());
    }
    std::vector<float> got = run_pipeline(stages, prompt, next);
    ASSERT_EQ(got.size(), ref.size());
    EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0)
        << model_path << " pp " << p << ": first mismatch at "
        << test::first_mismatch(got, ref, 0, 0);
  }
}

TEST(PartitionSplit, BitwiseLogitsOnTinyFixtures) {
  test::TempDir tmp;
  for (const char* name : {"tiny-llama", "tiny-llama-headdim", "tiny-llama3", "tiny-mistral",
                           "tiny-qwen2", "tiny-qwen3", "tiny-qwen3-moe", "tiny-mixtral"}) {
    if (!fs::exists(test::fixture_dir() / "models" / name)) {
      ADD_FAILURE() << "missing fixture " << name;
      continue;
    }
    SCOPED_TRACE(name);
    expect_split_bitwise(test::fixture_model_with_tokenizer(name, tmp.path()));
  }
}

TEST(PartitionSplit, BitwiseLogitsOnFp8Fixtures) {
  test::TempDir tmp;
  for (const char* name :
       {"tiny-llama-fp8-block", "tiny-llama-fp8-ct", "tiny-qwen3-fp8-block", "tiny-qwen3-fp8-ct"}) {
    SCOPED_TRACE(name);
    const fs::path m = test::fixture_model_with_tokenizer(name, tmp.path());
    expect_split_bitwise(m, 2, false, model::DType::kF32);
    expect_split_bitwise(m, 2, false, model::DType::kF8E4M3);
  }
}

TEST(PartitionSplit, BitwiseLogitsOnRandomModels) {
  test::TempDir tmp;
  expect_split_bitwise(test::write_random_llama(tmp.path() / "untied", 5, false));
  expect_split_bitwise(test::write_random_llama(tmp.path() / "tied", 4, true));
}

TEST(PartitionSplit, BitwiseLogitsOnDefaultModel) {
  fs::path p = test::default_model_path();
  if (!fs::exists(p)) GTEST_SKIP() << "default model not found at " << p;
  expect_split_bitwise(p, 4, /*large=*/true);
}

TEST(PartitionSplit, RoundTripTensorsF32ExactBf16Rounded) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 5, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok()) << src.status().message();
  for (model::DType dt : {model::DType::kF32, model::DType::kBF16, model::DType::kF16}) {
    fs::path out = tmp.path() / (std::string("part-") + shard_dtype_name(dt));
    auto m = split(*src, 3, dt, out, {}, Strategy::kCost);
    ASSERT_TRUE(m.ok()) << m.status().message();
    size_t seen = 0;
    for (int k = 0; k < m->n_stages(); ++k) {
      auto shard = open_stage(out, k);
      ASSERT_TRUE(shard.ok()) << shard.status().message();
      for (const std::string& name : shard->weights->names()) {
        const model::TensorInfo* info = shard->weights->find(name);
        EXPECT_EQ(info->dtype, dt) << name;
        EXPECT_EQ(info->shape, src->weights->find(name)->shape) << name;
        auto got = shard->weights->read_f32(name);
        auto ref = src->weights->read_f32(name);
        ASSERT_TRUE(got.ok() && ref.ok());
        double rtol = dt == model::DType::kF32    ? 0
                      : dt == model::DType::kBF16 ? 1.0 / 256
                                                  : 1.0 / 2048;
        EXPECT_EQ(test::first_mismatch(*got, *ref, dt == model::DType::kF16 ? 1e-7 : 0, rtol), -1)
            << name << " " << shard_dtype_name(dt);
        if (dt != model::DType::kF32) {
          EXPECT_NE(std::memcmp(got->data(), ref->data(), ref->size() * 4), 0)
              << name << ": a 16-bit split of random f32 values should round";
        }
        ++seen;
      }
    }
    EXPECT_EQ(seen, src->weights->names().size());
  }
}

// --dtype fp8 of a bf16/f32 model: the layers' linears are HostWeight::quantize_fp8 per channel
// of the source values (stored with `P.weight_scale` [rows, 1]), every other tensor bf16, and the
// config says compressed-tensors per channel.
TEST(PartitionSplit, Fp8QuantizesTheLinearsPerChannel) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 4, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok()) << src.status().message();
  fs::path out = tmp.path() / "part";
  auto m = split(*src, 2, model::DType::kF8E4M3, out);
  ASSERT_TRUE(m.ok()) << m.status().message();
  auto back = open_partition(out);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->plan.dtype, model::DType::kF8E4M3);
  using Q = model::WeightQuantConfig;
  EXPECT_EQ(back->config.quant.method, Q::Method::kCompressedTensors);
  EXPECT_EQ(back->config.quant.strategy, Q::Strategy::kChannel);
  EXPECT_EQ(back->config.quant.not_converted, std::vector<std::string>{"lm_head"});
  EXPECT_EQ(back->config_json["quantization_config"]["quant_method"], "compressed-tensors");
  size_t seen = 0, quantized = 0;
  for (int k = 0; k < back->n_stages(); ++k) {
    auto shard = open_stage(out, k, /*verify_checksum=*/true);
    ASSERT_TRUE(shard.ok()) << shard.status().message();
    for (const std::string& name : shard->weights->names()) {
      SCOPED_TRACE(name);
      ++seen;
      const model::TensorInfo* info = shard->weights->find(name);
      auto ref = src->weights->read_f32(name);
      ASSERT_TRUE(ref.ok());
      const auto spec = model::find_tensor_spec(src->config, name);
      ASSERT_TRUE(spec.has_value());
      if (!model::quantized_on_load(*spec)) {
        EXPECT_EQ(info->dtype, model::DType::kBF16);
        auto got = shard->weights->read_f32(name);
        ASSERT_TRUE(got.ok());
        EXPECT_EQ(test::first_mismatch(*got, *ref, 0, 1.0 / 256), -1);
        continue;
      }
      ++quantized;
      EXPECT_EQ(info->dtype, model::DType::kF8E4M3);
      EXPECT_EQ(info->scale_kind, kernels::ScaleKind::kPerChannel);
      const auto want = kernels::HostWeight::quantize_fp8(*ref, spec->rows(), spec->cols(),
                                                          kernels::ScaleKind::kPerChannel);
      auto got = shard->weights->read_weight(name);
      ASSERT_TRUE(got.ok()) << got.status().message();
      ASSERT_EQ(got->bytes().size(), want.bytes().size());
      EXPECT_EQ(std::memcmp(got->bytes().data(), want.bytes().data(), want.bytes().size()), 0);
      EXPECT_TRUE(std::equal(got->scales().begin(), got->scales().end(), want.scales().begin(),
                             want.scales().end()));
      std::vector<float> deq(size_t(want.numel()));
      want.dequantize(deq);
      EXPECT_EQ(*shard->weights->read_f32(name), deq);
    }
  }
  EXPECT_EQ(seen, src->weights->names().size());
  EXPECT_EQ(quantized, 4u * 7u);
  // The shard file holds the scales too, under compressed-tensors names.
  auto f = model::SafetensorsFile::open(out / "stage-0.safetensors");
  ASSERT_TRUE(f.ok());
  const model::TensorInfo* s = (*f)->find("model.layers.0.self_attn.q_proj.weight_scale");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->dtype, model::DType::kF32);
  EXPECT_EQ(s->shape, (std::vector<int64_t>{32, 1}));
}

// An FP8 checkpoint split to fp8 keeps its bytes and block scales (`P.weight_scale_inv`) and its
// quantization_config; split to bf16 it is dequantized and the config no longer quantized.
TEST(PartitionSplit, Fp8SourceKeepsItsBytesOrDequantizes) {
  test::TempDir tmp;
  const fs::path model_dir = test::fixture_model_with_tokenizer("tiny-qwen3-fp8-block", tmp.path());
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok()) << src.status().message();
  using Q = model::WeightQuantConfig;
  ASSERT_EQ(src->config.quant.method, Q::Method::kFp8);
  for (const model::DType dt : {model::DType::kF8E4M3, model::DType::kBF16}) {
    SCOPED_TRACE(shard_dtype_name(dt));
    fs::path out = tmp.path() / (std::string("part-") + shard_dtype_name(dt));
    auto m = split(*src, 2, dt, out);
    ASSERT_TRUE(m.ok()) << m.status().message();
    auto back = open_partition(out);
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->config.quant.method,
              dt == model::DType::kF8E4M3 ? Q::Method::kFp8 : Q::Method::kNone);
    int n_fp8 = 0;
    for (int k = 0; k < back->n_stages(); ++k) {
      auto shard = open_stage(out, k);
      ASSERT_TRUE(shard.ok()) << shard.status().message();
      for (const std::string& name : shard->weights->names()) {
        SCOPED_TRACE(name);
        const model::TensorInfo* from = src->weights->find(name);
        const model::TensorInfo* info = shard->weights->find(name);
        if (from->dtype != model::DType::kF8E4M3) {
          EXPECT_EQ(info->dtype, model::DType::kBF16);
          EXPECT_EQ(*shard->weights->read_f32(name), *src->weights->read_f32(name));
          continue;
        }
        ++n_fp8;
        if (dt == model::DType::kBF16) {
          // bf16 of the dequantized values.
          EXPECT_EQ(info->dtype, model::DType::kBF16);
          std::vector<float> want = *src->weights->read_f32(name);
          for (float& v : want) v = kernels::bf16_to_f32(kernels::f32_to_bf16(v));
          EXPECT_EQ(*shard->weights->read_f32(name), want);
          continue;
        }
        EXPECT_EQ(info->dtype, model::DType::kF8E4M3);
        EXPECT_EQ(info->scale_kind, kernels::ScaleKind::kBlock128x128);
        auto got = shard->weights->read_weight(name);
        auto want = src->weights->read_weight(name);
        ASSERT_TRUE(got.ok() && want.ok());
        EXPECT_EQ(std::memcmp(got->bytes().data(), want->bytes().data(), want->bytes().size()), 0);
        EXPECT_TRUE(std::equal(got->scales().begin(), got->scales().end(), want->scales().begin(),
                               want->scales().end()));
      }
    }
    EXPECT_EQ(n_fp8, 2 * 7);
  }
}

TEST(PartitionSplit, ManifestDescribesTheStages) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 6, true);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok()) << src.status().message();
  fs::path out = tmp.path() / "part";
  auto m = split(*src, 3, model::DType::kBF16, out);
  ASSERT_TRUE(m.ok()) << m.status().message();
  auto back = open_partition(out);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->n_stages(), 3);
  EXPECT_EQ(back->plan.dtype, model::DType::kBF16);
  EXPECT_EQ(back->config.n_layer, 6);
  EXPECT_TRUE(back->config.tie_word_embeddings);
  EXPECT_EQ(back->source.kind, "hf");
  EXPECT_EQ(back->source.sha256, *sha256_file(model_dir / "model.safetensors"));
  EXPECT_EQ(back->tokenizer.file, "tokenizer.json");
  EXPECT_EQ(test::read_file_bytes(out / "tokenizer.json"),
            test::read_file_bytes(model_dir / "tokenizer.json"));
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(back->plan.stages[k].layers, (LayerRange{2 * k, 2 * k + 2}));
    ASSERT_EQ(back->files[k].ranks.size(), 1u);
    const ShardFile& f = back->files[k].ranks[0];
    EXPECT_EQ(f.file, "stage-" + std::to_string(k) + ".safetensors");
    EXPECT_EQ(f.sha256, *sha256_file(out / f.file));
    EXPECT_EQ(f.bytes, fs::file_size(out / f.file));
  }
  // Tied: the last stage holds its own lm_head copy, equal to the embedding table.
  EXPECT_EQ(back->files[2].lm_head_tensor, "lm_head.weight");
  auto last = open_stage(out, 2);
  auto first = open_stage(out, 0);
  ASSERT_TRUE(last.ok() && first.ok());
  EXPECT_EQ(first->weights->find("lm_head.weight"), nullptr);
  EXPECT_EQ(last->weights->find("model.embed_tokens.weight"), nullptr);
  EXPECT_EQ(*last->weights->read_f32("lm_head.weight"),
            *first->weights->read_f32("model.embed_tokens.weight"));
  // Only the stage's own layers.
  for (const auto& n : first->weights->names()) {
    EXPECT_TRUE(n.starts_with("model.embed_tokens") || n.starts_with("model.layers.0.") ||
                n.starts_with("model.layers.1."))
        << n;
  }
  EXPECT_FALSE(open_stage(out, 3).ok());
}

TEST(PartitionSplit, InjectedFailureLeavesNothing) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 4, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok());
  WriteOptions o;
  int calls = 0;
  o.after_stage = [&](int k, const StageFile&) -> Status {
    ++calls;
    if (k == 0) return internal_error("injected failure after stage {}", k);
    return ok_status();
  };
  fs::path out = tmp.path() / "part";
  auto m = split(*src, 3, model::DType::kF32, out, o);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("injected"), std::string::npos);
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(tmp.path(), "part").empty());
}

TEST(PartitionSplit, CancelLeavesNothing) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 4, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok());
  std::atomic<bool> cancel{false};
  WriteOptions o;
  o.cancel = &cancel;
  o.after_stage = [&](int k, const StageFile&) -> Status {
    if (k == 1) cancel = true;  // as a SIGINT handler would
    return ok_status();
  };
  fs::path out = tmp.path() / "part";
  auto m = split(*src, 4, model::DType::kF32, out, o);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kCancelled);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(leftovers(tmp.path(), "part").empty());
}

TEST(PartitionSplit, ExistingDirRefusedOrReplacedWithForce) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 4, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok());
  fs::path out = tmp.path() / "part";
  fs::create_directory(out);
  std::ofstream(out / "marker") << "old";
  auto refused = split(*src, 2, model::DType::kF32, out);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(fs::exists(out / "marker"));

  // A failed forced write leaves the old folder as it was.
  WriteOptions failing;
  failing.force = true;
  failing.after_stage = [](int, const StageFile&) { return internal_error("injected"); };
  ASSERT_FALSE(split(*src, 2, model::DType::kF32, out, failing).ok());
  EXPECT_TRUE(fs::exists(out / "marker"));

  WriteOptions force;
  force.force = true;
  auto m = split(*src, 2, model::DType::kF32, out, force);
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_FALSE(fs::exists(out / "marker"));
  EXPECT_TRUE(open_partition(out).ok());
  std::vector<std::string> left = leftovers(tmp.path(), "part");
  EXPECT_EQ(left, std::vector<std::string>{"part"});

  auto no_parent = split(*src, 2, model::DType::kF32, tmp.path() / "no" / "such" / "dir");
  ASSERT_FALSE(no_parent.ok());
  EXPECT_EQ(no_parent.status().code(), StatusCode::kNotFound);
}

TEST(PartitionSplit, HfFolderWithoutTokenizerIsRefused) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 2, false);
  fs::remove(model_dir / "tokenizer.json");
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok());
  auto m = split(*src, 2, model::DType::kF32, tmp.path() / "part");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("tokenizer"), std::string::npos);
  EXPECT_TRUE(leftovers(tmp.path(), "part").empty());
}

TEST(PartitionVerify, DetectsFlippedByteTruncationAndMissingFile) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 4, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok());
  fs::path out = tmp.path() / "part";
  auto m = split(*src, 2, model::DType::kBF16, out);
  ASSERT_TRUE(m.ok()) << m.status().message();
  auto clean = verify_partition(out);
  ASSERT_TRUE(clean.ok()) << clean.status().message();
  for (const FileCheck& c : *clean) EXPECT_TRUE(c.ok) << c.file << ": " << c.problem;
  EXPECT_EQ(clean->size(), 3u);  // two stages and the tokenizer

  // Flip one byte of stage 1's data section.
  fs::path f1 = out / "stage-1.safetensors";
  auto bytes = test::read_file_bytes(f1);
  std::uniform_int_distribution<size_t> at(bytes.size() / 2, bytes.size() - 1);
  size_t i = at(test::rng());
  bytes[i] ^= 0x10;
  std::ofstream(f1, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  auto flipped = verify_partition(out);
  ASSERT_TRUE(flipped.ok());
  EXPECT_TRUE((*flipped)[0].ok);
  EXPECT_FALSE((*flipped)[1].ok);
  EXPECT_NE((*flipped)[1].problem.find("sha256"), std::string::npos) << (*flipped)[1].problem;
  EXPECT_TRUE(open_stage(out, 1).ok());  // size only
  auto checked = open_stage(out, 1, /*verify_checksum=*/true);
  ASSERT_FALSE(checked.ok());
  EXPECT_EQ(checked.status().code(), StatusCode::kDataLoss);

  // Truncate stage 0.
  fs::path f0 = out / "stage-0.safetensors";
  fs::resize_file(f0, fs::file_size(f0) - 3);
  auto truncated = verify_partition(out);
  ASSERT_TRUE(truncated.ok());
  EXPECT_FALSE((*truncated)[0].ok);
  EXPECT_NE((*truncated)[0].problem.find("bytes"), std::string::npos) << (*truncated)[0].problem;
  EXPECT_FALSE(open_stage(out, 0).ok());

  fs::remove(out / "tokenizer.json");
  auto missing = verify_partition(out);
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->back().problem, "missing");

  fs::remove(out / kManifestName);
  EXPECT_FALSE(verify_partition(out).ok());
}

TEST(PartitionManifest, RejectsMalformedManifests) {
  test::TempDir tmp;
  fs::path model_dir = test::write_random_llama(tmp.path() / "m", 4, false);
  auto src = model::open_model(model_dir);
  ASSERT_TRUE(src.ok());
  fs::path out = tmp.path() / "part";
  auto m = split(*src, 2, model::DType::kF32, out);
  ASSERT_TRUE(m.ok());
  nlohmann::json good = manifest_to_json(*m);
  ASSERT_TRUE(manifest_from_json(good, "x").ok());
  auto mutate = [&](const std::function<void(nlohmann::json&)>& f) {
    nlohmann::json j = good;
    f(j);
    return manifest_from_json(j, "x");
  };
  EXPECT_FALSE(mutate([](auto& j) { j["stages"][1]["layers"]["begin"] = 1; }).ok());  // overlap
  EXPECT_FALSE(mutate([](auto& j) { j["stages"][1]["layers"]["end"] = 3; }).ok());    // short
  EXPECT_FALSE(mutate([](auto& j) { j["stages"][0]["file"] = "../etc/passwd"; }).ok());
  EXPECT_FALSE(mutate([](auto& j) { j["stages"][0].erase("sha256"); }).ok());
  EXPECT_FALSE(mutate([](auto& j) { j["format_version"] = 99; }).ok());
  EXPECT_FALSE(mutate([](auto& j) { j["dtype"] = "q4"; }).ok());
  EXPECT_FALSE(mutate([](auto& j) { j["tokenizer"]["file"] = "/etc/passwd"; }).ok());
  EXPECT_FALSE(mutate([](auto& j) { j["stages"][1]["lm_head"] = false; }).ok());
  // Integer fields as floats, or beyond their type (the partition fuzzer's 5.3e116 was an
  // undefined float-to-integer cast): refused as data loss.
  for (const nlohmann::json& bad : {nlohmann::json(5.33333e116), nlohmann::json(2.5),
                                    nlohmann::json(uint64_t(1) << 63), nlohmann::json(-1e300)}) {
    auto r = mutate([&](auto& j) { j["format_version"] = bad; });
    ASSERT_FALSE(r.ok()) << bad.dump();
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().message();
    EXPECT_FALSE(mutate([&](auto& j) { j["stages"][0]["layers"]["begin"] = bad; }).ok());
  }
}

}  // namespace
}  // namespace pp::partition
