#!/usr/bin/env bash
# Configures and builds pp into ${PP_BUILD_DIR:-build}. The CUDA backend is built when nvcc is
# found (for sm_90 unless CMAKE_CUDA_ARCHITECTURES says otherwise); PP_CUDA=OFF skips it.
# Structured output needs xgrammar's sources, fetched from PyPI first (scripts/fetch-xgrammar.sh);
# PP_XGRAMMAR=OFF, or no network, builds without it. Extra arguments go to cmake.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${PP_BUILD_DIR:-$root/build}
export PATH="$PATH:/usr/local/cuda/bin"
xgrammar=""
if [ "${PP_XGRAMMAR:-ON}" != OFF ]; then
  xgrammar=$("$root/scripts/fetch-xgrammar.sh") ||
    { echo "build: warning: could not fetch xgrammar; building without structured output" >&2; xgrammar=""; }
fi
cmake -S "$root" -B "$build" -G Ninja -DPP_CUDA="${PP_CUDA:-AUTO}" -DPP_XGRAMMAR_DIR="$xgrammar" \
  -DCMAKE_CUDA_ARCHITECTURES="${CMAKE_CUDA_ARCHITECTURES:-90}" "$@" >&2
ninja -C "$build" -j"${PP_JOBS:-$(nproc)}" >&2
