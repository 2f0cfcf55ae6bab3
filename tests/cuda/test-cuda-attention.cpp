// GPU test (label gpu): the CUDA paged attention against cpu::attention on fresh random q, K
// and V, with random non-contiguous block tables: decode batches (one or a few query tokens per
// sequence, contexts from 1 key to 9000 keys, so flash-decoding splits of 512 keys and their
// merge), prefill from scratch, chunked prefill in the middle of a sequence next to decode
// tokens, GQA ratios 1/2/4/8, head_dim 64/128/256, odd block sizes. Cache slots that hold no
// key of any sequence are NaN, so reading one shows. Also: a sequence's output is bit-for-bit
// the same whether it runs alone (decode launch, split) or in a batch with a prefill chunk
// (prefill launch, unsplit), and whatever the declared max_kv_len.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "cuda-test-util.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/attention.h"
#include "test-util.h"

namespace {

using pp::test::DeviceBuffer;

struct Seq {
  int64_t kv_len;  // keys in the cache after this step
  int64_t q_len;   // query tokens this step: positions kv_len - q_len .. kv_len - 1
};

// A KV pool holding the sequences' keys, their block tables and their queries.
class Pool {
 public:
  Pool(int64_t n_head, int64_t n_kv, int64_t dim, int64_t block_size, std::vector<Seq> seqs)
      : n_head_(n_head), n_kv_(n_kv), dim_(dim), bs_(block_size), seqs_(std::move(seqs)) {
    int64_t used = 0;
    max_blocks_ = 1;
    for (const Seq& s : seqs_) {
      const int64_t nb = (s.kv_len + bs_ - 1) / bs_;
      used += nb;
      max_blocks_ = std::max(max_blocks_, nb);
    }
    n_blocks_ = used + 5;  // some blocks belong to nobody
    std::vector<int32_t> ids(static_cast<size_t>(n_blocks_));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), pp::test::rng());
    const int64_t row = n_kv_ * dim_;
    k_.assign(size_t(n_blocks_ * bs_ * row), NAN);
    v_.assign(k_.size(), NAN);
    size_t next = 0;
    for (const Seq& s : seqs_) {
      std::vector<int32_t> table(size_t(max_blocks_), 0);
      for (int64_t b = 0; b < (s.kv_len + bs_ - 1) / bs_; ++b) table[size_t(b)] = ids[next++];
      for (int64_t pos = 0; pos < s.kv_len; ++pos) {
        const int64_t slot = table[size_t(pos / bs_)] * bs_ + pos % bs_;
        auto kr = pp::test::round_bf16(pp::test::random_floats(size_t(row), -1, 1));
        auto vr = pp::test::round_bf16(pp::test::random_floats(size_t(row), -1, 1));
        std::copy(kr.begin(), kr.end(), k_.begin() + slot * row);
        std::copy(vr.begin(), vr.end(), v_.begin() + slot * row);
      }
      tables_.push_back(table);
      q_.push_back(
          pp::test::round_bf16(pp::test::random_floats(size_t(s.q_len * n_head_ * dim_), -2, 2)));
    }
    dk_ = pp::test::upload_bf16(k_);
    dv_ = pp::test::upload_bf16(v_);
  }

  struct Out {
    std::vector<std::vector<float>> gpu, cpu;     // per chosen sequence [q_len, n_head, dim]
    std::vector<std::vector<uint16_t>> gpu_bits;  // the raw bf16 outputs
  };

  // Runs the chosen sequences as one batch on both backends.
  Out run(const std::vector<int>& chosen, int64_t max_kv_len_extra = 0) const {
    std::vector<int32_t> seq_start{0}, q_pos, tables;
    std::vector<float> q;
    int64_t max_q = 0, max_kv = 0;
    for (int i : chosen) {
      const Seq& s = seqs_[size_t(i)];
      for (int64_t j = 0; j < s.q_len; ++j) q_pos.push_back(int32_t(s.kv_len - s.q_len + j));
      seq_start.push_back(seq_start.back() + int32_t(s.q_len));
      tables.insert(tables.end(), tables_[size_t(i)].begin(), tables_[size_t(i)].end());
      q.insert(q.end(), q_[size_t(i)].begin(), q_[size_t(i)].end());
      max_q = std::max(max_q, s.q_len);
      max_kv = std::max(max_kv, s.kv_len);
    }
    const int64_t n_tokens = seq_start.back(), n_seq = int64_t(chosen.size());
    const float scale = 1.0f / std::sqrt(float(dim_));

    Out out;
    std::vector<float> ref(q.size());
    pp::kernels::cpu::AttentionParams c;
    c.q = q.data();
    c.out = ref.data();
    c.kv = {
        const_cast<float*>(k_.data()), const_cast<float*>(v_.data()), n_blocks_, bs_, n_kv_, dim_};
    c.seq_start = seq_start.data();
    c.q_pos = q_pos.data();
    c.block_tables = tables.data();
    c.n_tokens = n_tokens;
    c.n_seq = n_seq;
    c.n_head = n_head_;
    c.max_blocks = max_blocks_;
    c.scale = scale;
    pp::kernels::cpu::attention(c);

    auto dq = pp::test::upload_bf16(q);
    DeviceBuffer<__nv_bfloat16> dout(q.size());
    dout.fill_bytes(0xff);
    DeviceBuffer<int32_t> d_start(seq_start), d_pos(q_pos), d_tables(tables);
    pp::kernels::cuda::AttentionParams p;
    p.q = dq.get();
    p.out = dout.get();
    p.kv = {dk_.get(), dv_.get(), n_blocks_, bs_, n_kv_, dim_};
    p.seq_start = d_start.get();
    p.q_pos = d_pos.get();
    p.block_tables = d_tables.get();
    p.n_tokens = n_tokens;
    p.n_seq = n_seq;
    p.n_head = n_head_;
    p.max_blocks = max_blocks_;
    p.scale = scale;
    p.max_q_len = max_q;
    p.max_kv_len = max_kv + max_kv_len_extra;
    const size_t ws = pp::kernels::cuda::attention_workspace_bytes(p);
    DeviceBuffer<float> d_ws(ws / sizeof(float) + 1);
    p.workspace = d_ws.get();
    p.workspace_bytes = ws;
    EXPECT_EQ(pp::kernels::cuda::attention(p, nullptr), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto raw = dout.download();
    const auto got = pp::test::to_f32(raw);
    const int64_t per_token = n_head_ * dim_;
    for (size_t j = 0; j < chosen.size(); ++j) {
      const auto b = size_t(seq_start[j] * per_token), e = size_t(seq_start[j + 1] * per_token);
      out.gpu.emplace_back(got.begin() + b, got.begin() + e);
      out.cpu.emplace_back(ref.begin() + b, ref.begin() + e);
      std::vector<uint16_t> bits(e - b);
      std::memcpy(bits.data(), raw.data() + b, bits.size() * 2);
      out.gpu_bits.push_back(std::move(bits));
    }
    return out;
  }

  void check(const std::vector<int>& chosen, const std::string& what) const {
    const Out o = run(chosen);
    for (size_t j = 0; j < chosen.size(); ++j) {
      const Seq& s = seqs_[size_t(chosen[j])];
      EXPECT_EQ(pp::test::first_mismatch(o.gpu[j], o.cpu[j], 2e-3, 1e-2), -1)
          << what << ": sequence " << chosen[j] << " kv_len=" << s.kv_len << " q_len=" << s.q_len
          << " heads=" << n_head_ << "/" << n_kv_ << " head_dim=" << dim_ << " block=" << bs_;
    }
  }

  int size() const { return int(seqs_.size()); }

 private:
  int64_t n_head_, n_kv_, dim_, bs_;
  std::vector<Seq> seqs_;
  int64_t n_blocks_ = 0, max_blocks_ = 0;
  std::vector<float> k_, v_;
  std::vector<std::vector<int32_t>> tables_;
  std::vector<std::vector<float>> q_;
  DeviceBuffer<__nv_bfloat16> dk_, dv_;
};

std::vector<int> all_of(const Pool& p) {
  std::vector<int> v(static_cast<size_t>(p.size()));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST(CudaAttention, DecodeMatchesCpu) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  pp::kernels::cpu::set_num_threads(0);
  const std::vector<Seq> seqs = {{1, 1},    {17, 1},   {512, 1},  {513, 1},
                                 {1000, 1}, {4100, 1}, {9000, 1}, {2049, 1}};
  for (auto [n_head, n_kv] : {std::pair{8, 8}, std::pair{32, 8}, std::pair{32, 4}}) {
    Pool pool(n_head, n_kv, 128, 16, seqs);
    pool.check(all_of(pool), "decode");
  }
  Pool d64(8, 4, 64, 16, {{700, 1}, {33, 1}, {1500, 1}});
  d64.check(all_of(d64), "decode d64");
  Pool d256(8, 4, 256, 16, {{700, 1}, {33, 1}, {1500, 1}});
  d256.check(all_of(d256), "decode d256");
  // Several query tokens per sequence still on the decode launch (rows = q_len * group <= 16).
  Pool multi(32, 4, 128, 16, {{900, 2}, {40, 2}, {3000, 1}});
  multi.check(all_of(multi), "decode 2 tokens");
  Pool odd_block(16, 4, 128, 7, {{600, 3}, {1234, 1}, {5, 2}});
  odd_block.check(all_of(odd_block), "decode odd block");
}

TEST(CudaAttention, PrefillMatchesCpu) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  pp::kernels::cpu::set_num_threads(0);
  // From scratch, a chunk in the middle (earlier chunks cached), and decode tokens beside them.
  Pool mixed(16, 4, 128, 16, {{700, 700}, {1800, 300}, {2000, 1}, {77, 5}, {5000, 200}});
  mixed.check(all_of(mixed), "prefill mixed");
  Pool g1(8, 8, 128, 32, {{257, 257}, {1100, 63}});
  g1.check(all_of(g1), "prefill gqa 1");
  Pool g8(32, 4, 128, 16, {{333, 120}, {64, 64}});
  g8.check(all_of(g8), "prefill gqa 8");
  Pool d64(8, 4, 64, 7, {{500, 111}, {45, 45}});
  d64.check(all_of(d64), "prefill d64");
  Pool d256(8, 2, 256, 16, {{600, 90}, {130, 130}});
  d256.check(all_of(d256), "prefill d256");
  Pool longp(8, 2, 128, 16, {{2048, 2048}});
  longp.check(all_of(longp), "prefill 2048");
}

TEST(CudaAttention, BatchInvariant) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  // Sequences 0 and 1 decode; sequence 2 is a prefill chunk that switches the launch shape.
  Pool pool(32, 8, 128, 16, {{5000, 1}, {300, 1}, {900, 100}});
  const auto alone = pool.run({0, 1});
  const auto wider = pool.run({0, 1}, 20000);  // more (empty) decode splits
  const auto mixed = pool.run({0, 1, 2});
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(alone.gpu_bits[size_t(s)], wider.gpu_bits[size_t(s)]) << "sequence " << s;
    EXPECT_EQ(alone.gpu_bits[size_t(s)], mixed.gpu_bits[size_t(s)]) << "sequence " << s;
    EXPECT_EQ(pp::test::first_mismatch(alone.gpu[size_t(s)], alone.cpu[size_t(s)], 2e-3, 1e-2), -1);
  }
}

}  // namespace
