// Encoding and decoding of the control-plane messages (format in wire.h).
//
// Each message's fields are listed once, in a `fields(io, m)` function that three visitors walk:
// Sizer (exact encoded size), Writer (into a buffer sized once) and Reader (checked decode). One
// list for all three keeps encode and decode symmetric by construction.
#include "pp/transport/wire.h"

#include <bit>
#include <concepts>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "pp/assert.h"

namespace pp::transport {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the wire codec copies integers as they are in memory: little-endian hosts only");

template <class M, class T>
concept Is = std::same_as<std::remove_const_t<M>, T>;

template <class T>
concept Scalar = std::is_arithmetic_v<T> && !std::same_as<T, bool>;

// ---- the field lists (declaration order of messages.h) ----

template <class Io, class M>
requires Is<M, Hello>
void fields(Io& io, M& m) {
  io(m.stage, "stage");
  io(m.rank, "rank");
  io(m.host, "host");
  io(m.pid, "pid");
  io(m.device, "device");
  io(m.device_name, "device_name");
  io(m.device_total_bytes, "device_total_bytes");
  io(m.device_free_bytes, "device_free_bytes");
  io(m.data_endpoint, "data_endpoint");
  io(m.tp_endpoint, "tp_endpoint");
}

template <class Io, class M>
requires Is<M, Assign>
void fields(Io& io, M& m) {
  io(m.stage, "stage");
  io(m.n_stages, "n_stages");
  io(m.devices, "devices");
  io(m.rank, "rank");
  io(m.model_path, "model_path");
  io(m.layer_begin, "layer_begin");
  io(m.layer_end, "layer_end");
  io(m.next_data_endpoint, "next_data_endpoint");
  io(m.kv_block_size, "kv_block_size");
  io(m.threads, "threads");
  io(m.nccl_id_from_previous, "nccl_id_from_previous");
  io(m.nccl_id_to_next, "nccl_id_to_next");
  io(m.max_batch_tokens, "max_batch_tokens");
  io(m.max_running, "max_running");
  io(m.mem_fraction, "mem_fraction");
  io(m.cuda_graphs, "cuda_graphs");
  io(m.random_weights, "random_weights");
  io(m.random_seed, "random_seed");
  io(m.quantization, "quantization");
  io(m.cpu_dtype, "cpu_dtype");
  io(m.tp_endpoints, "tp_endpoints");
  io(m.tp_nccl_id, "tp_nccl_id");
}

template <class Io, class M>
requires Is<M, Loaded>
void fields(Io& io, M& m) {
  io(m.stage, "stage");
  io(m.kv_bytes_per_block, "kv_bytes_per_block");
  io(m.kv_blocks_capacity, "kv_blocks_capacity");
  io(m.load_seconds, "load_seconds");
}

template <class Io, class M>
requires Is<M, AllocateKv>
void fields(Io& io, M& m) {
  io(m.n_blocks, "n_blocks");
  io(m.block_size, "block_size");
}

template <class Io, class M>
requires Is<M, Ready>
void fields(Io& io, M& m) { io(m.stage, "stage"); }

template <class Io, class M>
requires Is<M, WireSampling>
void fields(Io& io, M& m) {
  io(m.temperature, "temperature");
  io(m.top_p, "top_p");
  io(m.min_p, "min_p");
  io(m.top_k, "top_k");
  io(m.presence_penalty, "presence_penalty");
  io(m.frequency_penalty, "frequency_penalty");
  io(m.repetition_penalty, "repetition_penalty");
  io(m.seed, "seed");
  io(m.top_logprobs, "top_logprobs");
  io(m.bias_ids, "bias_ids");
  io(m.bias_values, "bias_values");
}

template <class Io, class M>
requires Is<M, PlanEntry>
void fields(Io& io, M& m) {
  io(m.request_id, "request_id");
  io(m.pos_begin, "pos_begin");
  io(m.n_new, "n_new");
  io(m.new_blocks, "new_blocks");
  io(m.reset_table, "reset_table");
  io(m.sample, "sample");
  io(m.sample_step, "sample_step");
  io(m.sampling, "sampling");
  io(m.token_ids, "token_ids");
  io(m.penalty_prompt_ids, "penalty_prompt_ids");
  io(m.penalty_output_ids, "penalty_output_ids");
  io(m.allowed_tokens, "allowed_tokens");
}

template <class Io, class M>
requires Is<M, Plan>
void fields(Io& io, M& m) {
  io(m.seq, "seq");
  io(m.group, "group");
  io(m.entries, "entry");
  io(m.released, "released");
}

template <class Io, class M>
requires Is<M, SampledToken>
void fields(Io& io, M& m) {
  io(m.request_id, "request_id");
  io(m.token, "token");
  io(m.logprob, "logprob");
  io(m.top_ids, "top_ids");
  io(m.top_logprobs, "top_logprobs");
}

template <class Io, class M>
requires Is<M, Tokens>
void fields(Io& io, M& m) {
  io(m.seq, "seq");
  io(m.group, "group");
  io(m.tokens, "token");
}

template <class Io, class M>
requires Is<M, StageTiming>
void fields(Io& io, M& m) {
  io(m.stage, "stage");
  io(m.seq, "seq");
  io(m.group, "group");
  io(m.queued_us, "queued_us");
  io(m.start_us, "start_us");
  io(m.end_us, "end_us");
  io(m.sent_us, "sent_us");
  io(m.n_tokens, "n_tokens");
}

template <class Io, class M>
requires Is<M, Heartbeat>
void fields(Io& io, M& m) {
  io(m.stage, "stage");
  io(m.at_us, "at_us");
}

template <class Io, class M>
requires Is<M, StageError>
void fields(Io& io, M& m) {
  io(m.stage, "stage");
  io(m.seq, "seq");
  io(m.message, "message");
}

template <class Io, class M>
requires Is<M, Shutdown>
void fields(Io& io, M& m) { io(m.reason, "reason"); }

// ---- type numbers, in variant order ----

constexpr MessageType kTypes[] = {
    MessageType::kHello,      MessageType::kAssign,      MessageType::kLoaded,
    MessageType::kAllocateKv, MessageType::kReady,       MessageType::kPlan,
    MessageType::kTokens,     MessageType::kStageTiming, MessageType::kHeartbeat,
    MessageType::kStageError, MessageType::kShutdown,
};
static_assert(std::size(kTypes) == std::variant_size_v<Message>,
              "every Message alternative needs a MessageType");

// ---- visitors ----

class Sizer {
 public:
  template <Scalar T>
  void operator()(const T&, const char*) {
    n_ += sizeof(T);
  }
  void operator()(const bool&, const char*) { n_ += 1; }
  void operator()(const std::string& s, const char*) { n_ += 4 + s.size(); }
  template <Scalar T>
  void operator()(const std::vector<T>& v, const char*) {
    n_ += 4 + v.size() * sizeof(T);
  }
  void operator()(const std::vector<std::string>& v, const char*) {
    n_ += 4;
    for (const std::string& e : v) (*this)(e, "");
  }
  template <class T>
  void operator()(const std::vector<T>& v, const char*) {
    n_ += 4;
    for (const T& e : v) fields(*this, e);
  }
  template <class T>
  requires std::is_class_v<T>
  void operator()(const T& s, const char*) { fields(*this, s); }
  size_t size() const { return n_; }

 private:
  size_t n_ = 0;
};

class Writer {
 public:
  explicit Writer(uint8_t* p) : p_(p) {}
  template <Scalar T>
  void operator()(const T& v, const char*) {
    std::memcpy(p_, &v, sizeof(T));
    p_ += sizeof(T);
  }
  void operator()(const bool& v, const char*) { *p_++ = v ? 1 : 0; }
  void operator()(const std::string& s, const char*) {
    put_count(s.size());
    if (!s.empty()) std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
  }
  template <Scalar T>
  void operator()(const std::vector<T>& v, const char*) {
    put_count(v.size());
    if (!v.empty()) std::memcpy(p_, v.data(), v.size() * sizeof(T));
    p_ += v.size() * sizeof(T);
  }
  void operator()(const std::vector<std::string>& v, const char*) {
    put_count(v.size());
    for (const std::string& e : v) (*this)(e, "");
  }
  template <class T>
  void operator()(const std::vector<T>& v, const char*) {
    put_count(v.size());
    for (const T& e : v) fields(*this, e);
  }
  template <class T>
  requires std::is_class_v<T>
  void operator()(const T& s, const char*) { fields(*this, s); }
  uint8_t* pos() const { return p_; }

 private:
  void put_count(size_t n) {
    // A count beyond u32 cannot be framed; messages are far smaller, so this is a bug.
    PP_ASSERT_MSG(n <= UINT32_MAX, "wire: string or vector longer than 2^32-1 elements");
    (*this)(static_cast<uint32_t>(n), "count");
  }
  uint8_t* p_;
};

// Minimal encoded size of one T: all its strings and vectors empty.
template <class T>
size_t min_encoded_size() {
  static const size_t n = [] {
    Sizer s;
    T t{};
    fields(s, t);
    return s.size();
  }();
  return n;
}

class Reader {
 public:
  Reader(std::span<const uint8_t> body, const char* message) : body_(body), message_(message) {}

  template <Scalar T>
  void operator()(T& v, const char* name) {
    if (failed()) return;
    if (left() < sizeof(T)) {
      fail(name, fmt::format("truncated (needs {} bytes, {} left)", sizeof(T), left()));
      return;
    }
    std::memcpy(&v, body_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
  }
  void operator()(bool& v, const char* name) {
    uint8_t b = 0;
    (*this)(b, name);
    if (failed()) return;
    if (b > 1) {
      fail(name, fmt::format("is {}, not a bool (0 or 1)", b));
      return;
    }
    v = b == 1;
  }
  void operator()(std::string& s, const char* name) {
    uint32_t n = 0;
    if (!get_count(n, 1, name)) return;
    s.assign(reinterpret_cast<const char*>(body_.data() + pos_), n);
    pos_ += n;
  }
  template <Scalar T>
  void operator()(std::vector<T>& v, const char* name) {
    uint32_t n = 0;
    if (!get_count(n, sizeof(T), name)) return;
    v.resize(n);
    if (n) std::memcpy(v.data(), body_.data() + pos_, size_t(n) * sizeof(T));
    pos_ += size_t(n) * sizeof(T);
  }
  void operator()(std::vector<std::string>& v, const char* name) {
    uint32_t n = 0;
    if (!get_count(n, 4, name)) return;  // each string: its length at least
    v.resize(n);
    for (uint32_t i = 0; i < n && !failed(); ++i) (*this)(v[i], name);
  }
  template <class T>
  void operator()(std::vector<T>& v, const char* name) {
    uint32_t n = 0;
    if (!get_count(n, min_encoded_size<T>(), name)) return;
    v.resize(n);
    PP_ASSERT(depth_ < kMaxDepth);
    for (uint32_t i = 0; i < n && !failed(); ++i) {
      path_[depth_++] = {name, i};
      fields(*this, v[i]);
      --depth_;
    }
  }
  template <class T>
  requires std::is_class_v<T>
  void operator()(T& s, const char* name) { fields(*this, s); }

  bool failed() const { return !error_.empty(); }
  size_t left() const { return body_.size() - pos_; }
  Status status() const {
    if (failed()) return data_loss("malformed '{}' message: {}", message_, error_);
    if (left() != 0)
      return data_loss("malformed '{}' message: {} trailing bytes", message_, left());
    return ok_status();
  }

 private:
  // Reads a count of elements of at least `elem_bytes` each and checks they fit in what is left.
  bool get_count(uint32_t& n, size_t elem_bytes, const char* name) {
    (*this)(n, name);
    if (failed()) return false;
    if (size_t(n) > left() / elem_bytes) {
      fail(name, fmt::format("length {} exceeds frame ({} bytes left)", n, left()));
      return false;
    }
    return true;
  }
  void fail(const char* name, const std::string& what) {
    std::string where;
    for (int i = 0; i < depth_; ++i) where += fmt::format("{} {} ", path_[i].name, path_[i].index);
    error_ = fmt::format("{}{} {}", where, name, what);
  }

  static constexpr int kMaxDepth = 4;
  struct PathStep {
    const char* name;
    uint32_t index;
  };
  std::span<const uint8_t> body_;
  size_t pos_ = 0;
  const char* message_;
  std::string error_;
  PathStep path_[kMaxDepth] = {};
  int depth_ = 0;
};

size_t body_size(const Message& m) {
  return std::visit(
      [](const auto& msg) {
        Sizer s;
        fields(s, msg);
        return s.size();
      },
      m);
}

template <size_t I = 0>
Result<Message> decode_body(size_t index, std::span<const uint8_t> body) {
  if constexpr (I < std::variant_size_v<Message>) {
    if (index != I) return decode_body<I + 1>(index, body);
    Message out(std::in_place_index<I>);
    Reader r(body, message_type_name(kTypes[I]));
    fields(r, std::get<I>(out));
    PP_RETURN_IF_ERROR(r.status());
    return out;
  } else {
    PP_ASSERT_MSG(false, "wire: type index out of range");
    return internal_error("unreachable");
  }
}

}  // namespace

MessageType message_type(const Message& m) { return kTypes[m.index()]; }

const char* message_type_name(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return "Hello";
    case MessageType::kAssign:
      return "Assign";
    case MessageType::kLoaded:
      return "Loaded";
    case MessageType::kAllocateKv:
      return "AllocateKv";
    case MessageType::kReady:
      return "Ready";
    case MessageType::kPlan:
      return "Plan";
    case MessageType::kTokens:
      return "Tokens";
    case MessageType::kStageTiming:
      return "StageTiming";
    case MessageType::kHeartbeat:
      return "Heartbeat";
    case MessageType::kStageError:
      return "StageError";
    case MessageType::kShutdown:
      return "Shutdown";
  }
  return "?";
}

size_t encoded_size(const Message& m) { return kWireHeaderBytes + body_size(m); }

void encode(const Message& m, std::vector<uint8_t>& out) {
  const size_t body = body_size(m);
  PP_ASSERT_MSG(body <= UINT32_MAX, "wire: message body larger than 4 GiB");
  out.resize(kWireHeaderBytes + body);
  Writer w(out.data());
  w(kWireMagic, "magic");
  w(kWireVersion, "version");
  w(static_cast<uint16_t>(message_type(m)), "type");
  w(static_cast<uint32_t>(body), "length");
  std::visit([&](const auto& msg) { fields(w, msg); }, m);
  PP_ASSERT(w.pos() == out.data() + out.size());
}

std::vector<uint8_t> encode(const Message& m) {
  std::vector<uint8_t> out;
  encode(m, out);
  return out;
}

Result<Message> decode(std::span<const uint8_t> frame) {
  if (frame.size() < kWireHeaderBytes) {
    return data_loss("malformed message: frame of {} bytes is shorter than the {}-byte header",
                     frame.size(), kWireHeaderBytes);
  }
  uint32_t magic = 0, length = 0;
  uint16_t version = 0, type = 0;
  std::memcpy(&magic, frame.data(), 4);
  std::memcpy(&version, frame.data() + 4, 2);
  std::memcpy(&type, frame.data() + 6, 2);
  std::memcpy(&length, frame.data() + 8, 4);
  if (magic != kWireMagic) {
    return data_loss("not a pp message: magic 0x{:08x}, expected 0x{:08x}", magic, kWireMagic);
  }
  if (version != kWireVersion) {
    return unimplemented("message has wire version {}, this build speaks version {}{}", version,
                         kWireVersion, version > kWireVersion ? " (peer is newer)" : "");
  }
  size_t index = std::size(kTypes);
  for (size_t i = 0; i < std::size(kTypes); ++i) {
    if (static_cast<uint16_t>(kTypes[i]) == type) index = i;
  }
  if (index == std::size(kTypes)) return data_loss("malformed message: unknown type {}", type);
  const size_t body = frame.size() - kWireHeaderBytes;
  if (length != body) {
    return data_loss("malformed '{}' message: body length {} but {} bytes follow the header",
                     message_type_name(kTypes[index]), length, body);
  }
  return decode_body(index, frame.subspan(kWireHeaderBytes));
}

}  // namespace pp::transport
