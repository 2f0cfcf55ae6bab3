// Fuzz target: the HTTP API's request side (openai-protocol.h): a request body parsed and
// validated for /v1/completions, /v1/chat/completions or SGLang's /generate (byte 0 picks the
// endpoint and, for chat, the template's format), then its prompts tokenized as pp-serve does,
// with a fixed tokenizer (tests/fixtures/tokenizers/qwen2) loaded once.
//
// Properties checked beyond "no crash": a refused request names an HTTP 4xx status and has a
// message; an accepted one has valid sampling parameters, and its tokenized prompts are
// non-empty, inside the vocabulary and leave room in the context.
#include <cstdint>
#include <memory>
#include <string_view>
#include <variant>

#include "fuzz-util.h"
#include "pp/model/chat-template.h"
#include "pp/model/tokenizer.h"
#include "pp/server/openai-protocol.h"

namespace {

std::unique_ptr<pp::model::Tokenizer>& tokenizer() {
  static std::unique_ptr<pp::model::Tokenizer> t;
  return t;
}

constexpr pp::model::ChatFormat kFormats[] = {
    pp::model::ChatFormat::kChatML, pp::model::ChatFormat::kLlama3, pp::model::ChatFormat::kLlama31,
    pp::model::ChatFormat::kLlama2, pp::model::ChatFormat::kMistral};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  auto t = pp::model::Tokenizer::from_hf_file(pp::fuzz::source_dir() /
                                              "tests/fixtures/tokenizers/qwen2/tokenizer.json");
  if (!t.ok()) std::abort();
  tokenizer() = std::move(*t);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pp::server;
  if (size == 0) return 0;
  const ApiKind kind = ApiKind(data[0] % 3);
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  ProtocolLimits limits;
  limits.n_vocab = tokenizer()->vocab_size();
  limits.max_context = 512;

  const ParseResult parsed = parse_request(kind, body, limits);
  if (const ApiError* e = std::get_if<ApiError>(&parsed)) {
    PP_FUZZ_CHECK(e->http_status >= 400 && e->http_status < 500 && !e->message.empty());
    (void)e->to_json().dump();
    return 0;
  }
  const ApiRequest& req = std::get<ApiRequest>(parsed);
  PP_FUZZ_CHECK(req.kind == kind);
  PP_FUZZ_CHECK(req.params.validate(limits.n_vocab).ok());
  PP_FUZZ_CHECK(req.n >= 1 && req.n <= limits.max_n);

  const pp::model::ChatTemplate chat = pp::model::ChatTemplate::of_format(
      kFormats[(data[0] / 3) % 4], "<|endoftext|>", "<|im_end|>", "You are a fuzzer.");
  const auto tokenized = tokenize_prompts(req, tokenizer().get(), &chat, limits);
  if (std::holds_alternative<ApiError>(tokenized)) return 0;
  for (const std::vector<int32_t>& ids : std::get<0>(tokenized)) {
    PP_FUZZ_CHECK(!ids.empty() && int64_t(ids.size()) < limits.max_context);
    for (int32_t id : ids) PP_FUZZ_CHECK(id >= 0 && id < limits.n_vocab);
  }
  return 0;
}
