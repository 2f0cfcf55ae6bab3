// BlockManager against a reference model (an ordered set of free ids): random allocations and
// frees must hand out the lowest free ids, be all-or-nothing, and keep free + held == n_blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "pp/pipeline/block-manager.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

TEST(BlockManager, BlocksFor) {
  BlockManager bm(10, 16);
  EXPECT_EQ(bm.blocks_for(0), 0);
  EXPECT_EQ(bm.blocks_for(1), 1);
  EXPECT_EQ(bm.blocks_for(16), 1);
  EXPECT_EQ(bm.blocks_for(17), 2);
  EXPECT_EQ(bm.blocks_for(160), 10);
}

TEST(BlockManager, AllOrNothingLowestFirst) {
  BlockManager bm(8, 4);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(bm.allocate(3, &a));
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  ASSERT_TRUE(bm.allocate(4, &b));
  EXPECT_EQ(b, (std::vector<int32_t>{3, 4, 5, 6}));
  std::vector<int32_t> c{99};
  EXPECT_FALSE(bm.allocate(2, &c));  // only 1 free
  EXPECT_EQ(c, (std::vector<int32_t>{99}));
  EXPECT_EQ(bm.n_free(), 1);
  bm.free(std::vector<int32_t>{4, 1});
  EXPECT_EQ(bm.n_free(), 3);
  c.clear();
  ASSERT_TRUE(bm.allocate(3, &c));
  EXPECT_EQ(c, (std::vector<int32_t>{1, 4, 7}));
  EXPECT_DOUBLE_EQ(bm.usage(), 1.0);
}

TEST(BlockManager, RandomAgainstReference) {
  std::mt19937_64& rng = test::rng();
  const int32_t n_blocks = int32_t(rng() % 200) + 1;
  BlockManager bm(n_blocks, 16);
  std::set<int32_t> free_ref;
  for (int32_t b = 0; b < n_blocks; ++b) free_ref.insert(b);
  std::vector<std::vector<int32_t>> held;
  for (int step = 0; step < 5000; ++step) {
    if (held.empty() || rng() % 2 == 0) {
      const int32_t n = int32_t(rng() % 12);
      std::vector<int32_t> got;
      const bool ok = bm.allocate(n, &got);
      ASSERT_EQ(ok, n <= int32_t(free_ref.size())) << "seed " << test::rng_seed();
      if (ok) {
        std::vector<int32_t> want(free_ref.begin(), std::next(free_ref.begin(), n));
        ASSERT_EQ(got, want);
        for (int32_t b : got) free_ref.erase(b);
        held.push_back(got);
      } else {
        ASSERT_TRUE(got.empty());
      }
    } else {
      const size_t i = rng() % held.size();
      bm.free(held[i]);
      for (int32_t b : held[i]) free_ref.insert(b);
      held.erase(held.begin() + std::ptrdiff_t(i));
    }
    ASSERT_EQ(bm.n_free(), int32_t(free_ref.size()));
    int32_t n_held = 0;
    for (const auto& h : held) {
      n_held += int32_t(h.size());
      for (int32_t b : h) ASSERT_TRUE(bm.is_held(b));
    }
    ASSERT_EQ(bm.n_free() + n_held, n_blocks);
    ASSERT_NEAR(bm.usage(), double(n_held) / n_blocks, 1e-12);
  }
}

TEST(BlockManagerDeathTest, DoubleFree) {
  BlockManager bm(4, 4);
  std::vector<int32_t> a;
  ASSERT_TRUE(bm.allocate(2, &a));
  bm.free(a);
  EXPECT_DEATH(bm.free(a), "not held");
}

}  // namespace
}  // namespace pp::pipeline
