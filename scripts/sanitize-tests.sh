#!/usr/bin/env bash
# The unit tests under AddressSanitizer and UndefinedBehaviorSanitizer: configures the sanitized
# tree that fuzz.sh shares (scripts/configure-sanitized.sh: ${PP_SAN_BUILD_DIR:-build-san},
# clang, CPU only), builds test-kernels, test-model and test-pp (and pp-stage, which they
# start), and runs them with
# `ctest -LE "gpu|slow"`. Every finding is fatal: an ASan report, a UBSan report
# (-fno-sanitize-recover) or a leak fails the test that caused it.
# Extra arguments go to ctest (e.g. -R Wire).
#
# Left out, for time only (each runs minutes of the 135M default model's forward passes, which
# ASan slows several times; the tiny-model and fixture versions of the same code paths stay in):
# the tests matching $heavy below. Run everything with PP_SAN_ALL=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${PP_JOBS:-$(nproc)}
binaries=(test-kernels test-model test-pp)

build=$("$root/scripts/configure-sanitized.sh")
# pp-stage too: the engine tests run their stages as pp-stage processes, sanitized like the rest.
ninja -C "$build" -j"$jobs" "${binaries[@]}" pp-stage >&2

# LeakSanitizer stops the process's threads with ptrace; where a container forbids that, it
# cannot run at all. Then leak detection alone is turned off (other findings stay fatal).
leaks=1
probe=$(ASAN_OPTIONS=detect_leaks=1 "$build/tests/test-kernels" --gtest_list_tests 2>&1 || true)
if echo "$probe" | grep -q "LeakSanitizer has encountered a fatal error\|LeakSanitizer does not work"; then
  echo "sanitize-tests: warning: LeakSanitizer cannot run here (ptrace is not allowed); leak detection off" >&2
  leaks=0
fi
# One suppression, for libzmq (4.3.4, Debian 12): now and then (about 1 run in 3 of the ipc
# channel tests) LeakSanitizer reports one block of 78 bytes allocated on a libzmq I/O thread,
# with no pp frame on its stack: a message of 38 bytes, the length of the test's
# "ipc:///tmp/pp-test-XXXXXX/control.sock", i.e. a socket monitor event's address frame still
# queued inside libzmq when the sockets close (pp reads messages only through cppzmq's RAII
# message_t). The cost: a zmq message pp itself leaked would be hidden too.
supp="$build/lsan-suppressions.txt"
echo "leak:libzmq.so" >"$supp"
export LSAN_OPTIONS="suppressions=$supp:print_suppressions=0"
export ASAN_OPTIONS="halt_on_error=1:print_stacktrace=1:detect_leaks=$leaks:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

heavy="DefaultModel|RealModels|smollm2_"
exclude=()
[ "${PP_SAN_ALL:-0}" = 1 ] || exclude=(-E "$heavy")
labels=$(IFS='|'; echo "${binaries[*]}")
ctest --test-dir "$build" -L "^($labels)\$" -LE "gpu|slow" "${exclude[@]}" --output-on-failure \
  -j"$jobs" --timeout 900 "$@"
