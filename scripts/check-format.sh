#!/usr/bin/env bash
# Fails when a C++ or CUDA source is not formatted by .clang-format (Google base, 100 columns).
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh')
[ -z "$files" ] && exit 0
if ! clang-format --dry-run --Werror $files; then
  echo "check-format: error: run 'clang-format -i' on the files above" >&2
  exit 1
fi
echo "check-format: $(echo "$files" | wc -l) files formatted"
