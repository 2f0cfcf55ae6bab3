// StopChecker on strings: random texts over a small alphabet (so stop strings and their
// prefixes occur often), cut into random pieces, against a reference that truncates the whole
// text at the stop string that completes first. Emitted text must only ever grow towards that
// reference.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "pp/pipeline/stop-checker.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

std::string random_string(std::mt19937_64& rng, size_t n, const std::string& alphabet) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(alphabet[rng() % alphabet.size()]);
  return s;
}

TEST(StopChecker, SpansPieces) {
  StopChecker sc({"END"});
  std::string out;
  EXPECT_EQ(sc.push("the E", &out), -1);
  EXPECT_EQ(out, "the ");  // "E" could start "END"
  EXPECT_EQ(sc.push("N", &out), -1);
  EXPECT_EQ(out, "the ");
  EXPECT_EQ(sc.push("D and more", &out), 0);
  EXPECT_EQ(out, "the ");
  EXPECT_TRUE(sc.matched());
}

TEST(StopChecker, FalseStartIsReleased) {
  StopChecker sc({"abc", "xyz"});
  std::string out;
  EXPECT_EQ(sc.push("1ab", &out), -1);
  EXPECT_EQ(out, "1");
  EXPECT_EQ(sc.push("x", &out), -1);
  EXPECT_EQ(out, "1ab");
  sc.flush(&out);
  EXPECT_EQ(out, "1abx");
}

TEST(StopChecker, FirstToCompleteWins) {
  for (const char* piece : {"abcdef", "abc"}) {
    StopChecker sc({"bcde", "cd"});
    std::string out;
    int32_t m = sc.push(piece, &out);
    if (m < 0) m = sc.push("def", &out);
    EXPECT_EQ(m, 1);  // "cd" completes before "bcde", however the text is cut
    EXPECT_EQ(out, "ab");
  }
  StopChecker sc({"bc", "abc"});
  std::string out;
  EXPECT_EQ(sc.push("xabc", &out), 1);  // both end together: the longer one
  EXPECT_EQ(out, "x");
}

TEST(StopChecker, NoStopsPassesThrough) {
  StopChecker sc;
  std::string out;
  EXPECT_EQ(sc.push("anything", &out), -1);
  EXPECT_EQ(out, "anything");
  EXPECT_EQ(sc.n_held(), 0u);
}

TEST(StopChecker, RandomAgainstReference) {
  std::mt19937_64& rng = test::rng();
  const std::string alphabet = "ab c\xc3\xa9";  // includes a 2-byte character
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::string> stops;
    const size_t n_stops = 1 + rng() % 3;
    size_t max_len = 0;
    for (size_t i = 0; i < n_stops; ++i) {
      stops.push_back(random_string(rng, 1 + rng() % 5, alphabet));
      max_len = std::max(max_len, stops.back().size());
    }
    const std::string text = random_string(rng, rng() % 60, alphabet);
    // Reference: the match that ends first; on a tie the one that starts first, then the first
    // listed.
    size_t best = std::string::npos, best_end = std::string::npos;
    int32_t best_i = -1;
    for (size_t i = 0; i < stops.size(); ++i) {
      const size_t at = text.find(stops[i]);
      if (at == std::string::npos) continue;
      const size_t end = at + stops[i].size();
      if (best_i < 0 || end < best_end || (end == best_end && at < best)) {
        best = at;
        best_end = end;
        best_i = int32_t(i);
      }
    }
    const std::string want = best_i >= 0 ? text.substr(0, best) : text;

    StopChecker sc(stops);
    std::string out;
    int32_t matched = -1;
    for (size_t pos = 0; pos < text.size() && matched < 0;) {
      const size_t n = std::min(text.size() - pos, size_t(1 + rng() % 4));
      matched = sc.push(std::string_view(text).substr(pos, n), &out);
      pos += n;
      ASSERT_EQ(want.compare(0, out.size(), out), 0)
          << "emitted text is not a prefix of the result; seed " << test::rng_seed();
      ASSERT_LT(sc.n_held(), max_len);
    }
    if (matched < 0) sc.flush(&out);
    ASSERT_EQ(matched, best_i) << "text '" << text << "' seed " << test::rng_seed();
    ASSERT_EQ(out, want) << "text '" << text << "' seed " << test::rng_seed();
  }
}

}  // namespace
}  // namespace pp::pipeline
