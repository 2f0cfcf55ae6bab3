// Random control-plane messages for the wire and channel tests: every field drawn afresh (any
// integer, strings of arbitrary bytes including NUL, vectors of random length, finite floats or,
// when asked, any float bit pattern including NaNs).
#pragma once

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "pp/transport/messages.h"

namespace pp::test {

class RandomMessages {
 public:
  explicit RandomMessages(uint64_t seed, bool any_float_bits = false)
      : g_(seed), any_float_bits_(any_float_bits) {}

  transport::Message make(size_t type_index) {
    using namespace transport;
    switch (type_index) {
      case 0:
        return Hello{i32(), i32(), str(), i32(), str(), str(), i64(), i64(), str(), str()};
      case 1:
        return Assign{i32(), i32(), vec_str(4), i32(),           str(),           i64(),
                      i64(), str(), i64(),      i32(),           str(140),        str(140),
                      i32(), i32(), f32(),      bool(u64() & 1), bool(u64() & 1), u64(),
                      str(), str(), vec_str(4), str(140)};
      case 2:
        return Loaded{i32(), i64(), i64(), f64()};
      case 3:
        return AllocateKv{i64(), i64()};
      case 4:
        return Ready{i32()};
      case 5:
        return plan(len(12));
      case 6: {
        Tokens t{u64(), i32(), {}};
        const size_t n = len(12);
        for (size_t i = 0; i < n; ++i) {
          t.tokens.push_back(SampledToken{u64(), i32(), f32(), vec_i32(6), vec_f32(6)});
        }
        return t;
      }
      case 7:
        return StageTiming{i32(), u64(), i32(), i64(), i64(), i64(), i64(), i32()};
      case 8:
        return Heartbeat{i32(), i64()};
      case 9:
        return StageError{i32(), u64(), str(200)};
      default:
        return Shutdown{str()};
    }
  }

  transport::Plan plan(size_t n_entries) {
    using namespace transport;
    Plan p{u64(), i32(), {}, {}};
    for (size_t i = 0; i < n_entries; ++i) p.entries.push_back(entry());
    const size_t n = len(8);
    for (size_t i = 0; i < n; ++i) p.released.push_back(u64());
    return p;
  }

  transport::PlanEntry entry() {
    using namespace transport;
    PlanEntry e;
    e.request_id = u64();
    e.pos_begin = i32();
    e.n_new = i32();
    e.new_blocks = vec_i32(8);
    e.reset_table = coin();
    e.sample = coin();
    e.sample_step = u64();
    e.sampling = WireSampling{f32(), f32(), f32(), i32(), f32(), f32(), f32(), u64(), i32()};
    e.sampling.bias_ids = vec_i32(6);
    for (size_t i = 0; i < e.sampling.bias_ids.size(); ++i) e.sampling.bias_values.push_back(f32());
    e.token_ids = vec_i32(40);
    e.penalty_prompt_ids = vec_i32(20);
    e.penalty_output_ids = vec_i32(20);
    const size_t n_mask = coin() ? len(16) : 0;
    for (size_t i = 0; i < n_mask; ++i) e.allowed_tokens.push_back(static_cast<uint32_t>(g_()));
    return e;
  }

  std::mt19937_64& gen() { return g_; }
  size_t len(size_t max) { return std::uniform_int_distribution<size_t>(0, max)(g_); }
  bool coin() { return g_() & 1; }
  int32_t i32() { return static_cast<int32_t>(g_()); }
  int64_t i64() { return static_cast<int64_t>(g_()); }
  uint64_t u64() { return g_(); }
  float f32() {
    for (;;) {
      const uint32_t bits = static_cast<uint32_t>(g_());
      float f;
      std::memcpy(&f, &bits, 4);
      if (any_float_bits_ || f == f) return f;
    }
  }
  double f64() {
    for (;;) {
      const uint64_t bits = g_();
      double d;
      std::memcpy(&d, &bits, 8);
      if (any_float_bits_ || d == d) return d;
    }
  }
  std::string str(size_t max = 40) {
    std::string s(len(max), '\0');
    for (auto& c : s) c = static_cast<char>(g_());
    return s;
  }
  std::vector<std::string> vec_str(size_t max) {
    std::vector<std::string> v(len(max));
    for (auto& x : v) x = str();
    return v;
  }
  std::vector<int32_t> vec_i32(size_t max) {
    std::vector<int32_t> v(len(max));
    for (auto& x : v) x = i32();
    return v;
  }
  std::vector<float> vec_f32(size_t max) {
    std::vector<float> v(len(max));
    for (auto& x : v) x = f32();
    return v;
  }

 private:
  std::mt19937_64 g_;
  bool any_float_bits_;
};

}  // namespace pp::test
