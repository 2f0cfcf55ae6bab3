// Helpers for the partition tests (tests/pp and tests/tools): a tiny random Hugging Face model
// folder written with pp's safetensors writer, a minimal tokenizer.json, and a copy of a fixture
// model with a tokenizer added (the fixtures carry none; a partition must).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/model/safetensors-writer.h"
#include "test-util.h"

namespace pp::test {

// A WordLevel tokenizer.json over `n_vocab` tokens "t0", "t1", ...
inline void write_tiny_tokenizer(const std::filesystem::path& path, int64_t n_vocab) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int64_t i = 0; i < n_vocab; ++i) vocab["t" + std::to_string(i)] = i;
  nlohmann::json j = {{"version", "1.0"},
                      {"truncation", nullptr},
                      {"padding", nullptr},
                      {"added_tokens", nlohmann::json::array()},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", {{"type", "Whitespace"}}},
                      {"post_processor", nullptr},
                      {"decoder", nullptr},
                      {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "t0"}}}};
  std::ofstream(path) << j.dump();
}

// Copies tests/fixtures/models/<name> into `dir` and adds a tokenizer.json.
inline std::filesystem::path fixture_model_with_tokenizer(const std::string& name,
                                                          const std::filesystem::path& dir) {
  std::filesystem::path src = fixture_dir() / "models" / name, dst = dir / name;
  std::filesystem::create_directories(dst);
  for (const auto& e : std::filesystem::directory_iterator(src)) {
    std::filesystem::copy_file(e.path(), dst / e.path().filename());
  }
  std::ifstream in(src / "config.json");
  auto config = nlohmann::json::parse(in);
  write_tiny_tokenizer(dst / "tokenizer.json", config["vocab_size"].get<int64_t>());
  return dst;
}

// A random f32 Llama model folder (config.json, model.safetensors, tokenizer.json): values that
// bf16 cannot hold exactly, so a bf16 split rounds.
inline std::filesystem::path write_random_llama(const std::filesystem::path& dir, int64_t n_layer,
                                                bool tied, int64_t n_vocab = 96) {
  const int64_t E = 32, F = 48, H = 4, KV = 2, D = 8;
  std::filesystem::create_directories(dir);
  nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                           {"model_type", "llama"},
                           {"hidden_size", E},
                           {"intermediate_size", F},
                           {"num_hidden_layers", n_layer},
                           {"num_attention_heads", H},
                           {"num_key_value_heads", KV},
                           {"head_dim", D},
                           {"max_position_embeddings", 256},
                           {"rms_norm_eps", 1e-5},
                           {"rope_theta", 10000.0},
                           {"tie_word_embeddings", tied},
                           {"vocab_size", n_vocab},
                           {"bos_token_id", 1},
                           {"eos_token_id", 2},
                           {"torch_dtype", "float32"}};
  std::ofstream(dir / "config.json") << config.dump(2);
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {n_vocab, E}}, {"model.norm.weight", {E}}};
  if (!tied) shapes.push_back({"lm_head.weight", {n_vocab, E}});
  for (int64_t l = 0; l < n_layer; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    shapes.push_back({p + "input_layernorm.weight", {E}});
    shapes.push_back({p + "post_attention_layernorm.weight", {E}});
    shapes.push_back({p + "self_attn.q_proj.weight", {H * D, E}});
    shapes.push_back({p + "self_attn.k_proj.weight", {KV * D, E}});
    shapes.push_back({p + "self_attn.v_proj.weight", {KV * D, E}});
    shapes.push_back({p + "self_attn.o_proj.weight", {E, H * D}});
    shapes.push_back({p + "mlp.gate_proj.weight", {F, E}});
    shapes.push_back({p + "mlp.up_proj.weight", {F, E}});
    shapes.push_back({p + "mlp.down_proj.weight", {E, F}});
  }
  std::vector<std::vector<float>> data;
  std::vector<model::SafetensorsEntry> entries;
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    bool norm = name.find("norm") != std::string::npos;
    data.push_back(norm ? random_floats(size_t(n), 0.8f, 1.2f)
                        : random_floats(size_t(n), -0.2f, 0.2f));
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    model::SafetensorsEntry e;
    e.name = shapes[i].first;
    e.dtype = model::DType::kF32;
    e.shape = shapes[i].second;
    e.data = data[i];
    entries.push_back(std::move(e));
  }
  Status s = model::write_safetensors(dir / "model.safetensors", entries, {{"format", "pt"}});
  if (!s.ok()) throw std::runtime_error(s.message());
  write_tiny_tokenizer(dir / "tokenizer.json", n_vocab);
  return dir;
}

}  // namespace pp::test
