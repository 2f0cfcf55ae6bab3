#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer (every library instrumented) in the sanitized tree that
# sanitize-tests.sh shares (scripts/configure-sanitized.sh: ${PP_SAN_BUILD_DIR:-build-san}), and
# runs each for SECONDS_PER_TARGET (default 60) on a scratch copy of its seed corpus
# (tests/fuzz/corpus/<target>/; the committed corpus never grows). Fails on any finding: the
# input that triggered it is kept under BUILD/fuzz-findings/ with the command that replays it.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      TARGET: safetensors, gguf, ...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
jobs=${PP_JOBS:-$(nproc)}

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in "$root"/tests/fuzz/fuzz-*.cpp; do
    t=$(basename "$f" .cpp)
    targets+=("${t#fuzz-}")
  done
fi

# -O1 with line tables: fast enough to fuzz, and findings name file and line.
build=$("$root/scripts/configure-sanitized.sh")
ninja -C "$build" -j"$jobs" "${targets[@]/#/fuzz-}" >&2

bin() { echo "$build/tests/fuzz/fuzz-$1"; }

# LeakSanitizer stops the process's threads with ptrace; where a container forbids that, it
# cannot run at all. Then leak detection alone is turned off (other findings stay fatal).
leaks=1
probe=$(ASAN_OPTIONS=detect_leaks=1 "$(bin "${targets[0]}")" -runs=1 2>&1 </dev/null || true)
if echo "$probe" | grep -q "LeakSanitizer has encountered a fatal error\|LeakSanitizer does not work"; then
  echo "fuzz: warning: LeakSanitizer cannot run here (ptrace is not allowed); leak detection off" >&2
  leaks=0
fi
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:print_stacktrace=1:detect_leaks=$leaks:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  work="$scratch/$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp -r "$root/tests/fuzz/corpus/$t/." "$work/corpus/"
  echo "fuzz: $t for ${secs}s ($(ls "$work/corpus" | wc -l) seeds)" >&2
  if "$(bin "$t")" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
      -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" \
      >"$work/log" 2>&1; then
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+[[:space:]]+DONE)" "$work/log" |
      sed "s/^/fuzz: $t: /" >&2 || true
  else
    echo "fuzz: error: $t found a problem:" >&2
    tail -n 60 "$work/log" >&2
    keep="$build/fuzz-findings/$t"
    mkdir -p "$keep"
    cp "$work"/artifacts/* "$keep/" 2>/dev/null || true
    cp "$work/log" "$keep/log"
    for a in "$keep"/*; do
      [ "$(basename "$a")" = log ] && continue
      echo "fuzz: replay with: $(bin "$t") $a" >&2
    done
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: error: findings in ${failed[*]} (inputs kept in $build/fuzz-findings)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs}s each: no finding"
