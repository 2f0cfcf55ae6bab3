// Benchmark datasets (see dataset.h): random-ids, random text, ShareGPT and fixed lengths, made
// deterministically from the seed.
#include "pp/bench/dataset.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

namespace pp::bench {

const char* dataset_kind_name(DatasetKind kind) {
  switch (kind) {
    case DatasetKind::kRandomIds:
      return "random-ids";
    case DatasetKind::kRandom:
      return "random";
    case DatasetKind::kShareGpt:
      return "sharegpt";
    case DatasetKind::kFixed:
      return "fixed";
    case DatasetKind::kGeneratedSharedPrefix:
      return "generated-shared-prefix";
    case DatasetKind::kMultiTurn:
      return "multi-turn";
  }
  return "?";
}

std::optional<DatasetKind> parse_dataset_kind(std::string_view name) {
  for (DatasetKind k :
       {DatasetKind::kRandomIds, DatasetKind::kRandom, DatasetKind::kShareGpt, DatasetKind::kFixed,
        DatasetKind::kGeneratedSharedPrefix, DatasetKind::kMultiTurn}) {
    if (name == dataset_kind_name(k)) return k;
  }
  return std::nullopt;
}

int64_t sample_length(int64_t len, double ratio, int64_t lowest, std::mt19937_64& rng) {
  ratio = std::clamp(ratio, 0.0, 1.0);
  const int64_t lo = std::min(std::max(int64_t(double(len) * ratio), lowest), len);
  return std::uniform_int_distribution<int64_t>(lo, len)(rng);
}

namespace {

// (first turn, second turn) of every conversation with at least two turns, in file order.
Result<std::vector<std::pair<std::string, std::string>>> read_sharegpt(
    const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return not_found("cannot open '{}'", path.string());
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return data_loss("'{}' is not valid JSON", path.string());
  if (!j.is_array()) return invalid_argument("'{}' is not a ShareGPT list", path.string());
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& item : j) {
    if (!item.is_object()) continue;
    const nlohmann::json* conv = nullptr;
    if (auto it = item.find("conversations"); it != item.end()) conv = &*it;
    if (!conv) {
      if (auto it = item.find("conversation"); it != item.end()) conv = &*it;
    }
    if (!conv || !conv->is_array() || conv->size() < 2) continue;
    const auto& a = (*conv)[0];
    const auto& b = (*conv)[1];
    if (!a.is_object() || !b.is_object()) continue;
    auto av = a.find("value"), bv = b.find("value");
    if (av == a.end() || bv == b.end() || !av->is_string() || !bv->is_string()) continue;
    out.emplace_back(av->get<std::string>(), bv->get<std::string>());
  }
  return out;
}

Status check_options(const DatasetOptions& o) {
  if (o.num_prompts < 1) return invalid_argument("--num-prompts must be at least 1");
  if (o.range_ratio < 0.0 || o.range_ratio > 1.0) {
    return invalid_argument("--random-range-ratio must be in [0, 1], not {}", o.range_ratio);
  }
  if (o.kind == DatasetKind::kGeneratedSharedPrefix) {
    if (o.gsp_num_groups < 1) return invalid_argument("--gsp-num-groups must be at least 1");
    if (o.gsp_prompts_per_group < 1) {
      return invalid_argument("--gsp-prompts-per-group must be at least 1");
    }
    if (o.gsp_system_prompt_len < 0) {
      return invalid_argument("--gsp-system-prompt-len must not be negative");
    }
    if (o.gsp_question_len < 1) return invalid_argument("--gsp-question-len must be at least 1");
    if (o.gsp_output_len < 1) return invalid_argument("--gsp-output-len must be at least 1");
    if (o.gsp_range_ratio < 0.0 || o.gsp_range_ratio > 1.0) {
      return invalid_argument("--gsp-range-ratio must be in [0, 1], not {}", o.gsp_range_ratio);
    }
    return ok_status();
  }
  if (o.kind == DatasetKind::kMultiTurn) {
    if (o.mt_turns < 1) return invalid_argument("--multi-turn-turns must be at least 1");
    if (o.mt_user_len < 1) return invalid_argument("--multi-turn-user-len must be at least 1");
  }
  if (o.kind != DatasetKind::kShareGpt) {
    if (o.input_len < 1) return invalid_argument("--random-input-len must be at least 1");
    if (o.output_len < 1) return invalid_argument("--random-output-len must be at least 1");
  }
  if (o.sharegpt_output_len && *o.sharegpt_output_len < 1) {
    return invalid_argument("--sharegpt-output-len must be at least 1");
  }
  return ok_status();
}

Result<std::vector<BenchRequest>> make_sharegpt(const DatasetOptions& o,
                                                const model::Tokenizer& tok, std::mt19937_64& rng) {
  PP_ASSIGN_OR_RETURN(auto pairs, read_sharegpt(o.path));
  std::shuffle(pairs.begin(), pairs.end(), rng);
  std::vector<BenchRequest> out;
  for (auto& [prompt, completion] : pairs) {
    if (int64_t(out.size()) == o.num_prompts) break;
    BenchRequest r;
    r.prompt_ids = tok.encode(prompt);
    r.prompt_len = int64_t(r.prompt_ids.size());
    r.output_len =
        o.sharegpt_output_len ? *o.sharegpt_output_len : int64_t(tok.encode(completion).size());
    if (r.prompt_len < 2 || r.output_len < 2) continue;
    if (o.context_len > 0 && r.prompt_len + r.output_len > o.context_len) continue;
    r.prompt_text = std::move(prompt);
    out.push_back(std::move(r));
  }
  if (out.empty()) {
    return Status(StatusCode::kOutOfRange,
                  fmt::format("no usable conversation in '{}'", o.path.string()));
  }
  return out;
}

// The tokens the server's tokenizer adds to a text prompt (BOS, ...), as Hugging Face's
// num_special_tokens_to_add().
int64_t n_special_tokens(const model::Tokenizer& tok) {
  return int64_t(tok.encode("", /*add_special=*/true).size());
}

// Text prompts lose the tokens the server will add to them, so that what the model sees has the
// drawn length (SGLang's rule); a prompt keeps at least one token.
void leave_room_for_special(const model::Tokenizer& tok, std::vector<int64_t>& lens) {
  const int64_t n = n_special_tokens(tok);
  for (auto& l : lens) l = std::max<int64_t>(1, l - n);
}

// random: token ids of `len` from a source of ids, decoded to text.
Result<std::vector<BenchRequest>> make_random_text(const DatasetOptions& o,
                                                   const model::Tokenizer& tok,
                                                   std::mt19937_64& rng) {
  std::vector<int64_t> in_lens(size_t(o.num_prompts)), out_lens(size_t(o.num_prompts));
  for (auto& l : in_lens) l = sample_length(o.input_len, o.range_ratio, 1, rng);
  for (auto& l : out_lens) l = sample_length(o.output_len, o.range_ratio, 1, rng);
  if (!o.tokenize_prompt) leave_room_for_special(tok, in_lens);

  std::vector<std::vector<int32_t>> sources;
  if (!o.path.empty()) {
    PP_ASSIGN_OR_RETURN(auto pairs, read_sharegpt(o.path));
    std::shuffle(pairs.begin(), pairs.end(), rng);
    for (const auto& p : pairs) {
      if (int64_t(sources.size()) == o.num_prompts) break;
      auto ids = tok.encode(p.first);
      if (!ids.empty()) sources.push_back(std::move(ids));
    }
    if (sources.empty()) {
      return Status(StatusCode::kOutOfRange,
                    fmt::format("no usable conversation in '{}'", o.path.string()));
    }
  }
  std::vector<int32_t> ordinary;  // the non-special ids
  if (sources.empty()) {
    for (int64_t id = 0; id < tok.vocab_size(); ++id) {
      if (!tok.is_special(int32_t(id)) && !tok.id_to_token(int32_t(id)).empty()) {
        ordinary.push_back(int32_t(id));
      }
    }
    if (ordinary.empty()) return invalid_argument("the tokenizer has no ordinary token");
  }
  std::vector<BenchRequest> out;
  for (int64_t i = 0; i < o.num_prompts; ++i) {
    const int64_t len = in_lens[size_t(i)];
    BenchRequest r;
    if (!sources.empty()) {
      const auto& src = sources[size_t(i) % sources.size()];
      for (int64_t j = 0; j < len; ++j) r.prompt_ids.push_back(src[size_t(j) % src.size()]);
    } else {
      std::uniform_int_distribution<size_t> pick(0, ordinary.size() - 1);
      for (int64_t j = 0; j < len; ++j) r.prompt_ids.push_back(ordinary[pick(rng)]);
    }
    r.prompt_text = tok.decode(r.prompt_ids);
    r.prompt_len = len;
    r.output_len = out_lens[size_t(i)];
    out.push_back(std::move(r));
  }
  return out;
}

// Draws token ids for the synthetic datasets: from the tokenizer's vocabulary (its ordinary
// ids, or every id as SGLang's gen_prompt draws from get_vocab()), else any below vocab_size.
class IdSource {
 public:
  static Result<IdSource> make(int64_t vocab_size, const model::Tokenizer* tok, bool with_special) {
    IdSource s;
    if (tok) {
      for (int64_t id = 0; id < tok->vocab_size(); ++id) {
        if ((with_special || !tok->is_special(int32_t(id))) &&
            !tok->id_to_token(int32_t(id)).empty()) {
          s.ids_.push_back(int32_t(id));
        }
      }
      if (s.ids_.empty()) return invalid_argument("the tokenizer has no ordinary token");
    } else if (vocab_size <= 0) {
      return invalid_argument("random token ids need a vocabulary size");
    }
    s.vocab_size_ = vocab_size;
    return s;
  }
  void append(int64_t n, std::mt19937_64& rng, std::vector<int32_t>* out) const {
    for (int64_t j = 0; j < n; ++j) {
      if (!ids_.empty()) {
        out->push_back(ids_[std::uniform_int_distribution<size_t>(0, ids_.size() - 1)(rng)]);
      } else {
        out->push_back(int32_t(std::uniform_int_distribution<int64_t>(0, vocab_size_ - 1)(rng)));
      }
    }
  }

 private:
  std::vector<int32_t> ids_;
  int64_t vocab_size_ = 0;
};

BenchRequest ids_request(std::vector<int32_t> ids, int64_t output_len,
                         const model::Tokenizer* tok) {
  BenchRequest r;
  r.prompt_len = int64_t(ids.size());
  r.output_len = output_len;
  if (tok) r.prompt_text = tok->decode(ids);
  r.prompt_ids = std::move(ids);
  return r;
}

// generated-shared-prefix as SGLang's sample_generated_shared_prefix_requests makes it: lengths
// drawn with gsp_range_ratio (a system prompt per group, a question and an output per request),
// tokens from the whole vocabulary, each prompt the system prompt's text, "\n\n" and the
// question's text, its length that text tokenized with the special tokens the server adds. As
// ids (tokenize_prompt, or no tokenizer) the same parts are joined as ids.
Result<std::vector<BenchRequest>> make_shared_prefix(const DatasetOptions& o, int64_t vocab_size,
                                                     const model::Tokenizer* tok,
                                                     std::mt19937_64& rng) {
  PP_ASSIGN_OR_RETURN(const IdSource ids, IdSource::make(vocab_size, tok, /*with_special=*/true));
  const size_t n_groups = size_t(o.gsp_num_groups);
  const size_t n_per = size_t(o.gsp_prompts_per_group);
  const double ratio = o.gsp_range_ratio;
  std::vector<int64_t> system_lens(n_groups), question_lens(n_groups * n_per),
      output_lens(n_groups * n_per);
  for (auto& l : system_lens) l = sample_length(o.gsp_system_prompt_len, ratio, 1, rng);
  for (auto& l : question_lens) l = sample_length(o.gsp_question_len, ratio, 1, rng);
  for (auto& l : output_lens) l = sample_length(o.gsp_output_len, ratio, 1, rng);
  const bool as_text = tok && !o.tokenize_prompt;
  const std::string separator = "\n\n";
  const std::vector<int32_t> separator_ids = tok ? tok->encode(separator) : std::vector<int32_t>{};
  std::vector<BenchRequest> out;
  for (size_t g = 0; g < n_groups; ++g) {
    std::vector<int32_t> system;
    ids.append(system_lens[g], rng, &system);
    const std::string system_text = as_text ? tok->decode(system) : std::string();
    for (size_t q = 0; q < n_per; ++q) {
      std::vector<int32_t> question;
      ids.append(question_lens[g * n_per + q], rng, &question);
      BenchRequest r;
      r.output_len = output_lens[g * n_per + q];
      if (as_text) {
        r.prompt_text = system_text + separator + tok->decode(question);
        r.prompt_ids = tok->encode(r.prompt_text, /*add_special=*/true);
      } else {
        r.prompt_ids = system;
        r.prompt_ids.insert(r.prompt_ids.end(), separator_ids.begin(), separator_ids.end());
        r.prompt_ids.insert(r.prompt_ids.end(), question.begin(), question.end());
        if (tok) r.prompt_text = tok->decode(r.prompt_ids);
      }
      r.prompt_len = int64_t(r.prompt_ids.size());
      out.push_back(std::move(r));
    }
  }
  if (!o.gsp_ordered) std::shuffle(out.begin(), out.end(), rng);
  return out;
}

Result<std::vector<BenchRequest>> make_multi_turn(const DatasetOptions& o, int64_t vocab_size,
                                                  const model::Tokenizer* tok,
                                                  std::mt19937_64& rng) {
  PP_ASSIGN_OR_RETURN(const IdSource ids, IdSource::make(vocab_size, tok, /*with_special=*/false));
  std::vector<std::vector<int32_t>> history(size_t(o.num_prompts));
  for (auto& h : history) ids.append(o.input_len, rng, &h);
  std::vector<BenchRequest> out;
  for (int64_t t = 0; t < o.mt_turns; ++t) {
    for (auto& h : history) {
      if (t > 0) {
        ids.append(o.output_len, rng, &h);  // the previous turn's (synthetic) answer
        ids.append(o.mt_user_len, rng, &h);
      }
      out.push_back(ids_request(h, o.output_len, tok));
    }
  }
  return out;
}

}  // namespace

Result<std::vector<BenchRequest>> make_dataset(const DatasetOptions& o, int64_t vocab_size,
                                               const model::Tokenizer* tok) {
  PP_RETURN_IF_ERROR(check_options(o));
  std::mt19937_64 rng(o.seed);
  switch (o.kind) {
    case DatasetKind::kShareGpt:
    case DatasetKind::kRandom:
      if (!tok) {
        return Status(
            StatusCode::kFailedPrecondition,
            fmt::format("dataset '{}' needs a tokenizer (--tokenizer)", dataset_kind_name(o.kind)));
      }
      if (o.kind == DatasetKind::kShareGpt) {
        if (o.path.empty()) return invalid_argument("dataset 'sharegpt' needs --dataset-path");
        return make_sharegpt(o, *tok, rng);
      }
      return make_random_text(o, *tok, rng);
    case DatasetKind::kGeneratedSharedPrefix:
      return make_shared_prefix(o, vocab_size, tok, rng);
    case DatasetKind::kMultiTurn:
      return make_multi_turn(o, vocab_size, tok, rng);
    case DatasetKind::kRandomIds:
    case DatasetKind::kFixed:
      break;
  }
  if (vocab_size <= 0 && tok) vocab_size = tok->vocab_size();
  if (vocab_size <= 0) return invalid_argument("random token ids need a vocabulary size");
  const double ratio = o.kind == DatasetKind::kFixed ? 1.0 : o.range_ratio;
  std::vector<int64_t> in_lens(size_t(o.num_prompts)), out_lens(size_t(o.num_prompts));
  for (auto& l : in_lens) l = sample_length(o.input_len, ratio, 1, rng);
  for (auto& l : out_lens) l = sample_length(o.output_len, ratio, 1, rng);
  const bool as_text = tok && !o.tokenize_prompt && o.kind == DatasetKind::kRandomIds;
  if (as_text) leave_room_for_special(*tok, in_lens);
  std::uniform_int_distribution<int64_t> offset(0, vocab_size - 1);
  std::vector<BenchRequest> out(size_t(o.num_prompts));
  for (int64_t i = 0; i < o.num_prompts; ++i) {
    BenchRequest& r = out[size_t(i)];
    const int64_t off = offset(rng);
    r.prompt_len = in_lens[size_t(i)];
    r.output_len = out_lens[size_t(i)];
    r.prompt_ids.resize(size_t(r.prompt_len));
    for (int64_t j = 0; j < r.prompt_len; ++j) {
      r.prompt_ids[size_t(j)] = int32_t((off + i + j) % vocab_size);
    }
    if (tok) r.prompt_text = tok->decode(r.prompt_ids);
  }
  return out;
}

}  // namespace pp::bench
