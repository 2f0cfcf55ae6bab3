// Loading a Tokenizer from a Hugging Face tokenizer.json or from GGUF tokenizer.ggml.* metadata,
// and writing one back out as a tokenizer.json. A GGUF vocabulary is first described as the
// tokenizer.json that `transformers` would build from it (so to_hf_json is that description),
// then built like any other.
#include <algorithm>
#include <fstream>

#include "pp/model/gguf.h"
#include "tokenizer/pre-tokenizer.h"
#include "tokenizer/tokenizer-impl.h"
#include "tokenizer/unicode.h"

namespace pp::model {

namespace {

using json = nlohmann::json;

constexpr const char* kSpace = "\xE2\x96\x81";  // ▁

constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

json split_then_byte_level(const char* pattern) {
  return {{"type", "Sequence"},
          {"pretokenizers", json::array({{{"type", "Split"},
                                          {"pattern", {{"Regex", pattern}}},
                                          {"behavior", "Isolated"},
                                          {"invert", false}},
                                         byte_level(false)})}};
}

// The tokenizer.json normalizer and pre-tokenizer llama.cpp's tokenizer.ggml.pre stands for.
Status gpt2_pre_tokenizer(const std::string& pre, json& normalizer, json& pre_tokenizer) {
  normalizer = nullptr;
  if (pre.empty() || pre == "default" || pre == "gpt2" || pre == "gpt-2") {
    pre_tokenizer = byte_level(true);
  } else if (pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3" || pre == "falcon3") {
    pre_tokenizer = split_then_byte_level(kLlama3Pattern);
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "stablelm2") {
    normalizer = {{"type", "NFC"}};
    pre_tokenizer = split_then_byte_level(kQwen2Pattern);
  } else if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "codeshell" ||
             pre == "command-r" || pre == "exaone" || pre == "minerva") {
    pre_tokenizer = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)})}};
  } else {
    return unimplemented("gguf pre-tokenizer '{}' is not supported", pre);
  }
  return ok_status();
}

json template_processing(const std::vector<std::string>& tokens, std::optional<int32_t> bos,
                         std::optional<int32_t> eos) {
  if (!bos && !eos) return nullptr;
  json single = json::array(), pair = json::array(), specials = json::object();
  auto special = [&](int32_t id) {
    const std::string& s = tokens[id];
    specials[s] = {{"id", s}, {"ids", {id}}, {"tokens", {s}}};
    return json{{"SpecialToken", {{"id", s}, {"type_id", 0}}}};
  };
  if (bos) single.push_back(special(*bos));
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (eos) single.push_back(special(*eos));
  if (bos) pair.push_back(special(*bos));
  pair.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (eos) pair.push_back(special(*eos));
  if (bos) pair.push_back(special(*bos));
  pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  if (eos) pair.push_back(special(*eos));
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", pair},
          {"special_tokens", specials}};
}

template <typename T>
std::optional<T> optional_value(Result<T> r) {
  if (!r.ok()) return std::nullopt;
  return std::move(r).value();
}

// Merges a SentencePiece vocabulary implies, ordered as transformers' SentencePieceExtractor
// orders them: by the score of the merged piece, then by the ids of its halves.
std::vector<std::pair<int32_t, int32_t>> spm_merges(const tok::Vocab& vocab,
                                                    const std::vector<uint8_t>& in_model,
                                                    const std::vector<float>& scores) {
  struct M {
    int32_t l, r;
    float score;
  };
  std::vector<M> all;
  for (size_t id = 0; id < vocab.tokens.size() && id < scores.size(); ++id) {
    if (!in_model[id]) continue;
    const std::string& t = vocab.tokens[id];
    std::vector<M> local;
    for (size_t i = tok::utf8_char_len(t, 0); i < t.size(); i += tok::utf8_char_len(t, i)) {
      auto l = vocab.find(std::string_view(t).substr(0, i));
      auto r = vocab.find(std::string_view(t).substr(i));
      if (l && r && in_model[*l] && in_model[*r]) local.push_back({*l, *r, scores[id]});
    }
    std::sort(local.begin(), local.end(),
              [](const M& a, const M& b) { return std::tie(a.l, a.r) < std::tie(b.l, b.r); });
    all.insert(all.end(), local.begin(), local.end());
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const M& a, const M& b) { return a.score > b.score; });
  std::vector<std::pair<int32_t, int32_t>> out;
  out.reserve(all.size());
  for (const M& m : all) out.emplace_back(m.l, m.r);
  return out;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_hf_json(const json& j) {
  try {
    TokenizerSpec spec;
    spec.config = j;
    const json& m = j.at("model");
    if (m.contains("vocab") && m["vocab"].is_object()) {
      for (const auto& [token, id_json] : m["vocab"].items()) {
        const int64_t id = id_json.get<int64_t>();
        if (id < 0 || id > (1 << 30))
          return invalid_argument("token '{}' has bad id {}", token, id);
        if (static_cast<size_t>(id) >= spec.tokens.size()) {
          spec.tokens.resize(id + 1);
          spec.in_model.resize(id + 1, 0);
        }
        spec.tokens[id] = token;
        spec.in_model[id] = 1;
      }
    } else {
      return unimplemented("tokenizer.json model without a vocab object is not supported");
    }
    if (m.contains("merges")) {
      for (const auto& mg : m["merges"]) {
        if (mg.is_string()) {
          const std::string s = mg.get<std::string>();
          const size_t sp = s.find(' ');
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            return invalid_argument("bad merge '{}'", s);
          spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        } else {
          spec.merges.emplace_back(mg.at(0).get<std::string>(), mg.at(1).get<std::string>());
        }
      }
    }
    return make_tokenizer(std::move(spec));
  } catch (const json::exception& e) {
    return invalid_argument("bad tokenizer.json: {}", e.what());
  }
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_hf_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return not_found("cannot open '{}'", path.string());
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument("cannot parse '{}' as json", path.string());
  auto r = from_hf_json(j);
  if (!r.ok()) return r.status().with_context(fmt::format("loading '{}'", path.string()));
  return r;
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufFile& f) {
  PP_ASSIGN_OR_RETURN(std::string model, f.get_string("tokenizer.ggml.model"));
  PP_ASSIGN_OR_RETURN(std::vector<std::string> tokens, f.get_string_array("tokenizer.ggml.tokens"));
  const size_t n = tokens.size();
  std::vector<int64_t> types = optional_value(f.get_int_array("tokenizer.ggml.token_type"))
                                   .value_or(std::vector<int64_t>(n, 1));
  if (types.size() != n)
    return data_loss("tokenizer.ggml.token_type has {} entries for {} tokens", types.size(), n);
  auto id_of = [&](const char* key) -> Result<std::optional<int32_t>> {
    auto v = optional_value(f.get_int(key));
    if (!v) return std::optional<int32_t>();
    if (*v < 0 || static_cast<size_t>(*v) >= n) {
      if (*v == -1) return std::optional<int32_t>();
      return data_loss("'{}' is {}, outside the vocabulary of {}", key, *v, n);
    }
    return std::optional<int32_t>(static_cast<int32_t>(*v));
  };
  PP_ASSIGN_OR_RETURN(std::optional<int32_t> bos, id_of("tokenizer.ggml.bos_token_id"));
  PP_ASSIGN_OR_RETURN(std::optional<int32_t> eos, id_of("tokenizer.ggml.eos_token_id"));
  PP_ASSIGN_OR_RETURN(std::optional<int32_t> unk, id_of("tokenizer.ggml.unknown_token_id"));
  const bool is_spm = model == "llama";
  if (!is_spm && model != "gpt2")
    return unimplemented("gguf tokenizer model '{}' is not supported", model);
  const bool add_bos = optional_value(f.get_bool("tokenizer.ggml.add_bos_token")).value_or(is_spm);
  const bool add_eos = optional_value(f.get_bool("tokenizer.ggml.add_eos_token")).value_or(false);

  TokenizerSpec spec;
  json& c = spec.config;
  c["version"] = "1.0";
  c["truncation"] = nullptr;
  c["padding"] = nullptr;
  json added = json::array();
  for (size_t id = 0; id < n; ++id) {
    if (types[id] == 3 || types[id] == 4) {  // control, user-defined
      added.push_back({{"id", id},
                       {"content", tokens[id]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", true}});
    }
  }
  c["added_tokens"] = added;
  if (is_spm) {
    const bool add_space_prefix =
        optional_value(f.get_bool("tokenizer.ggml.add_space_prefix")).value_or(true);
    json steps = json::array();
    if (add_space_prefix) steps.push_back({{"type", "Prepend"}, {"prepend", kSpace}});
    steps.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}});
    c["normalizer"] = {{"type", "Sequence"}, {"normalizers", steps}};
    c["pre_tokenizer"] = nullptr;
    json dsteps =
        json::array({{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                     {{"type", "ByteFallback"}},
                     {{"type", "Fuse"}}});
    if (add_space_prefix)
      dsteps.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    c["decoder"] = {{"type", "Sequence"}, {"decoders", dsteps}};
    PP_ASSIGN_OR_RETURN(std::vector<double> scores, f.get_float_array("tokenizer.ggml.scores"));
    if (scores.size() != n)
      return data_loss("tokenizer.ggml.scores has {} entries for {} tokens", scores.size(), n);
    spec.spm_scores = std::vector<float>(scores.begin(), scores.end());
    if (!unk) {
      for (size_t id = 0; id < n; ++id)
        if (types[id] == 2) unk = static_cast<int32_t>(id);
    }
    c["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", unk ? json(tokens[*unk]) : json(nullptr)},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", true},
                  {"byte_fallback", true},
                  {"ignore_merges", false}};
  } else {
    const std::string pre = optional_value(f.get_string("tokenizer.ggml.pre")).value_or("default");
    json normalizer, pre_tokenizer;
    PP_RETURN_IF_ERROR(gpt2_pre_tokenizer(pre, normalizer, pre_tokenizer));
    c["normalizer"] = normalizer;
    c["pre_tokenizer"] = pre_tokenizer;
    c["decoder"] = byte_level(true);
    c["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr},
                  {"end_of_word_suffix", nullptr},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3"}};
    PP_ASSIGN_OR_RETURN(std::vector<std::string> merges,
                        f.get_string_array("tokenizer.ggml.merges"));
    spec.merges.reserve(merges.size());
    for (const std::string& s : merges) {
      const size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) return data_loss("bad merge '{}' in gguf", s);
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    }
  }
  c["post_processor"] =
      template_processing(tokens, add_bos ? bos : std::nullopt, add_eos ? eos : std::nullopt);
  spec.tokens = std::move(tokens);
  spec.in_model.assign(n, 1);
  spec.bos = bos;
  spec.eos = eos;
  return make_tokenizer(std::move(spec));
}

json Tokenizer::to_hf_json() const {
  const Impl& t = *impl_;
  json j = t.config;
  json vocab = json::object();
  for (size_t id = 0; id < t.vocab.tokens.size(); ++id)
    if (t.in_model[id]) vocab[t.vocab.tokens[id]] = id;
  std::vector<std::pair<int32_t, int32_t>> merges =
      t.bpe ? t.bpe->merges() : spm_merges(t.vocab, t.in_model, t.spm->scores());
  bool any_space = false;
  for (const std::string& s : t.vocab.tokens)
    if (s.find(' ') != std::string::npos) any_space = true;
  json mj = json::array();
  for (auto [a, b] : merges) {
    const std::string& sa = t.vocab.tokens[a];
    const std::string& sb = t.vocab.tokens[b];
    if (any_space)
      mj.push_back(json::array({sa, sb}));
    else
      mj.push_back(sa + " " + sb);
  }
  j["model"]["vocab"] = std::move(vocab);
  j["model"]["merges"] = std::move(mj);
  return j;
}

}  // namespace pp::model
