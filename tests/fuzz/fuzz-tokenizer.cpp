// Fuzz target: tokenizer encode and decode. Loading a tokenizer.json is not fuzzed here: the
// committed tokenizers of tests/fixtures/tokenizers (byte-level BPE: GPT-2, Llama 3, Qwen 2;
// byte-fallback BPE: Llama 2; llama.cpp SPM from a GGUF) are loaded once, and each input drives
// one of them. Byte 0 picks the tokenizer (low bits), add_special (bit 4) and skip_special
// (bit 5); the other bytes are the text to encode and, read as little-endian int32, the ids to
// decode: as they are (any value, most outside the vocabulary) and folded into the vocabulary.
//
// Properties checked beyond "no crash":
//   - encode returns ids inside the vocabulary, and decoding them does not fail;
//   - decode leaves out ids outside the vocabulary (it equals the decode of the ids inside);
//   - the incremental detokenizer's pieces concatenate to decode() of the same ids;
//   - token ids outside the vocabulary sent by a client are refused with an error
//     (tokenize_prompts), never passed on.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "fuzz-util.h"
#include "pp/model/detokenizer.h"
#include "pp/model/gguf.h"
#include "pp/model/tokenizer.h"
#include "pp/server/openai-protocol.h"

namespace {

using pp::model::Tokenizer;

std::vector<std::unique_ptr<Tokenizer>>& tokenizers() {
  static std::vector<std::unique_ptr<Tokenizer>> t;
  return t;
}

void load_or_die(pp::Result<std::unique_ptr<Tokenizer>> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "cannot load tokenizer %s: %s\n", what, r.status().message().c_str());
    std::abort();
  }
  tokenizers().push_back(std::move(*r));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::filesystem::path dir = pp::fuzz::source_dir() / "tests/fixtures/tokenizers";
  for (const char* name : {"gpt2", "llama2", "llama3", "qwen2"}) {
    load_or_die(Tokenizer::from_hf_file(dir / name / "tokenizer.json"), name);
  }
  auto gguf = pp::model::GgufFile::open(dir / "spm" / "tokenizer.gguf");
  if (!gguf.ok()) std::abort();
  load_or_die(Tokenizer::from_gguf(**gguf), "spm");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Tokenizer& tok = *tokenizers()[(data[0] & 0x0f) % tokenizers().size()];
  const bool add_special = (data[0] & 0x10) != 0;
  const bool skip_special = (data[0] & 0x20) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const int64_t n_vocab = tok.vocab_size();

  const std::vector<int32_t> encoded = tok.encode(text, add_special);
  for (int32_t id : encoded) PP_FUZZ_CHECK(id >= 0 && id < n_vocab);
  (void)tok.decode(encoded, skip_special);

  std::vector<int32_t> raw((size - 1) / 4), inside, folded;
  if (!raw.empty()) std::memcpy(raw.data(), data + 1, raw.size() * 4);
  for (int32_t id : raw) {
    if (id >= 0 && id < n_vocab) inside.push_back(id);
    folded.push_back(int32_t((int64_t(id) % n_vocab + n_vocab) % n_vocab));
    (void)tok.id_to_token(id);
    (void)tok.is_special(id);
    (void)tok.is_byte_fallback_token(id);
  }
  PP_FUZZ_CHECK(tok.decode(raw, skip_special) == tok.decode(inside, skip_special));

  const std::string whole = tok.decode(folded, skip_special);
  pp::model::IncrementalDetokenizer detok(tok, skip_special);
  std::string pieces;
  for (int32_t id : folded) pieces += detok.push(id);
  pieces += detok.flush();
  PP_FUZZ_CHECK(pieces == whole);

  // A client's token ids: refused when any lies outside the vocabulary.
  if (!raw.empty()) {
    pp::server::ProtocolLimits limits;
    limits.n_vocab = n_vocab;
    limits.max_context = 1 << 20;
    pp::server::ApiRequest req;
    req.prompts.push_back({.is_ids = true, .text = {}, .ids = raw});
    const auto r = pp::server::tokenize_prompts(req, &tok, nullptr, limits);
    PP_FUZZ_CHECK(std::holds_alternative<pp::server::ApiError>(r) == (inside.size() != raw.size()));
  }
  return 0;
}
