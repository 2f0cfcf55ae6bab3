// The insides of pp::model::Tokenizer, shared by its loaders (tokenizer.json, GGUF) and its
// encode/decode code. Private to libmodel.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/model/tokenizer.h"
#include "tokenizer/decoder.h"
#include "tokenizer/model.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre-tokenizer.h"

namespace pp::model {

namespace tok {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Finds added tokens in text: leftmost match first, the longest at one position.
class AddedTokenMatcher {
 public:
  void build(const std::vector<AddedToken>& tokens, bool normalized);
  struct Match {
    size_t begin, end;  // the bytes the match consumes (with lstrip/rstrip whitespace)
    int32_t id;
  };
  std::vector<Match> find_all(std::string_view s) const;
  bool empty() const { return tokens_.empty(); }

 private:
  std::vector<AddedToken> tokens_;
  std::vector<std::vector<int>> by_first_byte_ = std::vector<std::vector<int>>(256);
};

}  // namespace tok

// Everything a loader hands over to build a tokenizer.
struct TokenizerSpec {
  nlohmann::json config;            // tokenizer.json minus model.vocab and model.merges
  std::vector<std::string> tokens;  // id -> string; the model vocabulary and added tokens
  std::vector<uint8_t> in_model;    // per id: part of the model's vocabulary
  std::vector<std::pair<std::string, std::string>> merges;  // BPE, in rank order
  std::optional<std::vector<float>> spm_scores;  // set: llama.cpp score-based merging instead
  std::optional<int32_t> bos, eos;               // from GGUF; guessed when unset
};

struct Tokenizer::Impl {
  nlohmann::json config;
  tok::Vocab vocab;
  std::vector<uint8_t> special, in_model;
  std::vector<tok::AddedToken> added;
  tok::AddedTokenMatcher raw_matcher, normalized_matcher;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Decoder> decoder;
  std::unique_ptr<tok::BpeModel> bpe;
  std::unique_ptr<tok::SpmModel> spm;
  std::vector<int32_t> prefix_ids, suffix_ids;  // the post-processor's single-sequence template
  std::optional<int32_t> bos, eos;

  // Per-word BPE results.
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>, tok::StringHash, std::equal_to<>>
      cache;

  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
};

Result<std::unique_ptr<Tokenizer>> make_tokenizer(TokenizerSpec spec);

}  // namespace pp::model
