// pp::Status and pp::Result<T>: how every library in pp reports an expected failure (a bad file,
// a bad request, a lost peer). A bug is a PP_ASSERT instead (see assert.h). Only the tools'
// main() turns a Status into a message on stderr and an exit code.
//
// Messages follow git's style: lowercase, no full stop, the subject quoted:
//   cannot open 'x.safetensors': No such file or directory
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace pp {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller passed something malformed (bad option, bad request field)
  kNotFound,            // a file, tensor, model or request that does not exist
  kAlreadyExists,       // refusing to overwrite
  kOutOfRange,          // a value beyond a limit (context length, vocabulary)
  kDataLoss,            // a file whose contents lie: truncated, bad offsets, checksum mismatch
  kUnimplemented,       // a valid input we do not support (an unknown architecture, a dtype)
  kResourceExhausted,   // out of memory, KV blocks, queue space, disk
  kUnavailable,         // a peer went away, the server is draining
  kFailedPrecondition,  // the system is not in a state to do this (a newer database schema)
  kCancelled,
  kDeadlineExceeded,
  kInternal,  // a failure of something we call (a syscall, SQLite, CUDA)
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return {}; }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefix the message with context: "loading 'x': " + message.
  Status with_context(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status ok_status() { return {}; }

template <typename... Args>
Status make_error(StatusCode code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status invalid_argument(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kInvalidArgument, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status not_found(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kNotFound, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status data_loss(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kDataLoss, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status unimplemented(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kUnimplemented, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status internal_error(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kInternal, fmt::format(f, std::forward<Args>(args)...));
}

// A value or the Status saying why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace pp

// Return early from a function returning Status or Result<T> when `expr` fails.
#define PP_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::pp::Status pp_status_ = (expr);        \
    if (!pp_status_.ok()) return pp_status_; \
  } while (0)

#define PP_CONCAT_INNER_(a, b) a##b
#define PP_CONCAT_(a, b) PP_CONCAT_INNER_(a, b)
// PP_ASSIGN_OR_RETURN(auto x, make_x()); declares x from the Result's value or returns its Status.
#define PP_ASSIGN_OR_RETURN(lhs, expr) \
  PP_ASSIGN_OR_RETURN_IMPL_(PP_CONCAT_(pp_result_, __LINE__), lhs, expr)
#define PP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
