// GGUF reader tests: round trips of files written here with random metadata and F32/F16 tensors;
// a corpus of corrupt and lying files, each of which must be a clean error (never a crash or an
// out-of-bounds read: every corrupt image is parsed from a heap copy of exactly its length, so
// ASan sees any overrun); the Hugging Face view (names, shapes, llama.cpp's q/k permutation
// undone); and the default model against values computed by gguf-py
// (scripts/make-gguf-fixtures.py -> tests/fixtures/gguf/smollm2-expected.json).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <variant>

#include "f16-reference.h"
#include "gguf-builder.h"
#include "pp/model/gguf.h"
#include "pp/model/weights.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::DType;
using model::GgufFile;
using model::GgufValue;

void write_bytes(const std::filesystem::path& p, const Bytes& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

Bytes f32_bytes(std::span<const float> v) {
  Bytes b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// f16 bytes of `v`, and in `rounded` the values they hold (the hardware's own conversion).
Bytes f16_bytes(std::span<const float> v, std::vector<float>* rounded) {
  Bytes b;
  rounded->clear();
  for (float x : v) {
    const uint16_t h = f16_reference_bits(x);
    put(b, h);
    rounded->push_back(f16_reference_value(h));
  }
  return b;
}

// A parse of a heap copy of `b` of exactly its size (so ASan sees any overrun); the copy lives as
// long as this object, which reads like the Result it holds.
struct Parsed {
  std::unique_ptr<uint8_t[]> copy;
  Result<std::unique_ptr<GgufFile>> result = Status(StatusCode::kInternal, "unset");

  bool ok() const { return result.ok(); }
  const Status& status() const { return result.status(); }
  std::unique_ptr<GgufFile>& operator*() { return *result; }
};

Parsed parse_copy(const Bytes& b, const std::string& name = "x.gguf") {
  Parsed p;
  p.copy = std::make_unique<uint8_t[]>(std::max<size_t>(b.size(), 1));
  if (!b.empty()) std::memcpy(p.copy.get(), b.data(), b.size());
  p.result = GgufFile::parse({p.copy.get(), b.size()}, name);
  return p;
}

// A small valid file: a few keys (string, array) and two F32 tensors.
GgufBuilder small_file() {
  GgufBuilder g;
  g.kv_string("general.architecture", "llama");
  g.kv_u32("llama.block_count", 2);
  Bytes arr;
  put<uint32_t>(arr, kGgufString);
  put<uint64_t>(arr, 3);
  for (const char* s : {"a", "bc", "def"}) put_str(arr, s);
  g.kv("tokenizer.ggml.tokens", kGgufArray, arr);
  g.tensor("a.weight", {8, 2}, 0, f32_bytes(random_floats(16)));
  g.tensor("b.weight", {4}, 0, f32_bytes(random_floats(4)));
  return g;
}

// ---------------------------------------------------------------------------------------------
// Round trips

struct ExpectedKv {
  std::string key;
  GgufValue value;
};

TEST(Gguf, RoundTripRandomMetadataAndTensors) {
  std::mt19937_64& r = rng();
  for (int iter = 0; iter < 20; ++iter) {
    GgufBuilder g;
    g.version = (r() & 1) ? 3 : 2;
    g.alignment = (r() & 1) ? 32 : 64;
    std::vector<ExpectedKv> expected;
    const int n_kv = 1 + int(r() % 30);
    for (int i = 0; i < n_kv; ++i) {
      const std::string key = fmt::format("test.key{}.{}", i, r() % 1000);
      Bytes p;
      GgufValue v;
      const uint32_t type = uint32_t(r() % 13);
      auto scalar = [&](uint32_t t, Bytes& out) -> GgufValue {
        GgufValue x;
        switch (t) {
          case kGgufU8: {
            uint8_t a = uint8_t(r());
            put(out, a);
            x.v = uint64_t(a);
            break;
          }
          case kGgufI8: {
            int8_t a = int8_t(r());
            put(out, a);
            x.v = int64_t(a);
            break;
          }
          case kGgufU16: {
            uint16_t a = uint16_t(r());
            put(out, a);
            x.v = uint64_t(a);
            break;
          }
          case kGgufI16: {
            int16_t a = int16_t(r());
            put(out, a);
            x.v = int64_t(a);
            break;
          }
          case kGgufU32: {
            uint32_t a = uint32_t(r());
            put(out, a);
            x.v = uint64_t(a);
            break;
          }
          case kGgufI32: {
            int32_t a = int32_t(r());
            put(out, a);
            x.v = int64_t(a);
            break;
          }
          case kGgufU64: {
            uint64_t a = r();
            put(out, a);
            x.v = a;
            break;
          }
          case kGgufI64: {
            int64_t a = int64_t(r());
            put(out, a);
            x.v = a;
            break;
          }
          case kGgufF32: {
            float a = random_floats(1, -1e6f, 1e6f)[0];
            put(out, a);
            x.v = double(a);
            break;
          }
          case kGgufF64: {
            double a = double(r()) * 1e-7;
            put(out, a);
            x.v = a;
            break;
          }
          case kGgufBool: {
            bool a = r() & 1;
            put<uint8_t>(out, a);
            x.v = a;
            break;
          }
          default: {
            std::string s(r() % 20, 'x');
            for (char& c : s) c = char('a' + r() % 26);
            put_str(out, s);
            x.v = s;
          }
        }
        return x;
      };
      if (type == kGgufArray) {
        const uint32_t et = uint32_t(r() % 13);
        const uint32_t elem = et == kGgufArray ? kGgufString : et;
        const uint64_t n = r() % 10;
        put(p, elem);
        put(p, n);
        std::vector<GgufValue> elems;
        for (uint64_t k = 0; k < n; ++k) elems.push_back(scalar(elem, p));
        auto collect = [&]<typename T>(std::vector<T> out) {
          for (const GgufValue& e : elems) out.push_back(std::get<T>(e.v));
          v.v = GgufValue::Array(std::move(out));
        };
        switch (elem) {
          case kGgufU8:
          case kGgufU16:
          case kGgufU32:
          case kGgufU64:
            collect(std::vector<uint64_t>{});
            break;
          case kGgufI8:
          case kGgufI16:
          case kGgufI32:
          case kGgufI64:
            collect(std::vector<int64_t>{});
            break;
          case kGgufF32:
          case kGgufF64:
            collect(std::vector<double>{});
            break;
          case kGgufBool:
            collect(std::vector<bool>{});
            break;
          default:
            collect(std::vector<std::string>{});
            break;
        }
      } else {
        v = scalar(type, p);
      }
      g.kv(key, type, p);
      expected.push_back({key, v});
    }
    struct ExpectedTensor {
      std::string name;
      std::vector<int64_t> ne;
      DType dtype;
      std::vector<float> values;
    };
    std::vector<ExpectedTensor> tensors;
    const int n_t = 1 + int(r() % 5);
    for (int i = 0; i < n_t; ++i) {
      ExpectedTensor t;
      t.name = fmt::format("blk.{}.t{}", i, r() % 100);
      const int n_dims = 1 + int(r() % 4);
      std::vector<uint64_t> ne;
      int64_t numel = 1;
      for (int d = 0; d < n_dims; ++d) {
        ne.push_back(1 + r() % 7);
        t.ne.push_back(int64_t(ne.back()));
        numel *= t.ne.back();
      }
      const std::vector<float> src = random_floats(size_t(numel), -3.0f, 3.0f);
      t.dtype = (r() & 1) ? DType::kF16 : DType::kF32;
      if (t.dtype == DType::kF16) {
        g.tensor(t.name, ne, 1, f16_bytes(src, &t.values));
      } else {
        t.values = src;
        g.tensor(t.name, ne, 0, f32_bytes(src));
      }
      tensors.push_back(std::move(t));
    }

    TempDir dir;
    const auto path = dir.path() / "round-trip.gguf";
    write_bytes(path, g.build());
    auto f = GgufFile::open(path);
    ASSERT_TRUE(f.ok()) << f.status().message();
    const GgufFile& file = **f;
    EXPECT_EQ(file.version(), g.version);
    EXPECT_EQ(file.metadata().size(), expected.size() + (g.alignment != 32 ? 1 : 0));
    for (const ExpectedKv& e : expected) {
      const GgufValue* v = file.find(e.key);
      ASSERT_NE(v, nullptr) << e.key;
      EXPECT_TRUE(v->v == e.value.v) << e.key;
    }
    ASSERT_EQ(file.tensors().size(), tensors.size());
    for (const ExpectedTensor& t : tensors) {
      const model::GgufTensor* gt = file.find_tensor(t.name);
      ASSERT_NE(gt, nullptr) << t.name;
      EXPECT_EQ(gt->ne, t.ne);
      EXPECT_EQ(gt->dtype, t.dtype);
      EXPECT_EQ(gt->nbytes, t.values.size() * (t.dtype == DType::kF16 ? 2 : 4));
      std::vector<float> out(t.values.size());
      ASSERT_TRUE(file.read_f32(*gt, out).ok());
      EXPECT_EQ(first_mismatch(out, t.values, 0, 0), -1) << t.name;
    }
    EXPECT_EQ(file.find_tensor("absent"), nullptr);
  }
}

TEST(Gguf, TypedGetters) {
  GgufBuilder g = small_file();
  Bytes p;
  put<double>(p, 2.5);
  g.kv("f", kGgufF64, p);
  p.clear();
  put<uint64_t>(p, ~0ull);
  g.kv("big", kGgufU64, p);
  p.clear();
  put<uint32_t>(p, kGgufI16);
  put<uint64_t>(p, 3);
  for (int16_t x : {-1, 2, -3}) put(p, x);
  g.kv("ints", kGgufArray, p);
  p.clear();
  put<uint8_t>(p, 1);
  g.kv("flag", kGgufBool, p);
  auto f = parse_copy(g.build());
  ASSERT_TRUE(f.ok()) << f.status().message();
  const GgufFile& file = **f;
  EXPECT_EQ(*file.get_string("general.architecture"), "llama");
  EXPECT_EQ(*file.get_int("llama.block_count"), 2);
  EXPECT_EQ(*file.get_float("llama.block_count"), 2.0);
  EXPECT_EQ(*file.get_float("f"), 2.5);
  EXPECT_TRUE(*file.get_bool("flag"));
  EXPECT_EQ(*file.get_int_array("ints"), (std::vector<int64_t>{-1, 2, -3}));
  EXPECT_EQ(*file.get_float_array("ints"), (std::vector<double>{-1, 2, -3}));
  EXPECT_EQ(*file.get_string_array("tokenizer.ggml.tokens"),
            (std::vector<std::string>{"a", "bc", "def"}));
  EXPECT_EQ(file.get_string("nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(file.get_string("llama.block_count").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(file.get_int("f").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(file.get_int("big").status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(file.get_int_array("tokenizer.ggml.tokens").status().code(),
            StatusCode::kInvalidArgument);
}

TEST(Gguf, NestedArraysAreSkipped) {
  GgufBuilder g = small_file();
  Bytes p;
  put<uint32_t>(p, kGgufArray);
  put<uint64_t>(p, 2);
  for (int i = 0; i < 2; ++i) {
    put<uint32_t>(p, kGgufU16);
    put<uint64_t>(p, 2);
    put<uint16_t>(p, 7);
    put<uint16_t>(p, 9);
  }
  g.kv("nested", kGgufArray, p);
  g.kv_string("after", "still read");
  auto f = parse_copy(g.build());
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ((*f)->find("nested"), nullptr);
  EXPECT_EQ(*(*f)->get_string("after"), "still read");
}

// ---------------------------------------------------------------------------------------------
// Corrupt and lying files

void expect_error(const Bytes& b, StatusCode code, const std::string& needle) {
  auto f = parse_copy(b, "lie.gguf");
  ASSERT_FALSE(f.ok()) << "accepted a file that should fail with: " << needle;
  EXPECT_EQ(f.status().code(), code) << f.status().message();
  EXPECT_NE(f.status().message().find("'lie.gguf'"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status().message();
  EXPECT_EQ(f.status().message().find('\n'), std::string::npos);
}

TEST(Gguf, EveryTruncationIsAnError) {
  const Bytes full = small_file().build();
  ASSERT_TRUE(parse_copy(full).ok());
  for (size_t n = 0; n < full.size(); ++n) {
    const Bytes cut(full.begin(), full.begin() + std::ptrdiff_t(n));
    auto f = parse_copy(cut);
    ASSERT_FALSE(f.ok()) << "truncated to " << n << " of " << full.size() << " bytes";
    EXPECT_EQ(f.status().code(), StatusCode::kDataLoss) << f.status().message();
  }
}

TEST(Gguf, LyingHeaders) {
  GgufBuilder g = small_file();
  const Bytes good = g.build();
  auto with = [&](const std::string& field, auto value) {
    Bytes b = good;
    overwrite(b, g.at.at(field), value);
    return b;
  };
  expect_error(with("version", uint32_t(0)) /*magic kept*/, StatusCode::kDataLoss, "version");
  {
    Bytes b = good;
    overwrite<uint32_t>(b, 0, 0x46554746);
    expect_error(b, StatusCode::kDataLoss, "not a GGUF file");
  }
  expect_error(with("version", uint32_t(1)), StatusCode::kUnimplemented, "version 1");
  expect_error(with("version", uint32_t(0x03000000)), StatusCode::kDataLoss, "version");
  expect_error(with("n_tensors", ~0ull), StatusCode::kDataLoss, "tensor count");
  expect_error(with("n_tensors", uint64_t(1) << 40), StatusCode::kDataLoss, "tensor count");
  expect_error(with("n_kv", ~0ull), StatusCode::kDataLoss, "metadata count");
  // The key of the first metadata entry claims a huge length.
  expect_error(with("kv:general.architecture", ~0ull), StatusCode::kDataLoss, "past the end");
  // The string value claims more bytes than the file has.
  expect_error(with("kv:general.architecture:value", uint64_t(1) << 20), StatusCode::kDataLoss,
               "metadata 'general.architecture'");
  expect_error(with("kv:general.architecture:type", uint32_t(13)), StatusCode::kDataLoss,
               "unknown value type 13");
  // An array count far beyond the file.
  expect_error(with("kv:tokenizer.ggml.tokens:value", uint32_t(99)), StatusCode::kDataLoss,
               "unknown element type");
  {
    Bytes b = good;
    overwrite<uint64_t>(b, g.at.at("kv:tokenizer.ggml.tokens:value") + 4, uint64_t(1) << 62);
    expect_error(b, StatusCode::kDataLoss, "metadata 'tokenizer.ggml.tokens'");
  }
  expect_error(with("tensor:a.weight:n_dims", uint32_t(9)), StatusCode::kDataLoss,
               "tensor 'a.weight' has 9 dimensions");
  expect_error(with("tensor:a.weight", uint64_t(1) << 50), StatusCode::kDataLoss, "past the end");
  expect_error(with("tensor:b.weight:offset", uint64_t(4096)), StatusCode::kDataLoss,
               "tensor 'b.weight' data extends past end of file");
  expect_error(with("tensor:b.weight:offset", ~uint64_t(31)), StatusCode::kDataLoss,
               "tensor 'b.weight' data extends past end of file");
  expect_error(with("tensor:b.weight:offset", uint64_t(33)), StatusCode::kDataLoss,
               "not a multiple of the alignment");
  expect_error(with("tensor:a.weight:ne", uint64_t(1) << 62), StatusCode::kDataLoss,
               "tensor 'a.weight'");
  expect_error(with("tensor:a.weight:ne", ~0ull), StatusCode::kDataLoss, "overflows");
  expect_error(with("tensor:b.weight:ne", uint64_t(5)), StatusCode::kDataLoss,
               "data extends past end of file");
  expect_error(with("tensor:a.weight:type", uint32_t(200)), StatusCode::kUnimplemented,
               "unknown ggml type 200");
  expect_error(with("tensor:a.weight:type", uint32_t(16)), StatusCode::kUnimplemented, "IQ2_XXS");
  // Q4_0 rows must be whole blocks of 32.
  expect_error(with("tensor:a.weight:type", uint32_t(2)), StatusCode::kDataLoss,
               "not a multiple of the Q4_0 block size 32");
}

TEST(Gguf, LyingStructure) {
  {
    GgufBuilder g = small_file();
    g.kv_string("general.architecture", "again");
    expect_error(g.build(), StatusCode::kDataLoss, "appears twice");
  }
  {
    GgufBuilder g = small_file();
    g.tensor("a.weight", {4}, 0, f32_bytes(random_floats(4)));
    expect_error(g.build(), StatusCode::kDataLoss, "tensor 'a.weight' appears twice");
  }
  {
    GgufBuilder g;
    g.kv_u32("general.alignment", 24);
    expect_error(g.build(), StatusCode::kDataLoss, "alignment");
  }
  {
    // Arrays nested deeper than any real file, each claiming one element.
    GgufBuilder g;
    Bytes p;
    for (int i = 0; i < 40; ++i) {
      put<uint32_t>(p, kGgufArray);
      put<uint64_t>(p, 1);
    }
    put<uint32_t>(p, kGgufU8);
    put<uint64_t>(p, 0);
    g.kv("deep", kGgufArray, p);
    expect_error(g.build(), StatusCode::kDataLoss, "deep");
  }
  {
    // A valid file with no tensors and no data section at all (not even its padding).
    GgufBuilder g;
    g.kv_string("general.architecture", "qwen2");
    Bytes b = g.build();
    b.resize(g.at.at("end_of_infos"));
    ASSERT_LT(b.size(), g.at.at("data"));
    auto f = parse_copy(b);
    ASSERT_TRUE(f.ok()) << f.status().message();
    EXPECT_EQ(*(*f)->get_string("general.architecture"), "qwen2");
  }
}

TEST(Gguf, RandomByteFlipsNeverCrash) {
  GgufBuilder g = small_file();
  const Bytes good = g.build();
  const size_t header_end = g.at.at("data");
  std::mt19937_64& r = rng();
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes b = good;
    const int flips = 1 + int(r() % 4);
    for (int k = 0; k < flips; ++k) b[r() % header_end] ^= uint8_t(1u << (r() % 8));
    auto f = parse_copy(b);
    if (!f.ok()) continue;
    ++accepted;
    // Whatever was accepted must be readable within bounds.
    for (const model::GgufTensor& t : (*f)->tensors()) {
      int64_t n = 1;
      for (int64_t d : t.ne) n *= d;
      if (n > (1 << 20)) continue;
      std::vector<float> out(static_cast<size_t>(n));
      (void)(*f)->read_f32(t, out);
    }
  }
  EXPECT_LT(accepted, 3000);
}

TEST(Gguf, OpenErrorsNameTheFile) {
  auto f = GgufFile::open("/nonexistent/dir/model.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent/dir/model.gguf"), std::string::npos);
  TempDir dir;
  write_bytes(dir.path() / "empty.gguf", {});
  auto e = GgufFile::open(dir.path() / "empty.gguf");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(e.status().message().find("empty.gguf"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face view

// What llama.cpp's converter does to q_proj / k_proj rows (HF -> GGUF), written independently
// of the reader: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols).
std::vector<float> llama_permute(const std::vector<float>& w, int64_t rows, int64_t cols,
                                 int64_t n_head) {
  std::vector<float> out(w.size());
  const int64_t half = rows / n_head / 2;
  int64_t dst = 0;
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t src = (h * 2 + j) * half + i;
        std::copy_n(w.begin() + src * cols, cols, out.begin() + dst * cols);
        ++dst;
      }
    }
  }
  return out;
}

TEST(GgufWeights, NamesShapesAndLlamaPermutation) {
  const int64_t n_head = 4, n_head_kv = 2, head_dim = 8, hidden = 32;
  for (const char* arch : {"llama", "qwen2"}) {
    const bool permuted = std::string(arch) == "llama";
    GgufBuilder g;
    g.kv_string("general.architecture", arch);
    std::map<std::string, std::vector<float>> hf;  // HF name -> original HF values
    std::map<std::string, std::vector<int64_t>> hf_shape;
    auto add = [&](const std::string& gname, const std::string& hname, int64_t rows, int64_t cols,
                   int64_t heads) {
      std::vector<float> w = random_floats(size_t(rows * cols));
      hf[hname] = w;
      hf_shape[hname] = cols == 1 ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, cols};
      if (permuted && heads > 0) w = llama_permute(w, rows, cols, heads);
      std::vector<uint64_t> ne = cols == 1 ? std::vector<uint64_t>{uint64_t(rows)}
                                           : std::vector<uint64_t>{uint64_t(cols), uint64_t(rows)};
      g.tensor(gname, ne, 0, f32_bytes(w));
    };
    add("token_embd.weight", "model.embed_tokens.weight", 50, hidden, 0);
    add("output_norm.weight", "model.norm.weight", hidden, 1, 0);
    add("output.weight", "lm_head.weight", 50, hidden, 0);
    for (int l : {0, 11}) {
      const std::string b = fmt::format("blk.{}.", l), m = fmt::format("model.layers.{}.", l);
      add(b + "attn_norm.weight", m + "input_layernorm.weight", hidden, 1, 0);
      add(b + "attn_q.weight", m + "self_attn.q_proj.weight", n_head * head_dim, hidden, n_head);
      add(b + "attn_q.bias", m + "self_attn.q_proj.bias", n_head * head_dim, 1, n_head);
      add(b + "attn_k.weight", m + "self_attn.k_proj.weight", n_head_kv * head_dim, hidden,
          n_head_kv);
      add(b + "attn_k.bias", m + "self_attn.k_proj.bias", n_head_kv * head_dim, 1, n_head_kv);
      add(b + "attn_v.weight", m + "self_attn.v_proj.weight", n_head_kv * head_dim, hidden, 0);
      add(b + "attn_v.bias", m + "self_attn.v_proj.bias", n_head_kv * head_dim, 1, 0);
      add(b + "attn_output.weight", m + "self_attn.o_proj.weight", hidden, n_head * head_dim, 0);
      add(b + "attn_q_norm.weight", m + "self_attn.q_norm.weight", head_dim, 1, 0);
      add(b + "attn_k_norm.weight", m + "self_attn.k_norm.weight", head_dim, 1, 0);
      add(b + "ffn_norm.weight", m + "post_attention_layernorm.weight", hidden, 1, 0);
      add(b + "ffn_gate.weight", m + "mlp.gate_proj.weight", 48, hidden, 0);
      add(b + "ffn_up.weight", m + "mlp.up_proj.weight", 48, hidden, 0);
      add(b + "ffn_down.weight", m + "mlp.down_proj.weight", hidden, 48, 0);
    }
    add("rope_freqs.weight", "rope_freqs.weight", 4, 1, 0);      // unknown: kept as is
    add("blk.x.attn_q.weight", "blk.x.attn_q.weight", 4, 1, 0);  // not a layer number

    auto file = parse_copy(g.build(), "tiny.gguf");
    ASSERT_TRUE(file.ok()) << file.status().message();
    std::shared_ptr<const GgufFile> shared(std::move(*file));
    auto w = model::open_gguf_weights(shared, n_head, n_head_kv);
    ASSERT_TRUE(w.ok()) << w.status().message();
    std::vector<std::string> expected_names;
    for (const auto& [name, v] : hf) expected_names.push_back(name);
    EXPECT_EQ((*w)->names(), expected_names);
    for (const auto& [name, values] : hf) {
      const model::TensorInfo* t = (*w)->find(name);
      ASSERT_NE(t, nullptr) << name;
      EXPECT_EQ(t->shape, hf_shape[name]) << name;
      auto got = (*w)->read_f32(name);
      ASSERT_TRUE(got.ok()) << got.status().message();
      EXPECT_EQ(first_mismatch(*got, values, 0, 0), -1) << arch << " " << name;
    }
    EXPECT_EQ((*w)->find("blk.0.attn_q.weight"), nullptr);
    auto missing = (*w)->read_f32("model.layers.5.mlp.up_proj.weight");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
    EXPECT_NE(missing.status().message().find("model.layers.5.mlp.up_proj.weight"),
              std::string::npos);
    EXPECT_NE(missing.status().message().find("tiny.gguf"), std::string::npos);
    // Head counts that do not divide the rows are an error for a permuted architecture only.
    auto bad = model::open_gguf_weights(shared, 3, n_head_kv);
    EXPECT_EQ(bad.ok(), !permuted);
  }
}

// ---------------------------------------------------------------------------------------------
// The default model against gguf-py

TEST(GgufDefaultModel, MatchesGgufPy) {
  const auto path = default_model_path();
  ASSERT_TRUE(std::filesystem::exists(path))
      << "default model missing at '" << path.string()
      << "': run scripts/fetch-model.sh (or set PP_MODEL_DIR)";
  std::ifstream in(fixture_dir() / "gguf" / "smollm2-expected.json");
  ASSERT_TRUE(in) << "missing fixture: run scripts/make-gguf-fixtures.py";
  const nlohmann::json want = nlohmann::json::parse(in);

  auto f = GgufFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  const GgufFile& file = **f;
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(*file.get_string("general.architecture"), want["architecture"].get<std::string>());
  EXPECT_EQ(int64_t(file.tensors().size()), want["tensor_count"].get<int64_t>());
  EXPECT_EQ(file.tensors().size(), 272u);
  EXPECT_EQ(*file.get_int("llama.block_count"), want["block_count"].get<int64_t>());
  EXPECT_EQ(*file.get_int("llama.embedding_length"), want["embedding_length"].get<int64_t>());
  EXPECT_EQ(*file.get_float("llama.rope.freq_base"), want["rope_freq_base"].get<double>());
  EXPECT_EQ(file.get_string_array("tokenizer.ggml.tokens")->size(), 49152u);
  const int64_t n_head = *file.get_int("llama.attention.head_count");
  const int64_t n_head_kv = *file.get_int("llama.attention.head_count_kv");
  EXPECT_EQ(n_head, want["head_count"].get<int64_t>());
  EXPECT_EQ(n_head_kv, want["head_count_kv"].get<int64_t>());

  std::shared_ptr<const GgufFile> shared(std::move(*f));
  auto w = model::open_gguf_weights(shared, n_head, n_head_kv);
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_EQ((*w)->names().size(), 272u);
  for (const nlohmann::json& t : want["tensors"]) {
    const std::string name = t["name"];
    SCOPED_TRACE(name);
    const model::TensorInfo* info = (*w)->find(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(model::dtype_name(info->dtype), t["type"].get<std::string>());
    EXPECT_EQ(info->shape, t["shape"].get<std::vector<int64_t>>());
    auto values = (*w)->read_f32(name);
    ASSERT_TRUE(values.ok()) << values.status().message();
    double sum = 0, abs_sum = 0;
    for (float v : *values) {
      sum += v;
      abs_sum += std::fabs(v);
    }
    const double tol = 1e-9 * t["abs_sum"].get<double>();
    EXPECT_NEAR(sum, t["sum"].get<double>(), tol);
    EXPECT_NEAR(abs_sum, t["abs_sum"].get<double>(), tol);
    const int64_t cols = info->shape.size() == 2 ? info->shape[1] : info->numel();
    for (const auto& [row_str, row] : t["rows"].items()) {
      const int64_t r = std::stoll(row_str);
      const std::vector<float> head = row["head"].get<std::vector<float>>();
      const std::span<const float> got(values->data() + r * cols, head.size());
      EXPECT_EQ(first_mismatch(got, head, 0, 0), -1) << "row " << r;
      double row_sum = 0;
      for (int64_t c = 0; c < cols; ++c) row_sum += (*values)[size_t(r * cols + c)];
      EXPECT_NEAR(row_sum, row["sum"].get<double>(), 1e-9 * t["abs_sum"].get<double>())
          << "row " << r;
    }
  }
}

}  // namespace
}  // namespace pp::test
