// Shared helpers of the libFuzzer targets (tests/fuzz/fuzz-*.cpp): a check that turns a broken
// property into a crash libFuzzer reports, a scratch folder for readers that take a path, and
// the committed fixtures. Every target links the real libraries; nothing here parses input.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace pp::fuzz {

// A property the code under test promises and broke: print it and abort, which libFuzzer (and
// a replay of the saved input) reports as a finding.
[[noreturn]] inline void check_failed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "fuzz check failed: %s at %s:%d\n", cond, file, line);
  std::abort();
}

#define PP_FUZZ_CHECK(cond) ((cond) ? (void)0 : ::pp::fuzz::check_failed(#cond, __FILE__, __LINE__))

// The source tree (for tests/fixtures).
inline std::filesystem::path source_dir() { return PP_SOURCE_DIR; }

// A private folder under $TMPDIR (or /tmp) for the process's lifetime; removed at exit.
inline const std::filesystem::path& scratch_dir() {
  struct Dir {
    std::filesystem::path path;
    Dir() {
      const char* tmp = std::getenv("TMPDIR");
      std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/pp-fuzz-XXXXXX";
      if (mkdtemp(tmpl.data()) == nullptr) {
        std::perror("mkdtemp");
        std::abort();
      }
      path = tmpl;
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static Dir dir;
  return dir.path;
}

// Writes `bytes` to `path` (replacing it); aborts when the scratch folder is unwritable, which
// is a broken environment rather than a finding about the input.
inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write '%s'\n", path.c_str());
    std::abort();
  }
}

}  // namespace pp::fuzz
