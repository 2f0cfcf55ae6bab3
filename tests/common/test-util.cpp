// Implementation of the shared test helpers.
#include "test-util.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

namespace pp::test {

std::filesystem::path source_dir() {
  if (const char* s = std::getenv("PP_SOURCE_DIR")) return s;
  return PP_SOURCE_DIR;
}

std::filesystem::path fixture_dir() { return source_dir() / "tests" / "fixtures"; }

std::filesystem::path default_model_path() {
  std::filesystem::path dir;
  if (const char* s = std::getenv("PP_MODEL_DIR")) {
    dir = s;
  } else if (const char* h = std::getenv("HOME")) {
    dir = std::filesystem::path(h) / ".cache" / "pp" / "models";
  }
  return dir / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "pp-test-XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  if (!p) std::abort();
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

uint64_t rng_seed() {
  static const uint64_t seed = []() -> uint64_t {
    if (const char* s = std::getenv("PP_TEST_SEED")) return std::strtoull(s, nullptr, 10);
    std::random_device rd;
    uint64_t v = (uint64_t(rd()) << 32) | rd();
    std::fprintf(stderr, "[pp-test] random seed %llu (set PP_TEST_SEED to repeat)\n",
                 (unsigned long long)v);
    return v;
  }();
  return seed;
}

std::mt19937_64& rng() {
  static std::mt19937_64 g(rng_seed());
  return g;
}

std::vector<float> random_floats(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng());
  return v;
}

int64_t first_mismatch(std::span<const float> got, std::span<const float> ref, double atol,
                       double rtol) {
  if (got.size() != ref.size()) return 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double a = got[i], b = ref[i];
    if (a == b) continue;  // equal infinities too (their difference is NaN)
    if (!(std::fabs(a - b) <= atol + rtol * std::fabs(b))) return int64_t(i);
  }
  return -1;
}

std::vector<uint8_t> read_file_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

}  // namespace pp::test
