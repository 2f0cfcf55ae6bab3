// GgufBuilder: a tiny GGUF writer for tests. It writes exactly what it is told (any magic,
// version, value type or count), so tests can build valid files and precise lies alike, and it
// records where each field landed so a test can overwrite one field of a valid file.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace pp::test {

enum GgufType : uint32_t {
  kGgufU8 = 0,
  kGgufI8 = 1,
  kGgufU16 = 2,
  kGgufI16 = 3,
  kGgufU32 = 4,
  kGgufI32 = 5,
  kGgufF32 = 6,
  kGgufBool = 7,
  kGgufString = 8,
  kGgufArray = 9,
  kGgufU64 = 10,
  kGgufI64 = 11,
  kGgufF64 = 12,
};

using Bytes = std::vector<uint8_t>;

template <typename T>
void put(Bytes& b, T v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}

inline void put_str(Bytes& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

template <typename T>
void overwrite(Bytes& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof(T));
}

class GgufBuilder {
 public:
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  uint64_t alignment = 32;  // used for layout; written as general.alignment when != 32

  // A key with a raw value payload (everything after the type field).
  void kv(const std::string& key, uint32_t type, Bytes payload) {
    kvs_.push_back({key, type, std::move(payload)});
  }
  void kv_string(const std::string& key, const std::string& v) {
    Bytes p;
    put_str(p, v);
    kv(key, kGgufString, p);
  }
  void kv_u32(const std::string& key, uint32_t v) {
    Bytes p;
    put(p, v);
    kv(key, kGgufU32, p);
  }
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t ggml_type, Bytes data) {
    tensors_.push_back({name, std::move(ne), ggml_type, std::move(data)});
  }

  // Builds the file. The last tensor's data ends at the end of the file (no trailing padding), so
  // cutting off any byte of a file with tensors makes it invalid.
  Bytes build() {
    at.clear();
    Bytes b;
    put(b, magic);
    at["version"] = b.size();
    put(b, version);
    at["n_tensors"] = b.size();
    put<uint64_t>(b, tensors_.size());
    at["n_kv"] = b.size();
    const bool write_alignment = alignment != 32;
    put<uint64_t>(b, kvs_.size() + (write_alignment ? 1 : 0));
    if (write_alignment) {
      put_str(b, "general.alignment");
      put<uint32_t>(b, kGgufU32);
      put<uint32_t>(b, uint32_t(alignment));
    }
    for (const Kv& k : kvs_) {
      at["kv:" + k.key] = b.size();
      put_str(b, k.key);
      at["kv:" + k.key + ":type"] = b.size();
      put(b, k.type);
      at["kv:" + k.key + ":value"] = b.size();
      b.insert(b.end(), k.payload.begin(), k.payload.end());
    }
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const Tensor& t : tensors_) {
      offset = (offset + alignment - 1) / alignment * alignment;
      offsets.push_back(offset);
      at["tensor:" + t.name] = b.size();
      put_str(b, t.name);
      at["tensor:" + t.name + ":n_dims"] = b.size();
      put<uint32_t>(b, uint32_t(t.ne.size()));
      at["tensor:" + t.name + ":ne"] = b.size();
      for (uint64_t d : t.ne) put(b, d);
      at["tensor:" + t.name + ":type"] = b.size();
      put(b, t.type);
      at["tensor:" + t.name + ":offset"] = b.size();
      put(b, offset);
      offset += t.data.size();
    }
    at["end_of_infos"] = b.size();
    const size_t data_start = (b.size() + alignment - 1) / alignment * alignment;
    at["data"] = data_start;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      b.resize(data_start + offsets[i], 0);
      b.insert(b.end(), tensors_[i].data.begin(), tensors_[i].data.end());
    }
    if (tensors_.empty()) b.resize(data_start, 0);
    return b;
  }

  std::map<std::string, size_t> at;  // where build() put each field

 private:
  struct Kv {
    std::string key;
    uint32_t type;
    Bytes payload;
  };
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    Bytes data;
  };
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace pp::test
