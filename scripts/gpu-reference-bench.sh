#!/usr/bin/env bash
# The GPU pipeline reference benchmark (issues 8 and 9): a Qwen3-8B-shaped model with random
# bf16 weights, random token ids, 128 prompts of 1000 input and 1000 output tokens (range ratio
# 0.9), all sent at once, EOS ignored; PP = 1 against PP = 2 (and 4 with four GPUs) at several
# async depths, with --max-running-requests 128 and 20; then a Poisson-arrival run for the ITL
# tail. Every run goes to the run store ($DB) and one JSON line to $OUT_DIR/runs.jsonl; the
# main runs also leave a trace, a timeline picture of steady decode and a per-stage analysis.
#
#   scripts/gpu-reference-bench.sh OUT_DIR [MAX_PP]      (MAX_PP: 2 by default, 4 on 4 GPUs)
#
# Needs pp-bench and pp-stage on PATH or in $PP_BIN, and NCCL_NVLS_ENABLE=0 on NVLink hosts.
set -uo pipefail
out=${1:?usage: gpu-reference-bench.sh OUT_DIR [MAX_PP]}
max_pp=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${PP_BIN:-$(dirname "$(command -v pp-bench)")}
config=${PP_CONFIG:-$root/tests/fixtures/configs/qwen3-8b.json}
db=${DB:-$out/runs.db}
export NCCL_NVLS_ENABLE=0
mkdir -p "$out"

run() {  # label pp depth running [extra args...]
  local label=$1 pp=$2 depth=$3 running=$4
  shift 4
  echo "== $label: pp=$pp depth=$depth max-running=$running $*"
  "$bin/pp-bench" offline --model "$config" --random-weights 1 --device cuda --pp "$pp" \
    --async-depth "$depth" --max-running-requests "$running" --num-prompts "${PROMPTS:-128}" \
    --random-input-len "${IN_LEN:-1000}" --random-output-len "${OUT_LEN:-1000}" --random-range-ratio "${RATIO:-0.9}" \
    --vocab-size 151936 --ignore-eos --disable-progress --label "$label" --db "$db" \
    --output-file "$out/runs.jsonl" "$@" >"$out/$label.log" 2>&1
  local rc=$?
  grep -E "Output token throughput|Mean ITL|Median ITL|P99 ITL|Mean TTFT|stage .: busy" \
    "$out/$label.log" | tr -s ' ' | paste -sd';'
  [[ $rc == 0 ]] || { echo "FAILED rc=$rc"; tail -5 "$out/$label.log"; }
}

traced() {  # label pp depth running [extra...]: run with a trace, then analyse and draw it
  local label=$1
  run "$@" --trace "$out/$label.trace.json"
  python3 "$root/scripts/analyze-trace.py" "$out/$label.trace.json" | tee "$out/$label.stages"
  local ms
  ms=$(python3 -c "import json,sys;d=json.load(open(sys.argv[1]));d=d['traceEvents'] if isinstance(d,dict) else d;e=[x for x in d if x.get('ph')=='X'];t0=min(x['ts'] for x in e);t1=max(x['ts']+x['dur'] for x in e);print((t1-t0)/1e3*0.6)" "$out/$label.trace.json")
  "$bin/pp-bench" timeline "$out/$label.trace.json" -o "$out/$label.svg" --from-ms "$ms" \
    --to-ms "$(python3 -c "print($ms+150)")" >/dev/null
}

phase=${PHASE:-all}  # main: the 128-running runs; wide: 20-running and PP=4; steps: step times
layers2=${LAYERS2:-}  # e.g. 0-19,20-35: the PP=2 split (default even)
layers4=${LAYERS4:-}
split2=(${layers2:+--layers $layers2})
split4=(${layers4:+--layers $layers4})
if [[ $phase == depth ]]; then
  # PP = 2 at each depth, and PP = 1 with the same requests per micro-batch as PP = 2 depth 0.
  run pp1-d0-r64 1 0 64 --max-batch-tokens 4096
  for d in 0 1 2; do traced pp2-d$d-r128 2 $d 128 --max-batch-tokens 4096 "${split2[@]}"; done
fi
if [[ $phase == final ]]; then
  # One machine, one call: PP = 1, 2 and 4 side by side (issue 9), the step times, the tail.
  PP_GPU_PROFILE=1 PROMPTS=1 IN_LEN=128 OUT_LEN=512 traced step-b1 1 0 1 --max-batch-tokens 4096
  PP_GPU_PROFILE=1 PROMPTS=64 IN_LEN=4096 OUT_LEN=64 RATIO=1 run step-b64-ctx4096 1 0 64 \
    --max-batch-tokens 8192
  PROMPTS=1 IN_LEN=4096 OUT_LEN=1 RATIO=1 run prefill-4096 1 0 1 --max-batch-tokens 8192 \
    --warmup-requests 2
  traced pp1-d0-r128 1 0 128 --max-batch-tokens 4096
  run pp1-d0-r64 1 0 64 --max-batch-tokens 4096
  run pp1-d0-r32 1 0 32 --max-batch-tokens 4096
  for d in 0 1 2; do traced pp2-d$d-r128 2 $d 128 --max-batch-tokens 4096 "${split2[@]}"; done
  if [[ $max_pp -ge 4 ]]; then
    for d in 0 1 2; do traced pp4-d$d-r128 4 $d 128 --max-batch-tokens 4096 "${split4[@]}"; done
  fi
  for d in 0 1; do run pp2-d$d-r20 2 $d 20 --max-batch-tokens 4096 "${split2[@]}"; done
fi
if [[ $phase == all || $phase == steps ]]; then
  # Issue 7's step-time targets, on one GPU: a decode step at batch 1 and at batch 64 with 4096
  # tokens of context, and a 4096-token prefill (TTFT). PP_GPU_PROFILE logs forward and sampling
  # GPU times per step.
  PP_GPU_PROFILE=1 PROMPTS=1 IN_LEN=128 OUT_LEN=512 traced step-b1 1 0 1 --max-batch-tokens 4096
  PP_GPU_PROFILE=1 PROMPTS=64 IN_LEN=4096 OUT_LEN=64 RATIO=1 traced step-b64-ctx4096 1 0 64 \
    --max-batch-tokens 8192
  PROMPTS=1 IN_LEN=4096 OUT_LEN=1 RATIO=1 run prefill-4096 1 0 1 --max-batch-tokens 8192 \
    --warmup-requests 2
  PP_GPU_PROFILE=1 traced pp2-d0-r128-prof 2 0 128 --max-batch-tokens 4096 "${split2[@]}"
fi
if [[ $phase == all || $phase == main ]]; then
# Throughput, all at once, 128 running (one micro-batch per group holds 128 / (P + depth)).
traced pp1-d0-r128 1 0 128 --max-batch-tokens 4096
run pp1-d1-r128 1 1 128 --max-batch-tokens 4096
for d in 0 1 2; do traced pp2-d$d-r128 2 $d 128 --max-batch-tokens 4096 "${split2[@]}"; done
run pp2-d3-r128 2 3 128 --max-batch-tokens 4096 "${split2[@]}"
# Scaling at equal requests per micro-batch: PP=1 M=1 with 64 vs PP=2 M=2 with 128.
run pp1-d0-r64 1 0 64 --max-batch-tokens 4096
fi
if [[ $phase == all || $phase == wide ]]; then
# As the reference: 20 running.
run pp1-d0-r20 1 0 20 --max-batch-tokens 4096
if [[ $max_pp -ge 4 ]]; then
  for d in 0 1 2; do traced pp4-d$d-r128 4 $d 128 --max-batch-tokens 4096 "${split4[@]}"; done
  run pp1-d0-r32 1 0 32 --max-batch-tokens 4096
  run pp1-d0-r128 1 0 128 --max-batch-tokens 4096
  run pp2-d0-r128 2 0 128 --max-batch-tokens 4096 "${split2[@]}"
  for d in 0 1 2; do run pp4-d$d-r20 4 $d 20 --max-batch-tokens 4096 "${split4[@]}"; done
fi
for d in 0 1 2; do run pp2-d$d-r20 2 $d 20 --max-batch-tokens 4096 "${split2[@]}"; done
fi
if [[ $phase == all || $phase == main || $phase == final ]]; then
# Arrivals over time at 80% of the all-at-once request throughput of PP=2 depth 1: the ITL
# tail with small prefill chunks.
rate=${RATE:-$(python3 -c "
import json,sys
rs=[json.loads(l) for l in open(sys.argv[1])]
r=[x for x in rs if x.get('label')=='pp2-d1-r128']
print(round(0.8*r[-1]['request_throughput'],2) if r else 3)" "$out/runs.jsonl")}
traced pp2-d1-rate 2 1 128 --max-batch-tokens 256 --request-rate "$rate" "${split2[@]}"
fi
