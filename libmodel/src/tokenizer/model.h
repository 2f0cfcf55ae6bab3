// The subword models: BPE merging by rank (Hugging Face's BPE, byte-level or with byte fallback)
// and SentencePiece-style merging by score (llama.cpp's SPM tokenizer, for GGUF "llama" vocabs).
// Both turn one pre-tokenized word into ids; both read the vocabulary they are given.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pp::model::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct Vocab {
  std::vector<std::string> tokens;  // id -> string
  TokenMap ids;                     // string -> id
  std::optional<int32_t> find(std::string_view s) const {
    auto it = ids.find(s);
    if (it == ids.end()) return std::nullopt;
    return it->second;
  }
};

struct BpeOptions {
  bool byte_fallback = false;
  bool ignore_merges = false;
  bool fuse_unk = false;
  std::optional<int32_t> unk_id;
};

class BpeModel {
 public:
  BpeModel(const Vocab* vocab, BpeOptions opts) : vocab_(vocab), opts_(opts) {}
  // Adds the merge "a b" with the next rank; false when a, b or their concatenation is not in
  // the vocabulary (tokenizers refuses such a file).
  bool add_merge(std::string_view a, std::string_view b);
  void encode(std::string_view word, std::vector<int32_t>& out) const;
  // Merges in rank order, as (left id, right id).
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merge_list_; }
  const BpeOptions& options() const { return opts_; }

 private:
  struct MergeInfo {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Vocab* vocab_;
  BpeOptions opts_;
  std::unordered_map<uint64_t, MergeInfo> merges_;
  std::vector<std::pair<int32_t, int32_t>> merge_list_;
};

class SpmModel {
 public:
  SpmModel(const Vocab* vocab, std::vector<float> scores, std::optional<int32_t> unk_id)
      : vocab_(vocab), scores_(std::move(scores)), unk_id_(unk_id) {}
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  const std::vector<float>& scores() const { return scores_; }

 private:
  const Vocab* vocab_;
  std::vector<float> scores_;
  std::optional<int32_t> unk_id_;
};

}  // namespace pp::model::tok
