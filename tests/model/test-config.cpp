// ModelConfig: config.json of each family in its older and transformers-5 forms, GGUF
// metadata, the round trip through config_to_hf_json, and clear errors for bad or missing
// fields; open_model on folders, files and paths that are not models.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "pp/model/config.h"
#include "pp/model/gguf.h"
#include "pp/model/model-source.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::Arch;
using model::ModelConfig;
using model::RopeScaling;
using nlohmann::json;

ModelConfig parse_ok(const json& j) {
  auto c = model::config_from_hf_json(j);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return c.ok() ? *c : ModelConfig{};
}

Status parse_error(const json& j) {
  auto c = model::config_from_hf_json(j);
  EXPECT_FALSE(c.ok());
  return c.status();
}

bool contains(const std::string& s, const std::string& sub) {
  return s.find(sub) != std::string::npos;
}

// TinyLlama-1.1B-Chat-v1.0, older form.
json tinyllama() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 5632, "max_position_embeddings": 2048, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32000})");
}

TEST(ConfigHf, TinyLlama) {
  const ModelConfig c = parse_ok(tinyllama());
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_STREQ(model::arch_name(c.arch), "LlamaForCausalLM");
  EXPECT_EQ(c.n_vocab, 32000);
  EXPECT_EQ(c.n_embd, 2048);
  EXPECT_EQ(c.n_ff, 5632);
  EXPECT_EQ(c.n_layer, 22);
  EXPECT_EQ(c.n_head, 32);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.head_dim, 64);  // default hidden / heads
  EXPECT_EQ(c.max_position, 2048);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope.theta, 10000.0f);
  EXPECT_EQ(c.rope.scaling, RopeScaling::kNone);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.bos_token_ids, std::vector<int32_t>{1});
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c.q_dim(), 2048);
  EXPECT_EQ(c.kv_dim(), 256);
}

TEST(ConfigHf, SmolLM2AndDefaults) {
  json j = json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "max_position_embeddings": 8192, "rope_theta": 100000, "tie_word_embeddings": true,
    "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2})");
  ModelConfig c = parse_ok(j);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FLOAT_EQ(c.rope.theta, 100000.0f);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);  // default
  // num_key_value_heads absent (or null) defaults to num_attention_heads.
  j.erase("num_key_value_heads");
  EXPECT_EQ(parse_ok(j).n_head_kv, 9);
  j["num_key_value_heads"] = nullptr;
  EXPECT_EQ(parse_ok(j).n_head_kv, 9);
}

TEST(ConfigHf, Llama3RopeBothForms) {
  // Llama 3.1 8B, older form.
  json old_form = json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16"})");
  // The same in transformers 5's form.
  json new_form = old_form;
  new_form.erase("rope_theta");
  new_form.erase("rope_scaling");
  new_form.erase("torch_dtype");
  new_form["dtype"] = "bfloat16";
  new_form["rope_parameters"] = {
      {"rope_type", "llama3"},   {"rope_theta", 500000.0},
      {"factor", 8.0},           {"low_freq_factor", 1.0},
      {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  for (const json& j : {old_form, new_form}) {
    const ModelConfig c = parse_ok(j);
    EXPECT_EQ(c.rope.scaling, RopeScaling::kLlama3);
    EXPECT_FLOAT_EQ(c.rope.theta, 500000.0f);
    EXPECT_FLOAT_EQ(c.rope.factor, 8.0f);
    EXPECT_FLOAT_EQ(c.rope.low_freq_factor, 1.0f);
    EXPECT_FLOAT_EQ(c.rope.high_freq_factor, 4.0f);
    EXPECT_EQ(c.rope.original_max_position, 8192);
    EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
    EXPECT_EQ(c.torch_dtype, "bfloat16");
  }
  // "type" is the oldest spelling of "rope_type".
  json linear = tinyllama();
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const ModelConfig c = parse_ok(linear);
  EXPECT_EQ(c.rope.scaling, RopeScaling::kLinear);
  EXPECT_FLOAT_EQ(c.rope.factor, 4.0f);
}

TEST(ConfigHf, Mistral) {
  json j = json::parse(R"({
    "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "sliding_window": null, "vocab_size": 32768, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "bfloat16"})");
  ModelConfig c = parse_ok(j);
  EXPECT_EQ(c.arch, Arch::kMistral);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.max_context(), 32768);
  EXPECT_FALSE(c.attention_bias);
  j["sliding_window"] = 4096;
  c = parse_ok(j);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.max_context(), 4096);  // full attention is exact up to the window
}

TEST(ConfigHf, Qwen2BothForms) {
  json old_form = json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "use_sliding_window": false, "max_window_layers": 21,
    "tie_word_embeddings": true, "vocab_size": 151936, "bos_token_id": 151643,
    "eos_token_id": 151645, "torch_dtype": "bfloat16"})");
  json new_form = old_form;
  new_form.erase("rope_theta");
  new_form["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  for (const json& j : {old_form, new_form}) {
    const ModelConfig c = parse_ok(j);
    EXPECT_EQ(c.arch, Arch::kQwen2);
    EXPECT_TRUE(c.attention_bias);  // always, though the config does not say
    EXPECT_FALSE(c.qk_norm);
    EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window is false
    EXPECT_FLOAT_EQ(c.rope.theta, 1e6f);
    EXPECT_EQ(c.rope.scaling, RopeScaling::kNone);
    EXPECT_EQ(c.head_dim, 64);
    EXPECT_TRUE(c.tie_word_embeddings);
  }
}

TEST(ConfigHf, Qwen3BothForms) {
  std::ifstream in(fixture_dir() / "configs" / "qwen3-8b.json");
  json old_form = in ? json::parse(in) : json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "hidden_size": 4096, "intermediate_size": 12288,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "attention_bias": false, "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000, "vocab_size": 151936, "eos_token_id": 151645})");
  json new_form = old_form;
  new_form.erase("rope_theta");
  new_form.erase("rope_scaling");
  new_form["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000}};
  for (const json& j : {old_form, new_form}) {
    const ModelConfig c = parse_ok(j);
    EXPECT_EQ(c.arch, Arch::kQwen3);
    EXPECT_TRUE(c.qk_norm);
    EXPECT_FALSE(c.attention_bias);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.n_layer, 36);
    EXPECT_EQ(c.q_dim(), 4096);
    EXPECT_EQ(c.kv_dim(), 1024);
    EXPECT_FLOAT_EQ(c.rope.theta, 1e6f);
  }
  // An explicit head_dim that is not hidden / heads (Qwen3-0.6B: 1024 hidden, 16 x 128).
  json small = old_form;
  small["hidden_size"] = 1024;
  small["num_attention_heads"] = 16;
  EXPECT_EQ(parse_ok(small).q_dim(), 2048);
}

TEST(ConfigHf, RoundTrip) {
  for (const char* name : {"tiny-llama", "tiny-llama3", "tiny-mistral", "tiny-qwen2", "tiny-qwen3",
                           "tiny-qwen3-moe", "tiny-mixtral"}) {
    auto c = model::config_from_hf_dir(fixture_dir() / "models" / name);
    if (!c.ok()) continue;  // fixtures are optional here; test-reference needs them
    const ModelConfig back = parse_ok(model::config_to_hf_json(*c));
    EXPECT_EQ(model::config_to_hf_json(back), model::config_to_hf_json(*c)) << name;
  }
  ModelConfig c = parse_ok(tinyllama());
  c.rope.scaling = RopeScaling::kLlama3;
  c.rope.factor = 8;
  c.rope.original_max_position = 1024;
  const ModelConfig back = parse_ok(model::config_to_hf_json(c));
  EXPECT_EQ(back.rope.scaling, RopeScaling::kLlama3);
  EXPECT_EQ(back.rope.original_max_position, 1024);
  EXPECT_EQ(back.n_head_kv, c.n_head_kv);
  EXPECT_EQ(back.eos_token_ids, c.eos_token_ids);
}

TEST(ConfigHf, Errors) {
  json j = tinyllama();
  j["architectures"] = {"FooForCausalLM"};
  Status s = parse_error(j);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_EQ(s.message(), "unsupported architecture 'FooForCausalLM'");

  for (const char* field : {"hidden_size", "vocab_size", "num_hidden_layers", "intermediate_size",
                            "num_attention_heads"}) {
    json m = tinyllama();
    m.erase(field);
    s = parse_error(m);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(s.message(), fmt::format("'{}'", field))) << s.message();
  }
  j = tinyllama();
  j["hidden_size"] = "2048";
  s = parse_error(j);
  EXPECT_TRUE(contains(s.message(), "'hidden_size' must be an integer")) << s.message();
  j = tinyllama();
  j["num_key_value_heads"] = 5;
  s = parse_error(j);
  EXPECT_TRUE(contains(s.message(), "multiple")) << s.message();
  j = tinyllama();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  s = parse_error(j);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(contains(s.message(), "'yarn'")) << s.message();
  j = tinyllama();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_TRUE(contains(parse_error(j).message(), "low_freq_factor"));
  j = tinyllama();
  j["hidden_act"] = "gelu";
  EXPECT_EQ(parse_error(j).code(), StatusCode::kUnimplemented);
  j = tinyllama();
  j["eos_token_id"] = {2, "x"};
  EXPECT_TRUE(contains(parse_error(j).message(), "eos_token_id"));
  EXPECT_FALSE(model::config_from_hf_json(json::array()).ok());
}

// quantization_config as Qwen3-8B-FP8 / DeepSeek-V3 write it.
json block_fp8() {
  return json::parse(R"({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
    "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]})");
}

// As llm-compressor writes FP8-dynamic (per-channel weights).
json compressed_fp8(const char* strategy) {
  json j = json::parse(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
    "quantization_status": "compressed", "kv_cache_scheme": null, "ignore": ["lm_head"],
    "config_groups": {"group_0": {"targets": ["Linear"],
      "weights": {"num_bits": 8, "type": "float", "symmetric": true, "dynamic": false,
                  "group_size": null, "block_structure": null, "strategy": "channel"},
      "input_activations": {"num_bits": 8, "type": "float", "symmetric": true,
                            "dynamic": true, "strategy": "token"}}}})");
  j["config_groups"]["group_0"]["weights"]["strategy"] = strategy;
  if (std::string(strategy) == "block") {
    j["config_groups"]["group_0"]["weights"]["block_structure"] = {128, 128};
  }
  return j;
}

TEST(ConfigHf, QuantizationFp8) {
  using Q = model::WeightQuantConfig;
  EXPECT_EQ(parse_ok(tinyllama()).quant.method, Q::Method::kNone);
  json j = tinyllama();
  j["quantization_config"] = block_fp8();
  ModelConfig c = parse_ok(j);
  EXPECT_EQ(c.quant.method, Q::Method::kFp8);
  EXPECT_EQ(c.quant.strategy, Q::Strategy::kBlock);
  EXPECT_FALSE(c.quant.static_activations);
  EXPECT_EQ(c.quant.not_converted, std::vector<std::string>{"lm_head"});
  // fmt and the block size may be absent (per-tensor scales then); static activations are read
  // (and quantized dynamically all the same).
  j["quantization_config"].erase("fmt");
  j["quantization_config"].erase("weight_block_size");
  j["quantization_config"]["activation_scheme"] = "static";
  c = parse_ok(j);
  EXPECT_EQ(c.quant.strategy, Q::Strategy::kTensor);
  EXPECT_TRUE(c.quant.static_activations);
  j["quantization_config"] = nullptr;
  EXPECT_EQ(parse_ok(j).quant.method, Q::Method::kNone);
}

TEST(ConfigHf, QuantizationCompressedTensors) {
  using Q = model::WeightQuantConfig;
  const std::pair<const char*, Q::Strategy> cases[] = {{"tensor", Q::Strategy::kTensor},
                                                       {"channel", Q::Strategy::kChannel},
                                                       {"block", Q::Strategy::kBlock}};
  for (const auto& [name, strategy] : cases) {
    json j = tinyllama();
    j["quantization_config"] = compressed_fp8(name);
    const ModelConfig c = parse_ok(j);
    EXPECT_EQ(c.quant.method, Q::Method::kCompressedTensors) << name;
    EXPECT_EQ(c.quant.strategy, strategy) << name;
    EXPECT_EQ(c.quant.not_converted, std::vector<std::string>{"lm_head"});
  }
  json j = tinyllama();
  j["quantization_config"] = compressed_fp8("channel");
  j["quantization_config"]["format"] = "naive-quantized";
  j["quantization_config"]["config_groups"]["group_0"]["input_activations"]["dynamic"] = false;
  const ModelConfig c = parse_ok(j);
  EXPECT_TRUE(c.quant.static_activations);
  j["quantization_config"]["config_groups"]["group_0"].erase("input_activations");  // W8A16
  EXPECT_TRUE(model::config_from_hf_json(j).ok());
}

TEST(ConfigHf, QuantizationRoundTrip) {
  for (const json& q : {block_fp8(), compressed_fp8("tensor"), compressed_fp8("channel"),
                        compressed_fp8("block")}) {
    json j = tinyllama();
    j["quantization_config"] = q;
    const ModelConfig c = parse_ok(j);
    const json written = model::config_to_hf_json(c);
    ASSERT_TRUE(written.contains("quantization_config")) << q.dump();
    EXPECT_EQ(parse_ok(written).quant, c.quant) << written["quantization_config"].dump();
  }
  EXPECT_FALSE(model::config_to_hf_json(parse_ok(tinyllama())).contains("quantization_config"));
}

TEST(ConfigHf, QuantizationUnsupported) {
  auto with = [](json q) {
    json j = tinyllama();
    j["quantization_config"] = std::move(q);
    return parse_error(j);
  };
  // Each error is one line naming the scheme and saying what pp supports.
  auto check = [](const Status& s, const std::string& names) {
    EXPECT_TRUE(s.code() == StatusCode::kUnimplemented || s.code() == StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(s.message(), names)) << s.message();
    EXPECT_FALSE(contains(s.message(), "\n")) << s.message();
    if (s.code() == StatusCode::kUnimplemented) {
      EXPECT_TRUE(contains(s.message(),
                           "pp supports fp8 (e4m3, block 128x128) and "
                           "compressed-tensors fp8"))
          << s.message();
    }
  };
  for (const char* m : {"awq", "gptq", "bitsandbytes", "fbgemm_fp8", "mxfp4"}) {
    check(with({{"quant_method", m}, {"bits", 4}}), fmt::format("'{}'", m));
  }
  json q = block_fp8();
  q["fmt"] = "e5m2";
  check(with(q), "'e5m2'");
  q = block_fp8();
  q["weight_block_size"] = {64, 64};
  check(with(q), "[64,64]");
  q = block_fp8();
  q["activation_scheme"] = "sometimes";
  check(with(q), "'sometimes'");
  q = compressed_fp8("channel");
  q["config_groups"]["group_0"]["weights"]["type"] = "int";
  check(with(q), "type 'int'");
  q = compressed_fp8("channel");
  q["config_groups"]["group_0"]["weights"]["num_bits"] = 4;
  check(with(q), "4 bits");
  q = compressed_fp8("group");
  check(with(q), "'group'");
  q = compressed_fp8("block");
  q["config_groups"]["group_0"]["weights"]["block_structure"] = {128, 64};
  check(with(q), "[128,64]");
  q = compressed_fp8("channel");
  q["format"] = "nvfp4-pack-quantized";
  check(with(q), "'nvfp4-pack-quantized'");
  q = compressed_fp8("channel");
  q["kv_cache_scheme"] = {{"num_bits", 8}, {"type", "float"}};
  check(with(q), "kv_cache_scheme");
  check(with(json::object()), "quant_method");
}

TEST(ConfigHf, DirMergesGenerationConfig) {
  TempDir dir;
  std::ofstream(dir.path() / "config.json") << tinyllama().dump();
  std::ofstream(dir.path() / "generation_config.json") << R"({"eos_token_id": [2, 32000]})";
  auto c = model::config_from_hf_dir(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{2, 32000}));

  std::ofstream(dir.path() / "config.json") << "{ not json";
  c = model::config_from_hf_dir(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(contains(c.status().message(), "config.json")) << c.status().message();

  TempDir empty;
  c = model::config_from_hf_dir(empty.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
}

// A metadata-only GGUF v3 image.
class GgufBuilder {
 public:
  GgufBuilder& str(const std::string& k, const std::string& v) {
    key(k, 8);
    put_str(v);
    return *this;
  }
  GgufBuilder& u32(const std::string& k, uint32_t v) {
    key(k, 4);
    put(v);
    return *this;
  }
  GgufBuilder& f32(const std::string& k, float v) {
    key(k, 6);
    put(v);
    return *this;
  }
  GgufBuilder& strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9);
    put(uint32_t(8));
    put(uint64_t(v.size()));
    for (const auto& s : v) put_str(s);
    return *this;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
    auto app = [&](auto v) {
      const auto* p = reinterpret_cast<const uint8_t*>(&v);
      out.insert(out.end(), p, p + sizeof(v));
    };
    app(uint32_t(3));
    app(uint64_t(0));
    app(uint64_t(n_kv_));
    out.insert(out.end(), kv_.begin(), kv_.end());
    while (out.size() % 32) out.push_back(0);
    return out;
  }

 private:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    kv_.insert(kv_.end(), p, p + sizeof(v));
  }
  void put_str(const std::string& s) {
    put(uint64_t(s.size()));
    kv_.insert(kv_.end(), s.begin(), s.end());
  }
  void key(const std::string& k, uint32_t type) {
    put_str(k);
    put(type);
    ++n_kv_;
  }
  std::vector<uint8_t> kv_;
  uint64_t n_kv_ = 0;
};

// GGUF experts (llama.cpp's ffn_gate_inp and ffn_{gate,up,down}_exps) are not read yet: a
// Mixtral ("llama" with expert_count) or a qwen3moe file is refused with a clear error.
TEST(MoeConfig, GgufMoeIsRefused) {
  for (const char* arch : {"llama", "qwen3moe"}) {
    const std::string p = std::string(arch) + ".";
    const std::vector<uint8_t> img = GgufBuilder()
                                         .str("general.architecture", arch)
                                         .u32(p + "block_count", 2)
                                         .u32(p + "context_length", 4096)
                                         .u32(p + "embedding_length", 256)
                                         .u32(p + "feed_forward_length", 512)
                                         .u32(p + "attention.head_count", 4)
                                         .u32(p + "expert_count", 8)
                                         .u32(p + "expert_used_count", 2)
                                         .u32(p + "vocab_size", 100)
                                         .bytes();
    auto f = model::GgufFile::parse(img, "moe.gguf");
    ASSERT_TRUE(f.ok()) << f.status().message();
    auto c = model::config_from_gguf(**f);
    ASSERT_FALSE(c.ok()) << arch;
    EXPECT_EQ(c.status().code(), StatusCode::kUnimplemented);
    EXPECT_EQ(c.status().message(), "mixture-of-experts GGUF files are not supported yet");
  }
}

TEST(ConfigGguf, Qwen3Metadata) {
  std::vector<std::string> tokens(300);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = fmt::format("t{}", i);
  const std::vector<uint8_t> img = GgufBuilder()
                                       .str("general.architecture", "qwen3")
                                       .u32("qwen3.block_count", 28)
                                       .u32("qwen3.context_length", 40960)
                                       .u32("qwen3.embedding_length", 1024)
                                       .u32("qwen3.feed_forward_length", 3072)
                                       .u32("qwen3.attention.head_count", 16)
                                       .u32("qwen3.attention.head_count_kv", 8)
                                       .u32("qwen3.attention.key_length", 128)
                                       .u32("qwen3.attention.value_length", 128)
                                       .f32("qwen3.rope.freq_base", 1000000.0f)
                                       .f32("qwen3.attention.layer_norm_rms_epsilon", 1e-6f)
                                       .strs("tokenizer.ggml.tokens", tokens)
                                       .u32("tokenizer.ggml.bos_token_id", 11)
                                       .u32("tokenizer.ggml.eos_token_id", 12)
                                       .bytes();
  auto f = model::GgufFile::parse(img, "qwen3.gguf");
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto c = model::config_from_gguf(**f);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->arch, Arch::kQwen3);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->n_layer, 28);
  EXPECT_EQ(c->n_embd, 1024);
  EXPECT_EQ(c->n_ff, 3072);
  EXPECT_EQ(c->n_head, 16);
  EXPECT_EQ(c->n_head_kv, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->max_position, 40960);
  EXPECT_EQ(c->n_vocab, 300);  // from the token list: no qwen3.vocab_size
  EXPECT_FLOAT_EQ(c->rope.theta, 1e6f);
  EXPECT_TRUE(c->tie_word_embeddings);  // no output.weight tensor
  EXPECT_EQ(c->bos_token_ids, std::vector<int32_t>{11});
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{12});
}

TEST(ConfigGguf, Errors) {
  auto parse = [](const GgufBuilder& b) -> Status {
    const std::vector<uint8_t> img = b.bytes();
    auto f = model::GgufFile::parse(img, "x.gguf");
    if (!f.ok()) return f.status();
    return model::config_from_gguf(**f).status();
  };
  Status s = parse(GgufBuilder().str("general.architecture", "gemma3"));
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_EQ(s.message(), "unsupported architecture 'gemma3'");
  s = parse(GgufBuilder().str("general.architecture", "llama").u32("llama.block_count", 2));
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(contains(s.message(), "llama.")) << s.message();
  s = parse(GgufBuilder().u32("llama.block_count", 2));
  EXPECT_TRUE(contains(s.message(), "general.architecture")) << s.message();
}

TEST(ConfigGguf, DefaultModel) {
  if (!std::filesystem::exists(default_model_path())) GTEST_SKIP() << "no default model";
  auto src = model::open_model(default_model_path());
  ASSERT_TRUE(src.ok()) << src.status().message();
  const ModelConfig& c = src->config;
  EXPECT_EQ(src->kind, model::SourceKind::kGguf);
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.n_layer, 30);
  EXPECT_EQ(c.n_embd, 576);
  EXPECT_EQ(c.n_ff, 1536);
  EXPECT_EQ(c.n_head, 9);
  EXPECT_EQ(c.n_head_kv, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_vocab, 49152);
  EXPECT_EQ(c.max_position, 8192);
  EXPECT_FLOAT_EQ(c.rope.theta, 100000.0f);
  EXPECT_NEAR(c.rms_norm_eps, 1e-5f, 1e-9f);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_ids, std::vector<int32_t>{1});
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_TRUE(contains(src->chat_template, "<|im_start|>"));
  EXPECT_TRUE(src->weights->find("model.layers.29.mlp.down_proj.weight"));
}

TEST(OpenModel, FoldersAndErrors) {
  const auto tiny = fixture_dir() / "models" / "tiny-qwen3";
  if (std::filesystem::exists(tiny)) {
    auto src = model::open_model(tiny);
    ASSERT_TRUE(src.ok()) << src.status().message();
    EXPECT_EQ(src->kind, model::SourceKind::kHfDir);
    EXPECT_EQ(src->config.arch, Arch::kQwen3);
    EXPECT_TRUE(src->weights->find("model.layers.0.self_attn.q_norm.weight"));
  }
  auto missing = model::open_model("/nonexistent/model.gguf");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(contains(missing.status().message(), "'/nonexistent/model.gguf'"));

  TempDir dir;
  auto no_config = model::open_model(dir.path());
  ASSERT_FALSE(no_config.ok());
  EXPECT_TRUE(contains(no_config.status().message(), "config.json"))
      << no_config.status().message();

  // A folder with a config of an unknown architecture names it.
  json j = tinyllama();
  j["architectures"] = {"FooForCausalLM"};
  std::ofstream(dir.path() / "config.json") << j.dump();
  auto unknown = model::open_model(dir.path());
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(contains(unknown.status().message(), "unsupported architecture 'FooForCausalLM'"));

  // A config but no weights.
  std::ofstream(dir.path() / "config.json") << tinyllama().dump();
  auto no_weights = model::open_model(dir.path());
  EXPECT_FALSE(no_weights.ok());

  // A file that is not GGUF.
  std::ofstream(dir.path() / "junk.gguf") << "this is not a gguf file at all, just text";
  auto junk = model::open_model(dir.path() / "junk.gguf");
  EXPECT_FALSE(junk.ok());
  EXPECT_TRUE(contains(junk.status().message(), "junk.gguf")) << junk.status().message();
}

TEST(OpenModel, ChatTemplateFromTokenizerConfig) {
  const auto tiny = fixture_dir() / "models" / "tiny-llama";
  if (!std::filesystem::exists(tiny / "model.safetensors")) GTEST_SKIP() << "no fixture";
  TempDir dir;
  std::filesystem::copy(tiny / "config.json", dir.path() / "config.json");
  std::filesystem::create_symlink(tiny / "model.safetensors", dir.path() / "model.safetensors");
  std::ofstream(dir.path() / "tokenizer_config.json")
      << R"({"chat_template": "{{ messages[0]['content'] }}", "eos_token": "</s>"})";
  auto src = model::open_model(dir.path());
  ASSERT_TRUE(src.ok()) << src.status().message();
  EXPECT_EQ(src->chat_template, "{{ messages[0]['content'] }}");
  EXPECT_TRUE(src->tokenizer_json.empty());
}

}  // namespace
}  // namespace pp::test
