// Tokenizer: building one from a TokenizerSpec, encoding and decoding (see tokenizer.h). The
// order of work follows Hugging Face `tokenizers`: added tokens that are not normalized are cut
// out of the raw text, each remaining segment is normalized, added tokens that are normalized
// are cut out of that, and each piece is pre-tokenized into words for the model.
#include <algorithm>

#include "tokenizer/tokenizer-impl.h"
#include "tokenizer/unicode.h"

namespace pp::model {

namespace tok {

void AddedTokenMatcher::build(const std::vector<AddedToken>& tokens, bool normalized) {
  tokens_.clear();
  for (auto& b : by_first_byte_) b.clear();
  for (const AddedToken& t : tokens) {
    if (t.content.empty() || t.normalized != normalized) continue;
    by_first_byte_[static_cast<unsigned char>(t.content[0])].push_back(
        static_cast<int>(tokens_.size()));
    tokens_.push_back(t);
  }
  for (auto& b : by_first_byte_) {
    std::stable_sort(b.begin(), b.end(), [&](int x, int y) {
      return tokens_[x].content.size() > tokens_[y].content.size();
    });
  }
}

namespace {

bool is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_word_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

}  // namespace

std::vector<AddedTokenMatcher::Match> AddedTokenMatcher::find_all(std::string_view s) const {
  std::vector<Match> out;
  if (tokens_.empty()) return out;
  size_t floor = 0;  // the end of the previous match: lstrip never reaches before it
  for (size_t i = 0; i < s.size();) {
    const auto& cands = by_first_byte_[static_cast<unsigned char>(s[i])];
    const AddedToken* hit = nullptr;
    for (int k : cands) {
      const AddedToken& t = tokens_[k];
      if (s.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        const size_t e = i + t.content.size();
        if ((i > 0 && is_word_char(s[i - 1])) || (e < s.size() && is_word_char(s[e]))) continue;
      }
      hit = &t;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t b = i, e = i + hit->content.size();
    if (hit->lstrip)
      while (b > floor && is_space(s[b - 1])) --b;
    if (hit->rstrip)
      while (e < s.size() && is_space(s[e])) ++e;
    out.push_back({b, e, hit->id});
    floor = e;
    i = e;
  }
  return out;
}

}  // namespace tok

namespace {

// The per-word BPE cache is cleared when full. Every distinct word a client sends stays in it
// until then, so its bound is a bound on pp-serve's memory: 2^14 entries of at most 256 bytes
// (and as many ids) is at most about 25 MiB, a few MiB for natural text (Hugging Face's
// tokenizers keep 10,000 words). 2^18 let random text grow the server by hundreds of MiB.
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 14;

// Reads a post-processor's single-sequence template into the ids before and after the text.
Status read_post_processor(const nlohmann::json& j, const tok::Vocab& vocab,
                           std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  if (j.is_null()) return ok_status();
  const std::string type = j.value("type", "");
  if (type == "ByteLevel") return ok_status();
  if (type == "Sequence") {
    for (const auto& p : j.at("processors"))
      PP_RETURN_IF_ERROR(read_post_processor(p, vocab, prefix, suffix));
    return ok_status();
  }
  if (type == "TemplateProcessing") {
    const auto& specials = j.at("special_tokens");
    bool seen_a = false;
    for (const auto& piece : j.at("single")) {
      if (piece.contains("Sequence")) {
        seen_a = true;
        continue;
      }
      const std::string name = piece.at("SpecialToken").at("id");
      if (!specials.contains(name))
        return invalid_argument("post-processor names unknown special token '{}'", name);
      for (const auto& id : specials[name].at("ids"))
        (seen_a ? suffix : prefix).push_back(id.get<int32_t>());
    }
    return ok_status();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    prefix.push_back(j.at("cls").at(1).get<int32_t>());
    suffix.push_back(j.at("sep").at(1).get<int32_t>());
    return ok_status();
  }
  return unimplemented("post-processor type '{}' is not supported", type);
}

std::optional<int32_t> find_any(const tok::Vocab& vocab,
                                std::initializer_list<std::string_view> names) {
  for (std::string_view n : names)
    if (auto id = vocab.find(n)) return id;
  return std::nullopt;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_tokenizer(TokenizerSpec spec) {
  auto impl = std::make_unique<Tokenizer::Impl>();
  Tokenizer::Impl& t = *impl;
  const nlohmann::json& c = spec.config;
  t.vocab.tokens = std::move(spec.tokens);
  t.in_model = std::move(spec.in_model);
  t.in_model.resize(t.vocab.tokens.size(), 0);
  t.special.assign(t.vocab.tokens.size(), 0);

  // Added tokens take their id over a model token with the same text, as in tokenizers.
  if (c.contains("added_tokens") && c["added_tokens"].is_array()) {
    for (const auto& a : c["added_tokens"]) {
      tok::AddedToken at;
      at.content = a.at("content");
      at.id = a.at("id");
      at.special = a.value("special", false);
      at.lstrip = a.value("lstrip", false);
      at.rstrip = a.value("rstrip", false);
      at.single_word = a.value("single_word", false);
      at.normalized = a.value("normalized", !at.special);
      if (at.id < 0)
        return invalid_argument("added token '{}' has negative id {}", at.content, at.id);
      if (static_cast<size_t>(at.id) >= t.vocab.tokens.size()) {
        t.vocab.tokens.resize(at.id + 1);
        t.in_model.resize(at.id + 1, 0);
        t.special.resize(at.id + 1, 0);
      }
      t.vocab.tokens[at.id] = at.content;
      t.special[at.id] = at.special;
      t.added.push_back(std::move(at));
    }
  }
  PP_ASSIGN_OR_RETURN(t.normalizer, tok::make_normalizer(c.value("normalizer", nlohmann::json())));
  for (size_t id = 0; id < t.vocab.tokens.size(); ++id) {
    if (t.in_model[id]) t.vocab.ids.try_emplace(t.vocab.tokens[id], static_cast<int32_t>(id));
  }
  // Like tokenizers, a normalized added token is matched, and named, in its normalized form
  // (under Llama 2's normalizer "<sep>" becomes "▁<sep>"); its original text still finds it.
  std::vector<tok::AddedToken> matchable = t.added;
  for (tok::AddedToken& a : matchable) {
    t.vocab.ids[a.content] = a.id;
    if (a.normalized && t.normalizer) {
      a.content = t.normalizer->normalize(a.content);
      if (!t.in_model[a.id]) t.vocab.tokens[a.id] = a.content;
      t.vocab.ids[a.content] = a.id;
    }
  }
  t.raw_matcher.build(matchable, false);
  t.normalized_matcher.build(matchable, true);

  PP_ASSIGN_OR_RETURN(t.pre_tokenizer,
                      tok::make_pre_tokenizer(c.value("pre_tokenizer", nlohmann::json())));
  PP_ASSIGN_OR_RETURN(t.decoder, tok::make_decoder(c.value("decoder", nlohmann::json())));

  const nlohmann::json& m = c.at("model");
  auto unk_id = [&]() -> std::optional<int32_t> {
    if (!m.contains("unk_token") || m["unk_token"].is_null()) return std::nullopt;
    return t.vocab.find(m["unk_token"].get<std::string>());
  }();
  if (spec.spm_scores) {
    t.spm = std::make_unique<tok::SpmModel>(&t.vocab, std::move(*spec.spm_scores), unk_id);
  } else {
    const std::string type = m.value("type", "BPE");
    if (type != "BPE") return unimplemented("tokenizer model type '{}' is not supported", type);
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (m.contains(k) && !m[k].is_null() && m[k] != "")
        return unimplemented("bpe option '{}' is not supported", k);
    }
    tok::BpeOptions o;
    o.byte_fallback = m.value("byte_fallback", false);
    o.ignore_merges = m.value("ignore_merges", false);
    o.fuse_unk = m.value("fuse_unk", false);
    o.unk_id = unk_id;
    t.bpe = std::make_unique<tok::BpeModel>(&t.vocab, o);
    for (const auto& [a, b] : spec.merges) {
      if (!t.bpe->add_merge(a, b))
        return invalid_argument("merge '{} {}' names a token that is not in the vocabulary", a, b);
    }
  }
  PP_RETURN_IF_ERROR(read_post_processor(c.value("post_processor", nlohmann::json()), t.vocab,
                                         t.prefix_ids, t.suffix_ids));
  for (int32_t id : t.prefix_ids)
    if (id < 0 || static_cast<size_t>(id) >= t.vocab.tokens.size())
      return invalid_argument("post-processor id {} is out of range", id);
  for (int32_t id : t.suffix_ids)
    if (id < 0 || static_cast<size_t>(id) >= t.vocab.tokens.size())
      return invalid_argument("post-processor id {} is out of range", id);

  t.bos = spec.bos;
  t.eos = spec.eos;
  if (!t.bos) {
    t.bos = !t.prefix_ids.empty()
                ? std::optional<int32_t>(t.prefix_ids.front())
                : find_any(t.vocab, {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"});
  }
  if (!t.eos) {
    t.eos = !t.suffix_ids.empty()
                ? std::optional<int32_t>(t.suffix_ids.back())
                : find_any(t.vocab, {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"});
  }

  nlohmann::json config = std::move(spec.config);
  if (config["model"].is_object()) {
    config["model"].erase("vocab");
    config["model"].erase("merges");
  }
  t.config = std::move(config);
  return std::make_unique<Tokenizer>(std::move(impl));
}

void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (spm) {
    spm->encode(word, out);
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  bpe->encode(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.try_emplace(std::string(word), out.begin() + start, out.end());
  }
}

void Tokenizer::Impl::encode_segment(std::string_view text, bool at_start,
                                     std::vector<int32_t>& out) const {
  std::string normalized =
      normalizer ? normalizer->normalize(std::string(text)) : std::string(text);
  auto encode_piece = [&](std::string_view piece, bool piece_at_start) {
    if (piece.empty()) return;
    if (!pre_tokenizer) {
      encode_word(piece, out);
      return;
    }
    std::vector<tok::Piece> pieces{{std::string(piece), piece_at_start}};
    pre_tokenizer->pre_tokenize(pieces);
    for (const tok::Piece& p : pieces) encode_word(p.text, out);
  };
  size_t last = 0;
  for (const auto& m : normalized_matcher.find_all(normalized)) {
    encode_piece(std::string_view(normalized).substr(last, m.begin - last), at_start && last == 0);
    out.push_back(m.id);
    last = m.end;
  }
  encode_piece(std::string_view(normalized).substr(last), at_start && last == 0);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  const Impl& t = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special) ids.insert(ids.end(), t.prefix_ids.begin(), t.prefix_ids.end());
  size_t last = 0;
  for (const auto& m : t.raw_matcher.find_all(text)) {
    if (m.begin > last) t.encode_segment(text.substr(last, m.begin - last), last == 0, ids);
    ids.push_back(m.id);
    last = m.end;
  }
  if (text.size() > last) t.encode_segment(text.substr(last), last == 0, ids);
  if (add_special) ids.insert(ids.end(), t.suffix_ids.begin(), t.suffix_ids.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= t.vocab.tokens.size()) continue;
    if (skip_special && t.special[id]) continue;
    tokens.push_back(t.vocab.tokens[id]);
  }
  if (!t.decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (k > 0) out += ' ';
      out += tokens[k];
    }
    return out;
  }
  t.decoder->decode_chain(tokens);
  std::string out;
  for (const std::string& s : tokens) out += s;
  return out;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->vocab.tokens.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->vocab.find(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->vocab.tokens.size()) return {};
  return impl_->vocab.tokens[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id];
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
void Tokenizer::set_bos_id(std::optional<int32_t> id) { impl_->bos = id; }
void Tokenizer::set_eos_id(std::optional<int32_t> id) { impl_->eos = id; }

bool Tokenizer::is_byte_fallback_token(int32_t id) const {
  if (!impl_->decoder || !impl_->decoder->byte_fallback()) return false;
  if (id < 0 || static_cast<size_t>(id) >= impl_->vocab.tokens.size()) return false;
  return tok::byte_fallback_value(impl_->vocab.tokens[id]) >= 0;
}

}  // namespace pp::model
