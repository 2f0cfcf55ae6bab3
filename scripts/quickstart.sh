#!/usr/bin/env bash
# The main job on a fresh machine: install, build, fetch the default model and have it answer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
scripts/build.sh
model=$(scripts/fetch-model.sh)
build=${PP_BUILD_DIR:-$root/build}
"$build/tools/pp-serve" --model "$model" --prompt "${1:-What is the capital of France? Answer in one sentence.}" \
  --max-tokens "${PP_MAX_TOKENS:-64}"
