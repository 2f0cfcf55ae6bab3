#!/usr/bin/env bash
# The test command: installs dependencies, builds (CUDA too when nvcc is there, sm_90 only),
# fetches the default model, checks formatting, and runs every test except those labelled `gpu`
# (run those on a GPU machine with: ctest --test-dir build -L gpu); then the unit tests again
# under ASan and UBSan, and each fuzz target for ${PP_FUZZ_SECONDS:-15} s (docs/testing.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
scripts/check-format.sh
scripts/build.sh
scripts/fetch-model.sh >/dev/null
ctest --test-dir "${PP_BUILD_DIR:-$root/build}" -LE gpu --output-on-failure -j"$(nproc)" \
  --timeout 900 "$@"
scripts/sanitize-tests.sh
scripts/fuzz.sh "${PP_FUZZ_SECONDS:-15}"
