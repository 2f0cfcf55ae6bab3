// The single-process generator: prefill in chunks, batched decode, per-request sampling and
// stop conditions, streaming text through the incremental detokenizer.
#include "pp/model/generate.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <random>

#include "pp/assert.h"
#include "pp/model/detokenizer.h"
#include "pp/model/tokenizer.h"

namespace pp::model {

namespace cpu = kernels::cpu;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// One request while it runs.
struct Sequence {
  const GenerationRequest* req = nullptr;
  GenerationResult* out = nullptr;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  std::vector<int32_t> table;   // KV block ids, enough for the whole generation
  int64_t n_prompt = 0;
  int64_t n_cached = 0;  // tokens whose KV is written
  int64_t limit = 0;     // most tokens it may generate
  uint64_t seed = 0;
  bool done = false;
  std::unique_ptr<IncrementalDetokenizer> detok;
  size_t n_emitted = 0;  // bytes of out->text already given to on_text

  int64_t n_generated() const { return int64_t(tokens.size()) - n_prompt; }
};

// Longest k < s.size() such that text ends with the first k bytes of s: how much of the text
// might be the start of a stop string and must wait.
size_t partial_stop_suffix(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k) {
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

// Hands the final part of the text to the callback.
void emit(Sequence& seq, size_t upto) {
  if (upto <= seq.n_emitted) return;
  if (seq.req->on_text) {
    seq.req->on_text(std::string_view(seq.out->text).substr(seq.n_emitted, upto - seq.n_emitted));
  }
  seq.n_emitted = upto;
}

// Appends a text piece, cutting at the first stop string. Returns true when one matched.
bool append_text(Sequence& seq, const std::string& piece, bool final) {
  std::string& text = seq.out->text;
  const size_t old_size = text.size();
  text += piece;
  const std::vector<std::string>& stops = seq.req->params.stop;
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const std::string& s : stops) {
    // A match must end in the new text; it may start in the old.
    const size_t from = old_size >= s.size() - 1 ? old_size - (s.size() - 1) : 0;
    const size_t at = text.find(s, from);
    if (at != std::string::npos && at < best) {
      best = at;
      best_stop = &s;
    }
  }
  if (best_stop) {
    text.resize(best);
    seq.out->stop_string = *best_stop;
    emit(seq, text.size());
    return true;
  }
  emit(seq, final ? text.size() : text.size() - partial_stop_suffix(text, stops));
  return false;
}

void finish(Sequence& seq, FinishReason reason) {
  seq.done = true;
  seq.out->finish_reason = reason;
  if (seq.detok) {
    if (append_text(seq, seq.detok->flush(), /*final=*/true))
      seq.out->finish_reason = FinishReason::kStop;
  }
}

}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
  }
  return "?";
}

Generator::Generator(StageModel& model, const Tokenizer* tokenizer, GeneratorOptions options)
    : model_(model), tokenizer_(tokenizer), options_(options) {
  PP_ASSERT(model.has_embedding() && model.has_lm_head());
  PP_ASSERT(options_.max_batch_tokens > 0 && options_.block_size > 0);
}

Status Generator::ensure_kv(int64_t n_blocks) {
  const KvCache* kv = model_.kv();
  if (kv && kv->n_blocks() >= n_blocks && kv->block_size() == options_.block_size) {
    return ok_status();
  }
  return model_.allocate_kv(n_blocks, options_.block_size);
}

Result<std::vector<GenerationResult>> Generator::generate(
    std::span<const GenerationRequest> requests) {
  const ModelConfig& c = model_.config();
  const int64_t V = c.n_vocab, bs = options_.block_size;
  stats_ = {};
  std::vector<GenerationResult> results(requests.size());
  std::vector<Sequence> seqs(requests.size());

  int64_t n_blocks = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    Status s = r.params.validate(V);
    if (s.ok() && r.params.grammar.active()) {
      s = make_error(StatusCode::kUnimplemented,
                     "structured output is served by the pipeline (pp-serve), not this generator");
    }
    if (s.ok() && r.prompt_ids.empty()) s = invalid_argument("empty prompt");
    for (int32_t id : r.prompt_ids) {
      if (!s.ok()) break;
      if (id < 0 || id >= V) {
        s = make_error(StatusCode::kOutOfRange,
                       "prompt token id {} is outside the vocabulary [0, {})", id, V);
      }
    }
    const int64_t n_prompt = int64_t(r.prompt_ids.size());
    if (s.ok() && n_prompt >= c.max_context()) {
      s = make_error(StatusCode::kOutOfRange,
                     "prompt of {} tokens leaves no room in the context of {} tokens", n_prompt,
                     c.max_context());
    }
    if (!s.ok()) return requests.size() > 1 ? s.with_context(fmt::format("request {}", i)) : s;
    if (!r.params.stop.empty() && !tokenizer_) {
      return invalid_argument("stop strings need a tokenizer");
    }

    Sequence& q = seqs[i];
    q.req = &r;
    q.out = &results[i];
    q.out->n_prompt_tokens = n_prompt;
    q.tokens = r.prompt_ids;
    q.n_prompt = n_prompt;
    const int64_t room = c.max_context() - n_prompt;
    q.limit = r.params.max_tokens > 0 ? std::min(r.params.max_tokens, room) : room;
    q.seed = r.params.seed ? *r.params.seed
                           : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
    if (tokenizer_) {
      q.detok = std::make_unique<IncrementalDetokenizer>(*tokenizer_, r.params.skip_special_tokens);
    }
    const int64_t n_seq_blocks = (n_prompt + q.limit + bs - 1) / bs;
    for (int64_t b = 0; b < n_seq_blocks; ++b) q.table.push_back(int32_t(n_blocks + b));
    n_blocks += n_seq_blocks;
    if (n_blocks > INT32_MAX)
      return make_error(StatusCode::kResourceExhausted, "too many KV blocks");
  }
  if (seqs.empty()) return results;
  PP_RETURN_IF_ERROR(ensure_kv(n_blocks));

  Batch batch;
  std::vector<float> logits;
  std::vector<Sequence*> owners;  // the sequence of each logit row
  std::vector<float> penalized, scratch;
  std::vector<int32_t> bias_ids;
  std::vector<float> bias_values;

  // Samples the next token of `seq` from its logits row and applies the stop conditions.
  auto sample_next = [&](Sequence& seq, const float* row) {
    const SamplingParams& p = seq.req->params;
    p.split_logit_bias(&bias_ids, &bias_values);
    cpu::SampleResult r =
        cpu::sample_constrained({.prompt_ids = seq.tokens.data(),
                                 .n_prompt = seq.n_prompt,
                                 .output_ids = seq.tokens.data() + seq.n_prompt,
                                 .n_output = seq.n_generated(),
                                 .repetition = p.repetition_penalty,
                                 .presence = p.presence_penalty,
                                 .frequency = p.frequency_penalty},
                                {.bias_ids = bias_ids.data(),
                                 .bias_values = bias_values.data(),
                                 .n_bias = int64_t(bias_ids.size())},
                                {.logits = row,
                                 .n_vocab = V,
                                 .temperature = p.temperature,
                                 .top_k = std::max(p.top_k, 0),
                                 .top_p = p.top_p,
                                 .min_p = p.min_p,
                                 .seed = seq.seed,
                                 .step = uint64_t(seq.n_generated()),
                                 .n_top_logprobs = p.logprobs ? p.top_logprobs : 0},
                                penalized, scratch);
    seq.tokens.push_back(r.token);
    seq.out->token_ids.push_back(r.token);
    if (p.logprobs) {
      seq.out->logprobs.push_back(r.logprob);
      seq.out->top_logprobs.push_back(std::move(r.top));
    }
    ++stats_.n_generated_tokens;
    const bool is_eos = !p.ignore_eos && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(),
                                                   r.token) != c.eos_token_ids.end();
    const bool is_stop_id = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), r.token) !=
                            p.stop_token_ids.end();
    if (is_eos || is_stop_id) return finish(seq, FinishReason::kStop);
    if (seq.detok && append_text(seq, seq.detok->push(r.token), /*final=*/false)) {
      seq.done = true;
      seq.out->finish_reason = FinishReason::kStop;
      return;
    }
    if (seq.n_generated() >= seq.limit) finish(seq, FinishReason::kLength);
  };

  auto run = [&]() -> Status {
    PP_RETURN_IF_ERROR(model_.forward(batch, {}, logits));
    PP_ASSERT(int64_t(owners.size()) == batch.n_logit_rows());
    for (size_t i = 0; i < owners.size(); ++i) sample_next(*owners[i], logits.data() + i * V);
    return ok_status();
  };

  // Prefill: the prompts, packed into forwards of at most max_batch_tokens tokens. The chunk
  // that ends a prompt asks for logits and samples the first token.
  const Clock::time_point t_prefill = Clock::now();
  for (size_t next = 0; next < seqs.size();) {
    batch.clear();
    owners.clear();
    int64_t budget = options_.max_batch_tokens;
    for (size_t i = next; i < seqs.size() && budget > 0; ++i) {
      Sequence& q = seqs[i];
      const int64_t n = std::min(q.n_prompt - q.n_cached, budget);
      const bool last = q.n_cached + n == q.n_prompt;
      batch.add_sequence(std::span(q.tokens).subspan(size_t(q.n_cached), size_t(n)),
                         int32_t(q.n_cached), q.table, last);
      if (last) owners.push_back(&q);
      q.n_cached += n;
      budget -= n;
      stats_.n_prompt_tokens += n;
      if (last) next = i + 1;
    }
    PP_RETURN_IF_ERROR(run());
  }
  stats_.prefill_seconds = seconds_since(t_prefill);

  // Decode: every running sequence, one token each, in forwards of at most max_batch_tokens.
  const Clock::time_point t_decode = Clock::now();
  for (;;) {
    std::vector<Sequence*> running;
    for (Sequence& q : seqs) {
      if (!q.done) running.push_back(&q);
    }
    if (running.empty()) break;
    for (size_t at = 0; at < running.size();) {
      batch.clear();
      owners.clear();
      for (; at < running.size() && batch.n_tokens() < options_.max_batch_tokens; ++at) {
        Sequence& q = *running[at];
        PP_ASSERT(q.n_cached + 1 == int64_t(q.tokens.size()));
        batch.add_sequence(std::span(q.tokens).subspan(size_t(q.n_cached), 1), int32_t(q.n_cached),
                           q.table, true);
        owners.push_back(&q);
        q.n_cached += 1;
      }
      stats_.n_decode_tokens += int64_t(owners.size());
      ++stats_.n_decode_steps;
      PP_RETURN_IF_ERROR(run());
    }
  }
  stats_.decode_seconds = seconds_since(t_decode);
  return results;
}

Result<std::vector<float>> Generator::prompt_logits(std::span<const int32_t> prompt_ids,
                                                    std::span<const int32_t> positions,
                                                    int64_t chunk_tokens) {
  const int64_t n = int64_t(prompt_ids.size()), V = model_.config().n_vocab;
  if (n == 0) return invalid_argument("empty prompt");
  if (n > model_.config().max_context()) {
    return make_error(StatusCode::kOutOfRange, "prompt of {} tokens exceeds the context of {}", n,
                      model_.config().max_context());
  }
  for (int32_t p : positions) {
    if (p < 0 || p >= n)
      return invalid_argument("logit position {} is outside the prompt of {}", p, n);
  }
  const int64_t chunk = chunk_tokens > 0 ? chunk_tokens : options_.max_batch_tokens;
  const int64_t bs = options_.block_size;
  std::vector<int32_t> table(size_t((n + bs - 1) / bs));
  for (size_t b = 0; b < table.size(); ++b) table[b] = int32_t(b);
  PP_RETURN_IF_ERROR(ensure_kv(int64_t(table.size())));

  std::vector<int32_t> wanted(positions.begin(), positions.end());
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  std::vector<float> rows(wanted.size() * size_t(V));  // in `wanted` order

  Batch batch;
  std::vector<float> logits;
  size_t w = 0;
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t len = std::min(chunk, n - begin);
    batch.clear();
    batch.add_sequence(prompt_ids.subspan(size_t(begin), size_t(len)), int32_t(begin), table,
                       false);
    const size_t w0 = w;
    for (; w < wanted.size() && wanted[w] < begin + len; ++w) {
      batch.logit_rows.push_back(int32_t(wanted[w] - begin));
    }
    PP_RETURN_IF_ERROR(model_.forward(batch, {}, logits));
    std::copy(logits.begin(), logits.end(), rows.begin() + w0 * V);
  }
  std::vector<float> out(positions.size() * size_t(V));
  for (size_t i = 0; i < positions.size(); ++i) {
    const size_t at =
        size_t(std::lower_bound(wanted.begin(), wanted.end(), positions[i]) - wanted.begin());
    std::copy_n(rows.begin() + at * V, V, out.begin() + i * V);
  }
  return out;
}

}  // namespace pp::model
