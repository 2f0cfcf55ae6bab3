#!/usr/bin/env bash
# Configures the one sanitized build tree that scripts/sanitize-tests.sh and scripts/fuzz.sh
# share, ${PP_SAN_BUILD_DIR:-build-san}, and prints its path: clang, -DPP_SANITIZE=ON
# (AddressSanitizer + UndefinedBehaviorSanitizer on every C and C++ target), -DPP_FUZZ=ON
# (every library instrumented for libFuzzer's coverage, and the fuzz targets), -O1 with line
# tables (ASan's recommended level; it compiles 17 % faster than -O2, measured on
# http-server.cpp, which saves CI more than the slower sanitized tests cost it). One tree
# rather than two (a gcc one for the unit tests, a clang one for the fuzzers): the libraries
# are compiled once, which saves CI about eight minutes on two cores. The coverage
# instrumentation costs the unit tests little (their run is seconds of a minutes-long step).
# Both scripts must configure it identically, or each would rebuild it: hence this file.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${PP_SAN_BUILD_DIR:-$root/build-san}
args=(-G Ninja -DPP_CUDA=OFF -DPP_SANITIZE=ON -DPP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1")
# Configured once per set of arguments (a stamp holds them): configuring an existing tree again
# reorders some pkg-config include folders, which changes every compile command and made
# fuzz.sh rebuild the whole tree after sanitize-tests.sh had built it (about three CI minutes).
# ninja itself reconfigures when a CMakeLists.txt changes.
stamp="$build/.pp-configure-args"
want="${PP_SAN_CC:-clang} ${PP_SAN_CXX:-clang++} ${args[*]}"
if [ ! -f "$build/build.ninja" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  CC=${PP_SAN_CC:-clang} CXX=${PP_SAN_CXX:-clang++} cmake -S "$root" -B "$build" "${args[@]}" >/dev/null
  echo "$want" >"$stamp"
fi
echo "$build"
