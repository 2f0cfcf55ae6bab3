// pp-bench's datasets: SGLang's length rule and id pattern for random-ids, exact lengths for
// fixed, determinism by seed, random text of the asked token lengths, ShareGPT filtering, and
// the shared-prefix datasets (generated-shared-prefix groups, multi-turn histories).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "pp/bench/dataset.h"
#include "test-util.h"

namespace pp::bench {
namespace {

std::unique_ptr<model::Tokenizer> gpt2() {
  auto t = model::Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / "gpt2" /
                                          "tokenizer.json");
  EXPECT_TRUE(t.ok()) << t.status().message();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(BenchDataset, RandomIdsFollowSglangRule) {
  auto& g = test::rng();
  DatasetOptions o;
  o.kind = DatasetKind::kRandomIds;
  o.num_prompts = 400;
  o.input_len = std::uniform_int_distribution<int64_t>(20, 300)(g);
  o.output_len = std::uniform_int_distribution<int64_t>(5, 100)(g);
  o.range_ratio = std::uniform_real_distribution<double>(0.1, 0.9)(g);
  o.seed = g();
  const int64_t vocab = std::uniform_int_distribution<int64_t>(50, 50000)(g);
  auto ds = make_dataset(o, vocab, nullptr);
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  ASSERT_EQ(ds->size(), 400u);
  const int64_t in_lo = std::max<int64_t>(int64_t(double(o.input_len) * o.range_ratio), 1);
  const int64_t out_lo = std::max<int64_t>(int64_t(double(o.output_len) * o.range_ratio), 1);
  double in_sum = 0;
  std::map<int64_t, int> seen_in;
  for (size_t i = 0; i < ds->size(); ++i) {
    const BenchRequest& r = (*ds)[i];
    EXPECT_GE(r.prompt_len, in_lo);
    EXPECT_LE(r.prompt_len, o.input_len);
    EXPECT_GE(r.output_len, out_lo);
    EXPECT_LE(r.output_len, o.output_len);
    ASSERT_EQ(int64_t(r.prompt_ids.size()), r.prompt_len);
    EXPECT_TRUE(r.prompt_text.empty());  // no tokenizer
    // (offset + i + j) % vocab: consecutive ids.
    for (size_t j = 1; j < r.prompt_ids.size(); ++j) {
      ASSERT_EQ(r.prompt_ids[j], (r.prompt_ids[j - 1] + 1) % vocab) << "prompt " << i;
    }
    for (int32_t id : r.prompt_ids) ASSERT_TRUE(id >= 0 && id < vocab);
    in_sum += double(r.prompt_len);
    seen_in[r.prompt_len]++;
  }
  // Uniform in [lo, hi]: the mean is near the middle and both ends occur.
  const double mid = (double(in_lo) + double(o.input_len)) / 2;
  const double sd = (double(o.input_len) - double(in_lo) + 1) / std::sqrt(12.0) / std::sqrt(400.0);
  EXPECT_NEAR(in_sum / 400, mid, 5 * sd + 0.5);

  // Deterministic by seed; another seed gives another dataset.
  auto again = make_dataset(o, vocab, nullptr);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < ds->size(); ++i) EXPECT_EQ((*again)[i].prompt_ids, (*ds)[i].prompt_ids);
  o.seed += 1;
  auto other = make_dataset(o, vocab, nullptr);
  ASSERT_TRUE(other.ok());
  int same = 0;
  for (size_t i = 0; i < ds->size(); ++i) same += (*other)[i].prompt_ids == (*ds)[i].prompt_ids;
  EXPECT_LT(same, 10);
}

TEST(BenchDataset, FixedAndRatioOneAreExact) {
  DatasetOptions o;
  o.kind = DatasetKind::kFixed;
  o.num_prompts = 50;
  o.input_len = 33;
  o.output_len = 7;
  o.range_ratio = 0.0;  // ignored by fixed
  o.seed = test::rng()();
  auto ds = make_dataset(o, 1000, nullptr);
  ASSERT_TRUE(ds.ok());
  for (const auto& r : *ds) {
    EXPECT_EQ(r.prompt_len, 33);
    EXPECT_EQ(r.prompt_ids.size(), 33u);
    EXPECT_EQ(r.output_len, 7);
  }
  o.kind = DatasetKind::kRandomIds;
  o.range_ratio = 1.0;
  ds = make_dataset(o, 1000, nullptr);
  ASSERT_TRUE(ds.ok());
  for (const auto& r : *ds) EXPECT_EQ(r.prompt_len * 100 + r.output_len, 33 * 100 + 7);
  // Ratio 0 and a tiny output: never 0 new tokens.
  o.range_ratio = 0.0;
  o.output_len = 1;
  ds = make_dataset(o, 1000, nullptr);
  ASSERT_TRUE(ds.ok());
  for (const auto& r : *ds) EXPECT_EQ(r.output_len, 1);
}

TEST(BenchDataset, RandomTextHasTheAskedLengthsAndDecodes) {
  auto tok = gpt2();
  ASSERT_TRUE(tok);
  DatasetOptions o;
  o.kind = DatasetKind::kRandom;
  o.num_prompts = 20;
  o.input_len = 64;
  o.output_len = 16;
  o.range_ratio = 0.5;
  o.seed = test::rng()();
  auto ds = make_dataset(o, 0, tok.get());
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  for (const auto& r : *ds) {
    EXPECT_GE(r.prompt_len, 32);
    EXPECT_LE(r.prompt_len, 64);
    EXPECT_EQ(int64_t(r.prompt_ids.size()), r.prompt_len);
    EXPECT_FALSE(r.prompt_text.empty());
    EXPECT_EQ(r.prompt_text, tok->decode(r.prompt_ids));
    for (int32_t id : r.prompt_ids) EXPECT_FALSE(tok->is_special(id));
  }
  // Without a tokenizer: refused, saying why.
  auto none = make_dataset(o, 1000, nullptr);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("tokenizer"), std::string::npos);
}

// As SGLang's client: with a tokenizer, random-ids and random prompts are text, shortened by the
// special tokens the tokenizer adds (llama2's BOS: one), and that shorter length is counted;
// --tokenize-prompt keeps the drawn length.
TEST(BenchDataset, TextPromptsLeaveRoomForSpecialTokens) {
  auto tok = model::Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / "llama2" /
                                            "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const int64_t n_special = int64_t((*tok)->encode("", /*add_special=*/true).size());
  ASSERT_EQ(n_special, 1);
  for (DatasetKind kind : {DatasetKind::kRandomIds, DatasetKind::kRandom}) {
    DatasetOptions o;
    o.kind = kind;
    o.num_prompts = 10;
    o.input_len = std::uniform_int_distribution<int64_t>(8, 40)(test::rng());
    o.output_len = 4;
    o.range_ratio = 1.0;
    o.seed = test::rng()();
    auto ds = make_dataset(o, 0, tok->get());
    ASSERT_TRUE(ds.ok()) << ds.status().message();
    for (const BenchRequest& r : *ds) {
      EXPECT_EQ(r.prompt_len, o.input_len - n_special) << dataset_kind_name(kind);
      EXPECT_EQ(int64_t(r.prompt_ids.size()), r.prompt_len);
      EXPECT_EQ(r.prompt_text, (*tok)->decode(r.prompt_ids));
    }
    o.tokenize_prompt = true;
    ds = make_dataset(o, 0, tok->get());
    ASSERT_TRUE(ds.ok()) << ds.status().message();
    for (const BenchRequest& r : *ds) EXPECT_EQ(r.prompt_len, o.input_len);
  }
}

TEST(BenchDataset, ShareGptFiltersAndCounts) {
  auto tok = gpt2();
  ASSERT_TRUE(tok);
  test::TempDir dir;
  nlohmann::json j = nlohmann::json::array();
  const std::vector<std::string> words = {"the", "cat", "sat", "on", "a", "mat", "and", "then"};
  auto& g = test::rng();
  auto sentence = [&](int n) {
    std::string s;
    for (int i = 0; i < n; ++i) {
      s += (i ? " " : "") + words[std::uniform_int_distribution<size_t>(0, words.size() - 1)(g)];
    }
    return s;
  };
  for (int i = 0; i < 30; ++i) {
    j.push_back({{"id", i},
                 {"conversations",
                  {{{"from", "human"}, {"value", sentence(3 + i)}},
                   {{"from", "gpt"}, {"value", sentence(2 + i % 5)}}}}});
  }
  j.push_back({{"conversations", {{{"from", "human"}, {"value", "one turn only"}}}}});
  j.push_back({{"conversations", {{{"value", "x"}}, {{"value", "hello there friend"}}}}});  // short
  const auto path = dir.path() / "sharegpt.json";
  std::ofstream(path) << j.dump();

  DatasetOptions o;
  o.kind = DatasetKind::kShareGpt;
  o.path = path;
  o.num_prompts = 25;
  o.seed = g();
  auto ds = make_dataset(o, 0, tok.get());
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  EXPECT_EQ(ds->size(), 25u);
  for (const auto& r : *ds) {
    EXPECT_GE(r.prompt_len, 2);
    EXPECT_GE(r.output_len, 2);
    EXPECT_EQ(int64_t(tok->encode(r.prompt_text).size()), r.prompt_len);
    EXPECT_NE(r.prompt_text, "one turn only");
    EXPECT_NE(r.prompt_text, "x");
  }
  // A fixed output length and a context limit.
  o.sharegpt_output_len = 9;
  o.context_len = 20;
  o.num_prompts = 100;  // more than there are: all usable pairs
  ds = make_dataset(o, 0, tok.get());
  ASSERT_TRUE(ds.ok());
  EXPECT_GT(ds->size(), 0u);
  EXPECT_LT(ds->size(), 31u);
  for (const auto& r : *ds) {
    EXPECT_EQ(r.output_len, 9);
    EXPECT_LE(r.prompt_len + r.output_len, 20);
  }
  // A missing file and a file that is not JSON fail with the file named.
  o.path = dir.path() / "missing.json";
  auto missing = make_dataset(o, 0, tok.get());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing.json"), std::string::npos);
  std::ofstream(dir.path() / "bad.json") << "[{\"conversations\": [";
  o.path = dir.path() / "bad.json";
  EXPECT_EQ(make_dataset(o, 0, tok.get()).status().code(), StatusCode::kDataLoss);
}

TEST(BenchDataset, GeneratedSharedPrefixGroupsShareTheirSystemPrompt) {
  auto& g = test::rng();
  DatasetOptions o;
  o.kind = DatasetKind::kGeneratedSharedPrefix;
  o.gsp_num_groups = std::uniform_int_distribution<int64_t>(2, 6)(g);
  o.gsp_prompts_per_group = std::uniform_int_distribution<int64_t>(1, 5)(g);
  o.gsp_system_prompt_len = std::uniform_int_distribution<int64_t>(10, 80)(g);
  o.gsp_question_len = std::uniform_int_distribution<int64_t>(1, 20)(g);
  o.gsp_output_len = std::uniform_int_distribution<int64_t>(1, 30)(g);
  o.num_prompts = 1;  // not used
  o.seed = g();
  const int64_t vocab = 5000;
  auto ds = make_dataset(o, vocab, nullptr);
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  ASSERT_EQ(int64_t(ds->size()), o.gsp_num_groups * o.gsp_prompts_per_group);
  std::map<std::vector<int32_t>, int64_t> groups;  // system prompt -> prompts
  for (const BenchRequest& r : *ds) {
    ASSERT_EQ(r.prompt_len, o.gsp_system_prompt_len + o.gsp_question_len);
    ASSERT_EQ(int64_t(r.prompt_ids.size()), r.prompt_len);
    EXPECT_EQ(r.output_len, o.gsp_output_len);
    for (int32_t t : r.prompt_ids) ASSERT_TRUE(t >= 0 && t < vocab);
    ++groups[{r.prompt_ids.begin(), r.prompt_ids.begin() + o.gsp_system_prompt_len}];
  }
  ASSERT_EQ(int64_t(groups.size()), o.gsp_num_groups);
  for (const auto& [sys, n] : groups) EXPECT_EQ(n, o.gsp_prompts_per_group);
  auto again = make_dataset(o, vocab, nullptr);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < ds->size(); ++i) EXPECT_EQ((*again)[i].prompt_ids, (*ds)[i].prompt_ids);

  // As text (SGLang's): each prompt is its system prompt's text, a blank line and its
  // question's; the length counted is that text tokenized. A group's prompts share the text up
  // to the blank line.
  auto tok = gpt2();
  ASSERT_TRUE(tok);
  auto text = make_dataset(o, 0, tok.get());
  ASSERT_TRUE(text.ok()) << text.status().message();
  std::map<std::string, int64_t> text_groups;
  for (const BenchRequest& r : *text) {
    const size_t blank = r.prompt_text.find("\n\n");
    ASSERT_NE(blank, std::string::npos) << r.prompt_text;
    EXPECT_EQ(r.prompt_ids, tok->encode(r.prompt_text, /*add_special=*/true));
    EXPECT_EQ(r.prompt_len, int64_t(r.prompt_ids.size()));
    EXPECT_EQ(r.output_len, o.gsp_output_len);
    ++text_groups[r.prompt_text.substr(0, blank)];
  }
  EXPECT_LE(int64_t(text_groups.size()), o.gsp_num_groups);
  // --tokenize-prompt: the same parts as ids, the blank line's ids between them.
  o.tokenize_prompt = true;
  auto ids = make_dataset(o, 0, tok.get());
  ASSERT_TRUE(ids.ok()) << ids.status().message();
  const int64_t sep = int64_t(tok->encode("\n\n").size());
  for (const BenchRequest& r : *ids) {
    EXPECT_EQ(r.prompt_len, o.gsp_system_prompt_len + sep + o.gsp_question_len);
  }
  o.tokenize_prompt = false;
  // --gsp-range-ratio: every length uniform in [len * ratio, len].
  o.gsp_range_ratio = 0.5;
  o.gsp_prompts_per_group = 8;
  auto ranged = make_dataset(o, vocab, nullptr);
  ASSERT_TRUE(ranged.ok()) << ranged.status().message();
  std::set<int64_t> outs;
  for (const BenchRequest& r : *ranged) {
    EXPECT_GE(r.output_len, std::max<int64_t>(1, int64_t(double(o.gsp_output_len) * 0.5)));
    EXPECT_LE(r.output_len, o.gsp_output_len);
    EXPECT_LE(r.prompt_len, o.gsp_system_prompt_len + o.gsp_question_len);
    EXPECT_GE(r.prompt_len, int64_t(double(o.gsp_system_prompt_len) * 0.5) +
                                std::max<int64_t>(1, int64_t(double(o.gsp_question_len) * 0.5)));
    outs.insert(r.output_len);
  }
  if (o.gsp_output_len >= 8) EXPECT_GT(outs.size(), 1u);
  o.gsp_range_ratio = 1.5;
  EXPECT_EQ(make_dataset(o, vocab, nullptr).status().code(), StatusCode::kInvalidArgument);
  o.gsp_range_ratio = 1.0;
  o.gsp_num_groups = 0;
  EXPECT_EQ(make_dataset(o, vocab, nullptr).status().code(), StatusCode::kInvalidArgument);
}

TEST(BenchDataset, MultiTurnResendsTheHistoryTurnByTurn) {
  auto& g = test::rng();
  DatasetOptions o;
  o.kind = DatasetKind::kMultiTurn;
  o.num_prompts = std::uniform_int_distribution<int64_t>(1, 5)(g);
  o.mt_turns = std::uniform_int_distribution<int64_t>(1, 4)(g);
  o.input_len = std::uniform_int_distribution<int64_t>(5, 40)(g);
  o.output_len = std::uniform_int_distribution<int64_t>(1, 20)(g);
  o.mt_user_len = std::uniform_int_distribution<int64_t>(1, 20)(g);
  o.seed = g();
  auto ds = make_dataset(o, 1000, nullptr);
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  ASSERT_EQ(int64_t(ds->size()), o.num_prompts * o.mt_turns);
  for (int64_t t = 0; t < o.mt_turns; ++t) {
    for (int64_t c = 0; c < o.num_prompts; ++c) {
      const BenchRequest& r = (*ds)[size_t(t * o.num_prompts + c)];
      EXPECT_EQ(r.prompt_len, o.input_len + t * (o.output_len + o.mt_user_len));
      EXPECT_EQ(r.output_len, o.output_len);
      if (t == 0) continue;
      // The previous turn's whole prompt comes first.
      const BenchRequest& prev = (*ds)[size_t((t - 1) * o.num_prompts + c)];
      ASSERT_GT(r.prompt_ids.size(), prev.prompt_ids.size());
      EXPECT_TRUE(std::equal(prev.prompt_ids.begin(), prev.prompt_ids.end(), r.prompt_ids.begin()));
    }
  }
}

TEST(BenchDataset, BadOptionsAreRefused) {
  DatasetOptions o;
  o.num_prompts = 0;
  EXPECT_EQ(make_dataset(o, 100, nullptr).status().code(), StatusCode::kInvalidArgument);
  o.num_prompts = 3;
  o.range_ratio = 1.5;
  EXPECT_EQ(make_dataset(o, 100, nullptr).status().code(), StatusCode::kInvalidArgument);
  o.range_ratio = 0.5;
  EXPECT_FALSE(make_dataset(o, 0, nullptr).ok());  // no vocabulary
  EXPECT_EQ(parse_dataset_kind("random-ids"), DatasetKind::kRandomIds);
  EXPECT_FALSE(parse_dataset_kind("nope").has_value());
}

}  // namespace
}  // namespace pp::bench
