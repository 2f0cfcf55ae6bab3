// IncrementalDetokenizer: for the corpus and for fresh random id sequences of every fixture
// tokenizer, the pushed pieces are each valid UTF-8 and concatenate to decode(all ids), with and
// without skipping special tokens.
#include <gtest/gtest.h>

#include "pp/model/detokenizer.h"
#include "pp/model/gguf.h"
#include "pp/model/tokenizer.h"
#include "test-tokenizer-util.h"
#include "test-util.h"

namespace pp::model {
namespace {

void expect_streams_like_decode(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                bool skip_special) {
  IncrementalDetokenizer detok(tok, skip_special);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = detok.push(id);
    ASSERT_TRUE(test::valid_utf8(piece))
        << "piece "
        << nlohmann::json(piece).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
    streamed += piece;
  }
  const std::string rest = detok.flush();
  EXPECT_TRUE(test::valid_utf8(rest));
  streamed += rest;
  EXPECT_EQ(streamed, tok.decode(ids, skip_special));
}

void check_tokenizer(const Tokenizer& tok, const nlohmann::json& corpus) {
  for (const auto& text : corpus) {
    SCOPED_TRACE("text: " + text.dump());
    const auto ids = tok.encode(text.get<std::string>(), true);
    expect_streams_like_decode(tok, ids, false);
    expect_streams_like_decode(tok, ids, true);
  }
  auto& g = test::rng();
  const int64_t n = tok.vocab_size();
  for (int round = 0; round < 300; ++round) {
    std::vector<int32_t> ids(1 + g() % 30);
    for (int32_t& id : ids) id = static_cast<int32_t>(g() % n);
    // Runs of byte tokens make partial characters likely.
    if (round % 2 == 0)
      for (int32_t& id : ids)
        if (g() % 2 == 0) id = static_cast<int32_t>(g() % std::min<int64_t>(n, 300));
    SCOPED_TRACE("seed " + std::to_string(test::rng_seed()));
    expect_streams_like_decode(tok, ids, round % 3 == 0);
  }
}

class DetokenizerFamily : public testing::TestWithParam<std::string> {};

TEST_P(DetokenizerFamily, StreamsLikeDecode) {
  auto tok =
      Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / GetParam() / "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  check_tokenizer(**tok, test::load_tokenizer_fixture(GetParam() + "/expected.json")["corpus"]);
}

INSTANTIATE_TEST_SUITE_P(Families, DetokenizerFamily,
                         testing::Values("gpt2", "llama3", "qwen2", "llama2"));

TEST(DetokenizerSmolLM2, StreamsLikeDecode) {
  if (!std::filesystem::exists(test::default_model_path())) GTEST_SKIP() << "no default model";
  auto f = GgufFile::open(test::default_model_path());
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto tok = Tokenizer::from_gguf(**f);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  check_tokenizer(**tok, test::load_tokenizer_fixture("smollm2-ids.json")["corpus"]);
}

// A character split over byte-fallback tokens comes out whole, once its run has ended.
TEST(DetokenizerByteFallback, HoldsBackPartialCharacters) {
  auto tok = Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/llama2/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto ids = (*tok)->encode("a 😀 b");
  IncrementalDetokenizer detok(**tok, false);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(detok.push(id));
  pieces.push_back(detok.flush());
  std::string all;
  for (const auto& p : pieces) {
    EXPECT_TRUE(test::valid_utf8(p));
    all += p;
  }
  EXPECT_EQ(all, "a 😀 b");
  bool whole = false;
  for (const auto& p : pieces) whole |= p.find("😀") != std::string::npos;
  EXPECT_TRUE(whole);
}

}  // namespace
}  // namespace pp::model
