// Tests of the CPU paged attention against a float64 reference: several sequences of different
// lengths, GQA ratios 1, 3 and 4, shuffled non-contiguous block tables, chunked prefill (query
// tokens in the middle of a sequence) and decode; and bitwise invariance to batching, chunking
// and the thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "pp/kernels/cpu.h"
#include "test-util.h"

namespace pp::kernels::cpu {
namespace {

// A paged cache holding the full K/V of a few sequences, written through kv_write.
struct Cache {
  int64_t n_head_kv, head_dim, block_size, max_blocks;
  std::vector<int64_t> len;              // tokens per sequence
  std::vector<int32_t> tables;           // [n_seq, max_blocks], shuffled blocks
  std::vector<std::vector<float>> k, v;  // per sequence [len, n_head_kv, head_dim]
  std::vector<float> kpool, vpool;
  PagedKv kv;

  Cache(std::vector<int64_t> lens, int64_t n_head_kv_, int64_t head_dim_, int64_t block_size_)
      : n_head_kv(n_head_kv_), head_dim(head_dim_), block_size(block_size_), len(std::move(lens)) {
    const int64_t n_seq = int64_t(len.size());
    max_blocks = 0;
    int64_t total_blocks = 0;
    for (int64_t l : len) {
      max_blocks = std::max(max_blocks, (l + block_size - 1) / block_size);
      total_blocks += (l + block_size - 1) / block_size;
    }
    const int64_t n_blocks = total_blocks + 3;  // a few never used
    std::vector<int32_t> perm(static_cast<size_t>(n_blocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), test::rng());
    tables.assign(size_t(n_seq * max_blocks), -1);
    size_t next = 0;
    for (int64_t s = 0; s < n_seq; ++s) {
      for (int64_t b = 0; b < (len[size_t(s)] + block_size - 1) / block_size; ++b) {
        tables[size_t(s * max_blocks + b)] = perm[next++];
      }
    }
    const int64_t row = n_head_kv * head_dim;
    kpool = test::random_floats(size_t(n_blocks * block_size * row));  // garbage in unused slots
    vpool = test::random_floats(size_t(n_blocks * block_size * row));
    kv = {kpool.data(), vpool.data(), n_blocks, block_size, n_head_kv, head_dim};
    for (int64_t s = 0; s < n_seq; ++s) {
      const int64_t l = len[size_t(s)];
      k.push_back(test::random_floats(size_t(l * row), -2.0f, 2.0f));
      v.push_back(test::random_floats(size_t(l * row)));
      std::vector<int64_t> slots(static_cast<size_t>(l));
      for (int64_t p = 0; p < l; ++p) {
        slots[size_t(p)] =
            tables[size_t(s * max_blocks + p / block_size)] * block_size + p % block_size;
      }
      kv_write({kv, k.back().data(), v.back().data(), slots.data(), l});
    }
  }
};

// One query token: sequence index, position.
struct Query {
  int64_t seq, pos;
};

// Runs attention for queries grouped by sequence (queries of a sequence must be contiguous and
// listed in the order of `seqs`). Returns [n_tokens, n_head, head_dim].
std::vector<float> run(const Cache& c, const std::vector<float>& q, int64_t n_head,
                       const std::vector<Query>& queries) {
  std::vector<int32_t> seq_start{0}, q_pos, tables;
  for (size_t t = 0; t < queries.size(); ++t) {
    if (t > 0 && queries[t].seq != queries[t - 1].seq) seq_start.push_back(int32_t(t));
    if (t == 0 || queries[t].seq != queries[t - 1].seq) {
      const auto* row = &c.tables[size_t(queries[t].seq * c.max_blocks)];
      tables.insert(tables.end(), row, row + c.max_blocks);
    }
    q_pos.push_back(int32_t(queries[t].pos));
  }
  seq_start.push_back(int32_t(queries.size()));
  std::vector<float> out(q.size(), std::nanf(""));
  AttentionParams p{.q = q.data(),
                    .out = out.data(),
                    .kv = c.kv,
                    .seq_start = seq_start.data(),
                    .q_pos = q_pos.data(),
                    .block_tables = tables.data(),
                    .n_tokens = int64_t(queries.size()),
                    .n_seq = int64_t(seq_start.size() - 1),
                    .n_head = n_head,
                    .max_blocks = c.max_blocks,
                    .scale = 1.0f / std::sqrt(float(c.head_dim))};
  attention(p);
  return out;
}

std::vector<double> reference(const Cache& c, const std::vector<float>& q, int64_t n_head,
                              const std::vector<Query>& queries) {
  const int64_t d = c.head_dim, group = n_head / c.n_head_kv;
  const double scale = 1.0f / std::sqrt(float(d));
  std::vector<double> out(q.size());
  for (size_t t = 0; t < queries.size(); ++t) {
    const auto& k = c.k[size_t(queries[t].seq)];
    const auto& v = c.v[size_t(queries[t].seq)];
    for (int64_t h = 0; h < n_head; ++h) {
      const int64_t kvh = h / group;
      const float* qv = &q[size_t((int64_t(t) * n_head + h) * d)];
      std::vector<double> s(static_cast<size_t>(queries[t].pos + 1));
      for (int64_t p = 0; p <= queries[t].pos; ++p) {
        double dot = 0;
        for (int64_t i = 0; i < d; ++i)
          dot += double(qv[i]) * k[size_t((p * c.n_head_kv + kvh) * d + i)];
        s[size_t(p)] = dot * scale;
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t i = 0; i < d; ++i) {
        double acc = 0;
        for (int64_t p = 0; p <= queries[t].pos; ++p) {
          acc += s[size_t(p)] * v[size_t((p * c.n_head_kv + kvh) * d + i)];
        }
        out[size_t((int64_t(t) * n_head + h) * d + i)] = acc / sum;
      }
    }
  }
  return out;
}

// Sequence 0: chunked prefill (positions in the middle), 1: decode, 2: prefill from 0,
// 3: decode at position 0 (a one-token sequence).
std::vector<Query> mixed_queries(const Cache& c) {
  std::vector<Query> qs;
  for (int64_t p = c.len[0] / 3; p < c.len[0] * 2 / 3; ++p) qs.push_back({0, p});
  qs.push_back({1, c.len[1] - 1});
  for (int64_t p = 0; p < c.len[2]; ++p) qs.push_back({2, p});
  qs.push_back({3, 0});
  return qs;
}

TEST(CpuAttention, MatchesFloat64Reference) {
  for (int64_t ratio : {1, 3, 4}) {
    for (int64_t head_dim : {64, 20}) {
      for (int64_t block_size : {16, 5}) {
        SCOPED_TRACE(testing::Message() << "gqa=" << ratio << " head_dim=" << head_dim
                                        << " block_size=" << block_size);
        const int64_t n_head_kv = 2, n_head = n_head_kv * ratio;
        Cache c({67, 41, 23, 1}, n_head_kv, head_dim, block_size);
        const auto qs = mixed_queries(c);
        const auto q = test::random_floats(qs.size() * size_t(n_head * head_dim), -2.0f, 2.0f);
        const auto out = run(c, q, n_head, qs);
        const auto ref = reference(c, q, n_head, qs);
        std::vector<float> reff(ref.begin(), ref.end());
        const int64_t bad = test::first_mismatch(out, reff, 2e-6, 2e-5);
        EXPECT_EQ(bad, -1) << "got " << out[size_t(std::max<int64_t>(bad, 0))] << " want "
                           << ref[size_t(std::max<int64_t>(bad, 0))];
      }
    }
  }
}

TEST(CpuAttention, InvariantToBatchingChunkingAndThreadsBitwise) {
  const int64_t n_head_kv = 2, n_head = 6, head_dim = 64;
  Cache c({90, 41, 23, 1}, n_head_kv, head_dim, 16);
  const auto qs = mixed_queries(c);
  const int64_t row = n_head * head_dim;
  const auto q = test::random_floats(qs.size() * size_t(row), -2.0f, 2.0f);
  set_num_threads(2);
  const auto batched = run(c, q, n_head, qs);
  // Every token alone (one sequence, one token: the most extreme chunking), on one thread.
  set_num_threads(1);
  for (size_t t = 0; t < qs.size(); ++t) {
    std::vector<float> qt(q.begin() + int64_t(t) * row, q.begin() + int64_t(t + 1) * row);
    const auto one = run(c, qt, n_head, {qs[t]});
    ASSERT_EQ(0, std::memcmp(one.data(), batched.data() + int64_t(t) * row, size_t(row) * 4))
        << "token " << t << " seq " << qs[t].seq << " pos " << qs[t].pos;
  }
  // Sequence 0's chunk split in two calls of uneven size, with 3 threads.
  set_num_threads(3);
  const int64_t n0 = std::count_if(qs.begin(), qs.end(), [](const Query& x) { return x.seq == 0; });
  const int64_t cut = n0 / 3;
  std::vector<Query> a(qs.begin(), qs.begin() + cut), b(qs.begin() + cut, qs.begin() + n0);
  const auto oa = run(c, std::vector<float>(q.begin(), q.begin() + cut * row), n_head, a);
  const auto ob =
      run(c, std::vector<float>(q.begin() + cut * row, q.begin() + n0 * row), n_head, b);
  EXPECT_EQ(0, std::memcmp(oa.data(), batched.data(), oa.size() * 4));
  EXPECT_EQ(0, std::memcmp(ob.data(), batched.data() + cut * row, ob.size() * 4));
  set_num_threads(0);
}

}  // namespace
}  // namespace pp::kernels::cpu
