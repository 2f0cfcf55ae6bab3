#!/usr/bin/env bash
# The test command: installs dependencies, builds (CUDA too when nvcc is there, sm_90 only),
# fetches the default model, checks formatting, and runs every test except those labelled `gpu`
# (run those on a GPU machine with: ctest --test-dir build -L gpu) and `bench_serving` (SGLang's
# client against pp-serve: too long for CI, docs/testing.md); then the unit tests again
# under ASan and UBSan, and each fuzz target for ${PP_FUZZ_SECONDS:-10} s (docs/testing.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$SECONDS
step() {  # name command...: runs a step and says how long it took (CI keeps the whole run short)
  local name=$1 t0=$SECONDS
  shift
  "$@"
  echo "test.sh: $name took $((SECONDS - t0)) s ($((SECONDS - start)) s so far)" >&2
}
step setup scripts/setup.sh
step format scripts/check-format.sh
step build scripts/build.sh
step model scripts/fetch-model.sh >/dev/null
step tests ctest --test-dir "${PP_BUILD_DIR:-$root/build}" -LE "gpu|bench_serving" --output-on-failure \
  -j"$(nproc)" --timeout 900 "$@"
step sanitizers scripts/sanitize-tests.sh
step fuzz scripts/fuzz.sh "${PP_FUZZ_SECONDS:-10}"
