// PP_ASSERT: a bug, not an expected failure. Aborts with the file, line and condition.
#pragma once

namespace pp::detail {
[[noreturn]] void assert_fail(const char* cond, const char* file, int line, const char* msg);
}

#define PP_ASSERT(cond)                                                         \
  do {                                                                          \
    if (!(cond)) ::pp::detail::assert_fail(#cond, __FILE__, __LINE__, nullptr); \
  } while (0)
#define PP_ASSERT_MSG(cond, msg)                                              \
  do {                                                                        \
    if (!(cond)) ::pp::detail::assert_fail(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
