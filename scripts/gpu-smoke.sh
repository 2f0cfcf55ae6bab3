#!/usr/bin/env bash
# The GPU smoke test: on a machine with an NVIDIA GPU, every GPU test (test-cuda: kernels
# against their CPU twins, the GPU stage model against the CPU one, the engine over NCCL giving
# the same tokens for every P the GPUs allow), then the engine end to end through pp-bench
# offline on one GPU, and on two when there are two: a small Qwen3-shaped model with random
# weights, every request answered with all its tokens.
#
#   scripts/gpu-smoke.sh [BIN_DIR]
#
# BIN_DIR holds pp-bench, pp-stage and test-cuda (default: build/tools and build/tests of a build
# made on the GPU machine). With a bundle made by scripts/device-bundle.sh, pass its bin/ and set
# LD_LIBRARY_PATH to its lib/ (docs/testing.md). Exits non-zero on the first failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
if [[ -z $bin ]]; then
  bash "$root/scripts/build.sh"
  ninja -C "$root/build" test-cuda >&2
  mkdir -p "$root/build/smoke-bin"
  ln -sf "$root/build/tools/pp-bench" "$root/build/tools/pp-stage" "$root/build/tests/test-cuda" \
    "$root/build/smoke-bin/"
  bin=$root/build/smoke-bin
fi
export NCCL_NVLS_ENABLE=0 PP_SOURCE_DIR=$root PP_STAGE_BINARY=$bin/pp-stage
n_gpu=$(nvidia-smi -L | grep -c '^GPU')
echo "gpu-smoke: $n_gpu GPU(s)"

echo "== test-cuda"
"$bin/test-cuda" --gtest_brief=1

# The engine end to end through the stage processes: every request completes.
cfg=$root/tests/fixtures/configs/smoke-qwen3.json
bench() {  # device pp
  echo "== pp-bench offline --device $1 --pp $2"
  "$bin/pp-bench" offline --model "$cfg" --random-weights 7 --device "$1" --pp "$2" \
    --num-prompts 32 --random-input-len 200 --random-output-len 64 --random-range-ratio 0.5 \
    --vocab-size 32000 --ignore-eos --disable-progress --db "$(mktemp -d)/runs.db" 2>&1 |
    grep -E "Successful requests|Output token throughput|stage .: busy"
}
bench cuda 1
[[ $n_gpu -ge 2 ]] && bench cuda 2
echo "gpu-smoke: ok"
