// Tokenizer against Hugging Face `tokenizers`: ids and decodes of a corpus (English, code, CJK,
// emoji, whitespace runs, digits, special tokens) for tiny tokenizers of each family
// (tests/fixtures/tokenizers/<family>/), for the default model's GGUF vocabulary, and for a
// SentencePiece GGUF vocabulary; plus round trips and edge cases (invalid UTF-8, long input).
#include <chrono>
#include <fstream>

#include <gtest/gtest.h>

#include "pp/model/gguf.h"
#include "pp/model/tokenizer-export.h"
#include "pp/model/tokenizer.h"
#include "test-tokenizer-util.h"
#include "test-util.h"

namespace pp::model {
namespace {

using nlohmann::json;

std::vector<int32_t> as_ids(const json& j) { return j.get<std::vector<int32_t>>(); }

// Compares everything a fixture of scripts/make-tokenizer-fixtures.py's reference() holds.
void expect_matches_reference(const Tokenizer& tok, const json& ref) {
  const auto& corpus = ref.at("corpus");
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string text = corpus[i];
    SCOPED_TRACE("text: " + json(text).dump());
    EXPECT_EQ(tok.encode(text, false), as_ids(ref["ids"][i]));
    const auto ids_s = as_ids(ref["ids_special"][i]);
    EXPECT_EQ(tok.encode(text, true), ids_s);
    EXPECT_EQ(tok.decode(ids_s, false), ref["decode"][i].get<std::string>());
    EXPECT_EQ(tok.decode(ids_s, true), ref["decode_skip"][i].get<std::string>());
  }
  for (size_t i = 0; i < ref.at("random_ids").size(); ++i) {
    const auto ids = as_ids(ref["random_ids"][i]);
    SCOPED_TRACE("random ids #" + std::to_string(i));
    EXPECT_EQ(tok.decode(ids, false), ref["random_decode"][i].get<std::string>());
    EXPECT_EQ(tok.decode(ids, true), ref["random_decode_skip"][i].get<std::string>());
  }
}

class TokenizerFamily : public testing::TestWithParam<std::string> {};

TEST_P(TokenizerFamily, MatchesHuggingFace) {
  auto tok =
      Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / GetParam() / "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  json ref = test::load_tokenizer_fixture(GetParam() + "/expected.json");
  ASSERT_FALSE(ref.is_null());
  expect_matches_reference(**tok, ref);
}

TEST_P(TokenizerFamily, ToHfJsonRoundTrips) {
  auto tok =
      Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / GetParam() / "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto again = Tokenizer::from_hf_json((*tok)->to_hf_json());
  ASSERT_TRUE(again.ok()) << again.status().message();
  json ref = test::load_tokenizer_fixture(GetParam() + "/expected.json");
  expect_matches_reference(**again, ref);
}

// decode(encode(s)) == s for fresh random text drawn from a mix of scripts and whitespace.
TEST_P(TokenizerFamily, RandomTextRoundTrips) {
  auto tok =
      Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / GetParam() / "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  std::vector<std::string> atoms = {"a",  "Z", "0",    "7",   " ",    "  ",  "\n",       "\t",
                                    "'s", "é", "ß",    "中",  "日本", "😀",   "👍🏽", "!",
                                    "<",  "|", "word", "The", "\r\n", "9999"};
  // SentencePiece-style vocabularies write spaces as U+2581 and decode it back to a space.
  if (GetParam() != "llama2") atoms.push_back("\xE2\x96\x81");
  auto& g = test::rng();
  for (int round = 0; round < 200; ++round) {
    std::string s;
    const int n = static_cast<int>(g() % 40);
    for (int k = 0; k < n; ++k) s += atoms[g() % atoms.size()];
    const auto ids = (*tok)->encode(s);
    ASSERT_EQ((*tok)->decode(ids), s) << "seed " << test::rng_seed();
  }
}

INSTANTIATE_TEST_SUITE_P(Families, TokenizerFamily,
                         testing::Values("gpt2", "llama3", "qwen2", "llama2"));

std::unique_ptr<Tokenizer> load_default_model_tokenizer() {
  auto f = GgufFile::open(test::default_model_path());
  if (!f.ok()) return nullptr;
  auto tok = Tokenizer::from_gguf(**f);
  EXPECT_TRUE(tok.ok()) << tok.status().message();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

TEST(TokenizerSmolLM2, MatchesHuggingFace) {
  if (!std::filesystem::exists(test::default_model_path())) GTEST_SKIP() << "no default model";
  auto tok = load_default_model_tokenizer();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->token_to_id("<|im_start|>"), 1);
  EXPECT_EQ(tok->id_to_token(2), "<|im_end|>");
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_FALSE(tok->is_special(100));
  json ref = test::load_tokenizer_fixture("smollm2-ids.json");
  ASSERT_FALSE(ref.is_null());
  expect_matches_reference(*tok, ref);
}

TEST(TokenizerSmolLM2, ToHfJsonGivesTheSameIds) {
  if (!std::filesystem::exists(test::default_model_path())) GTEST_SKIP() << "no default model";
  auto tok = load_default_model_tokenizer();
  ASSERT_NE(tok, nullptr);
  json j = tok->to_hf_json();
  // For the manual check with Hugging Face: scripts/make-tokenizer-fixtures.py --check-hf-json.
  if (const char* out = std::getenv("PP_TOKENIZER_JSON_OUT")) std::ofstream(out) << j.dump();
  test::TempDir dir;
  std::ofstream(dir.path() / "tokenizer.json") << j.dump();
  auto again = Tokenizer::from_hf_file(dir.path() / "tokenizer.json");
  ASSERT_TRUE(again.ok()) << again.status().message();
  json ref = test::load_tokenizer_fixture("smollm2-ids.json");
  expect_matches_reference(**again, ref);
}

// The exported files (pp-partition inspect --export-tokenizer): tokenizer_config.json says what
// pp adds, and tokenizer.json read back encodes as the reference (Hugging Face's ids; BOS not
// added, as SmolLM2's GGUF says). scripts/check-exported-tokenizer.py checks the same files with
// transformers itself.
TEST(TokenizerExport, SmolLM2GgufAddsNoBos) {
  if (!std::filesystem::exists(test::default_model_path())) GTEST_SKIP() << "no default model";
  auto tok = load_default_model_tokenizer();
  ASSERT_NE(tok, nullptr);
  test::TempDir dir;
  ASSERT_TRUE(export_hf_tokenizer(*tok, "{{ messages }}", 8192, dir.path() / "out").ok());
  json config = json::parse(std::ifstream(dir.path() / "out" / "tokenizer_config.json"));
  EXPECT_EQ(config["add_bos_token"], false);
  EXPECT_EQ(config["add_eos_token"], false);
  EXPECT_EQ(config["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(config["eos_token"], tok->id_to_token(*tok->eos_id()));
  EXPECT_EQ(config["model_max_length"], 8192);
  EXPECT_EQ(config["chat_template"], "{{ messages }}");
  auto again = Tokenizer::from_hf_file(dir.path() / "out" / "tokenizer.json");
  ASSERT_TRUE(again.ok()) << again.status().message();
  expect_matches_reference(**again, test::load_tokenizer_fixture("smollm2-ids.json"));
}

TEST(TokenizerExport, Llama3AddsBosAsItsPostProcessorSays) {
  auto tok = Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/llama3/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  json config = hf_tokenizer_config(**tok, "", 0);
  EXPECT_EQ(config["add_bos_token"], true);
  EXPECT_EQ(config["bos_token"], "<|begin_of_text|>");
  EXPECT_FALSE(config.contains("model_max_length"));
  EXPECT_FALSE(config.contains("chat_template"));
  test::TempDir dir;
  ASSERT_TRUE(export_hf_tokenizer(**tok, "", 0, dir.path()).ok());
  auto again = Tokenizer::from_hf_file(dir.path() / "tokenizer.json");
  ASSERT_TRUE(again.ok()) << again.status().message();
  for (const char* text : {"Hello world", " two  spaces\n", "ümlaut 123"}) {
    EXPECT_EQ((*again)->encode(text, true), (*tok)->encode(text, true)) << text;
    EXPECT_EQ((*again)->encode(text, false), (*tok)->encode(text, false)) << text;
  }
  // A folder that cannot be made is an error naming it.
  std::ofstream(dir.path() / "file") << "x";
  Status s = export_hf_tokenizer(**tok, "", 0, dir.path() / "file" / "sub");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("file"), std::string::npos) << s.message();
}

TEST(TokenizerSpm, MatchesSentencePiece) {
  auto f = GgufFile::open(test::fixture_dir() / "tokenizers" / "spm" / "tokenizer.gguf");
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto tok = Tokenizer::from_gguf(**f);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  json ref = test::load_tokenizer_fixture("spm/expected.json");
  ASSERT_FALSE(ref.is_null());
  for (size_t i = 0; i < ref["corpus"].size(); ++i) {
    const std::string text = ref["corpus"][i];
    SCOPED_TRACE("text: " + json(text).dump());
    const auto want = as_ids(ref["ids"][i]);
    EXPECT_EQ((*tok)->encode(text, false), want);
    auto with_bos = (*tok)->encode(text, true);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos[0], 1);
    EXPECT_EQ((*tok)->decode(want, true), ref["decode"][i].get<std::string>());
  }
  // The HF form (BPE with merges derived from the scores) loads and agrees on plain text.
  auto again = Tokenizer::from_hf_json((*tok)->to_hf_json());
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ((*again)->encode("Hello world"), (*tok)->encode("Hello world"));
}

TEST(TokenizerEdgeCases, EmptyAndWhitespace) {
  auto tok = Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/llama3/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  EXPECT_TRUE((*tok)->encode("").empty());
  EXPECT_EQ((*tok)->encode("", true), std::vector<int32_t>{0});  // <|begin_of_text|>
  EXPECT_EQ((*tok)->decode(std::vector<int32_t>{}), "");
  for (const std::string& s :
       std::vector<std::string>{" ", "\n", "   \t\t\n\n  ", std::string(1000, ' ')}) {
    auto ids = (*tok)->encode(s);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ((*tok)->decode(ids), s);
  }
  // Ids outside the vocabulary are left out rather than crashing.
  EXPECT_EQ((*tok)->decode(std::vector<int32_t>{-5, 1 << 30}), "");
  EXPECT_EQ((*tok)->id_to_token(-1), "");
  EXPECT_FALSE((*tok)->token_to_id("no such token here").has_value());
}

TEST(TokenizerEdgeCases, InvalidUtf8) {
  for (const char* family : {"gpt2", "llama3", "qwen2", "llama2"}) {
    SCOPED_TRACE(family);
    auto tok =
        Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / family / "tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    const std::string bad =
        "ab\xFF"
        "cd \xE2\x82 x\xC0\xAF\xED\xA0\x80 end\xF0\x9F";
    auto ids = (*tok)->encode(bad);
    EXPECT_FALSE(ids.empty());
    const std::string back = (*tok)->decode(ids);
    EXPECT_TRUE(test::valid_utf8(back));
    // Valid text around the bad bytes survives, each bad byte run becomes U+FFFD.
    EXPECT_NE(back.find("ab\xEF\xBF\xBD"
                        "cd"),
              std::string::npos)
        << back;
    EXPECT_NE(back.find(" end"), std::string::npos) << back;
  }
  // Random bytes never crash and decode to valid UTF-8.
  auto tok = Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/qwen2/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  auto& g = test::rng();
  for (int round = 0; round < 100; ++round) {
    std::string s(g() % 64, '\0');
    for (char& c : s) c = static_cast<char>(g());
    EXPECT_TRUE(test::valid_utf8((*tok)->decode((*tok)->encode(s))));
  }
}

TEST(TokenizerEdgeCases, LongInput) {
  auto tok = Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/gpt2/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  // One 100 KB word (no pre-tokenizer split) and 100 KB of mixed text.
  const std::string word(100 * 1024, 'a');
  EXPECT_EQ((*tok)->decode((*tok)->encode(word)), word);
  std::string text;
  auto& g = test::rng();
  const std::vector<std::string> words = {"the", "tokenizer", "42", "中文", "😀", "def", "\n"};
  while (text.size() < 100 * 1024) text += words[g() % words.size()] + " ";
  EXPECT_EQ((*tok)->decode((*tok)->encode(text)), text);
}

TEST(TokenizerEdgeCases, BadJsonIsAnError) {
  EXPECT_FALSE(Tokenizer::from_hf_json(json::parse(R"({"model": {"type": "WordPiece"}})")).ok());
  EXPECT_FALSE(Tokenizer::from_hf_json(json::parse(R"({"nothing": 1})")).ok());
  EXPECT_FALSE(Tokenizer::from_hf_file("/nonexistent/tokenizer.json").ok());
  json j = test::load_tokenizer_fixture("gpt2/tokenizer.json");
  j["model"]["merges"].push_back("no_such_token another_missing_token");
  EXPECT_FALSE(Tokenizer::from_hf_json(j).ok());
}

// Encoding speed over ~1 MB of English-like text, reported (not asserted).
TEST(TokenizerEdgeCases, EncodesAMegabyte) {
  auto tok = Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/llama3/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  json ref = test::load_tokenizer_fixture("llama3/expected.json");
  std::string text;
  while (text.size() < (1 << 20))
    for (const auto& s : ref["corpus"]) text += s.get<std::string>() + " ";
  const auto t0 = std::chrono::steady_clock::now();
  auto ids = (*tok)->encode(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  RecordProperty("encode_1mb_seconds", std::to_string(s));
  EXPECT_EQ((*tok)->decode(ids), text);
}

}  // namespace
}  // namespace pp::model
