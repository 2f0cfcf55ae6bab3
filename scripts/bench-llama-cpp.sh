#!/usr/bin/env bash
# pp against llama.cpp on the CPU, side by side: the same GGUF file, the same thread count, the
# same lengths (batch-1 decode, 16-sequence decode, a 512-token prefill), both printed.
#
# llama.cpp comes from the llama-cpp-python sdist on PyPI (its vendor/llama.cpp), downloaded and
# built once in a cache folder outside the tree ($PP_LLAMA_CACHE, default ~/.cache/pp/llama.cpp):
# llama-bench for batch-1 decode and prefill, llama-batched-bench for 16 sequences. pp's runs are
# `pp-bench offline` runs, recorded in the run store (labels llama-cmp-*; --db with PP_BENCH_DB).
#
#   scripts/bench-llama-cpp.sh [MODEL.gguf]
#   env: THREADS (2), LLAMA_CPP_PYTHON_VERSION (0.3.36), PP_BUILD_DIR (build), PP_CPU_DTYPE (auto),
#        LLAMA_REPS (llama-bench repetitions, 3)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$HOME/.cache/pp/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-2}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${PP_LLAMA_CACHE:-$HOME/.cache/pp/llama.cpp}
PP_BENCH=${PP_BUILD_DIR:-$ROOT/build}/tools/pp-bench
CPU_DTYPE=${PP_CPU_DTYPE:-auto}
DB_ARGS=()
if [[ -n "${PP_BENCH_DB:-}" ]]; then DB_ARGS=(--db "$PP_BENCH_DB"); fi

[[ -f "$MODEL" ]] || { echo "bench-llama-cpp: no model '$MODEL'" >&2; exit 1; }
[[ -x "$PP_BENCH" ]] || { echo "bench-llama-cpp: no '$PP_BENCH' (build pp first)" >&2; exit 1; }

# --- llama.cpp, built once
mkdir -p "$CACHE"
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
  python3 -m pip download --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION" -d "$CACHE"
fi
SRC="$CACHE/llama_cpp_python-$VERSION"
[[ -d "$SRC" ]] || tar -xzf "$SDIST" -C "$CACHE"
BUILD="$CACHE/build-$VERSION"
BIN="$BUILD/bin"
if [[ ! -x "$BIN/llama-bench" || ! -x "$BIN/llama-batched-bench" ]]; then
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  ninja -C "$BUILD" -j "$THREADS" llama-bench llama-batched-bench
fi

# --- llama.cpp's numbers
echo "== llama.cpp ($VERSION), $THREADS threads: $MODEL"
# --repack 0 / --no-repack: the AMX extra buffer type (built when the CPU reports AMX) crashed
# llama-bench in ggml_backend_amx_mul_mat on the development VM; the plain CPU kernels run.
LB=$("$BIN/llama-bench" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r "${LLAMA_REPS:-3}" \
  --repack 0 -o json 2>/dev/null)
read -r L_PP L_TG < <(python3 -c '
import json, sys
rows = json.loads(sys.stdin.read())
get = lambda p, n: next(r["avg_ts"] for r in rows if r["n_prompt"] == p and r["n_gen"] == n)
print(f"{get(512, 0):.1f} {get(0, 128):.1f}")' <<<"$LB")
BB=$("$BIN/llama-batched-bench" -m "$MODEL" -t "$THREADS" -c 4096 -b 2048 -ub 512 --no-repack \
  -npp 32 -ntg 128 -npl 16 2>/dev/null)
echo "$BB" | grep -E '^\|' || true
# The row's S_TG t/s column: decode tokens per second of the 16 sequences.
L_B16=$(echo "$BB" | awk -F'|' '/^\|[[:space:]]+32 \|/ {gsub(/ /, "", $9); print $9}' | tail -1)

# --- pp's numbers, the same lengths (pp-bench offline, recorded in the run store)
echo "== pp (--cpu-dtype $CPU_DTYPE), $THREADS threads"
run_pp() {  # label, then pp-bench offline arguments
  local label=$1
  shift
  "$PP_BENCH" offline --model "$MODEL" --pp 1 --async-depth 0 --threads-per-stage "$THREADS" \
    --cpu-dtype "$CPU_DTYPE" --random-range-ratio 1 --ignore-eos --label "$label" \
    "${DB_ARGS[@]}" "$@" 2>/dev/null
}
metric() { awk -F: -v k="$1" '$1 ~ k {gsub(/ /, "", $2); print $2}' | head -1; }
OUT=$(run_pp llama-cmp-decode-batch1 --num-prompts 4 --max-concurrency 1 \
  --random-input-len 32 --random-output-len 128)
P_TG=$(echo "$OUT" | metric "Median TPOT" | awk '{printf "%.1f", 1000 / $1}')
OUT=$(run_pp llama-cmp-decode-batch16 --num-prompts 32 --max-concurrency 16 \
  --max-running-requests 16 --random-input-len 32 --random-output-len 128)
P_B16=$(echo "$OUT" | metric "Median TPOT" | awk '{printf "%.1f", 16000 / $1}')
OUT=$(run_pp llama-cmp-prefill512 --num-prompts 4 --max-concurrency 1 \
  --random-input-len 512 --random-output-len 1)
P_PP=$(echo "$OUT" | metric "Median TTFT" | awk '{printf "%.1f", 512000 / $1}')

printf '\n| tokens/s, %s threads | pp | llama.cpp | pp / llama.cpp |\n|---|---|---|---|\n' "$THREADS"
row() { awk -v n="$1" -v p="$2" -v l="$3" 'BEGIN {printf "| %s | %s | %s | %.2f |\n", n, p, l, p / l}'; }
row "decode, batch 1" "$P_TG" "$L_TG"
row "decode, 16 sequences" "$P_B16" "$L_B16"
row "prefill, 512 tokens" "$P_PP" "$L_PP"
