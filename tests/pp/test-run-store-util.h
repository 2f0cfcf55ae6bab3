// Helpers for the run store tests: a raw SQLite connection to inspect or tamper with a store
// behind RunStore's back, a file snapshot to prove a file was left untouched, and random records.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "pp/store/run-store.h"
#include "test-util.h"

namespace pp::test {

// A raw connection for checks the RunStore API does not offer.
class RawDb {
 public:
  explicit RawDb(const std::filesystem::path& p, bool read_only = false) {
    int flags = read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
    rc_ = sqlite3_open_v2(p.c_str(), &db_, flags, nullptr);
    if (rc_ == SQLITE_OK) sqlite3_busy_timeout(db_, 10'000);
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  void exec(const std::string& sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << (err ? err : "");
    sqlite3_free(err);
  }
  // First column of every row, as text.
  std::vector<std::string> column(const std::string& sql) {
    std::vector<std::string> out;
    sqlite3_stmt* st = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr);
    EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << sqlite3_errmsg(db_);
    if (rc != SQLITE_OK) return out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const unsigned char* t = sqlite3_column_text(st, 0);
      out.emplace_back(t ? reinterpret_cast<const char*>(t) : "");
    }
    EXPECT_EQ(rc, SQLITE_DONE) << sql << ": " << sqlite3_errmsg(db_);
    sqlite3_finalize(st);
    return out;
  }
  int64_t scalar(const std::string& sql) {
    auto v = column(sql);
    return v.empty() ? -1 : std::stoll(v[0]);
  }

 private:
  sqlite3* db_ = nullptr;
  int rc_ = SQLITE_ERROR;
};

// The bytes and modification time of a file, to prove it was not written.
struct FileSnapshot {
  std::vector<uint8_t> bytes;
  std::filesystem::file_time_type mtime;
  static FileSnapshot of(const std::filesystem::path& p) {
    return {read_file_bytes(p), std::filesystem::last_write_time(p)};
  }
  bool operator==(const FileSnapshot& o) const { return bytes == o.bytes && mtime == o.mtime; }
};

// Text with quotes, separators, SQL-looking fragments and multi-byte UTF-8.
inline std::string random_text(size_t max_len = 40) {
  static const std::vector<std::string> pieces = {"a",
                                                  "Z",
                                                  "7",
                                                  " ",
                                                  "'",
                                                  "\"",
                                                  ";",
                                                  "%",
                                                  "_",
                                                  "\\",
                                                  "--",
                                                  "); DROP TABLE events; --",
                                                  "é",
                                                  "ß",
                                                  "→",
                                                  "字",
                                                  "\n",
                                                  "\t",
                                                  "{\"k\": [1, 2]}",
                                                  "?",
                                                  "?1",
                                                  "NULL"};
  size_t n = size_t(random_int(1, int64_t(max_len)));
  std::string s;
  for (size_t i = 0; i < n; ++i) s += pieces[size_t(random_int(0, int64_t(pieces.size()) - 1))];
  return s;
}

inline int64_t random_time_ms() { return random_int(1'000'000'000'000, 2'000'000'000'000); }

}  // namespace pp::test
