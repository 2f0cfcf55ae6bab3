#!/usr/bin/env bash
# The main job on a fresh machine: install, build, fetch the default model, partition it into
# two pipeline stages, serve it with the OpenAI-compatible API, ask it one chat question through
# that API, print the answer, run a short serving benchmark against it and stop the server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
scripts/build.sh
model=$(scripts/fetch-model.sh)
build=${PP_BUILD_DIR:-$root/build}
question=${1:-What is the capital of France? Answer in one sentence.}
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. Partition the model into two stages.
"$build/tools/pp-partition" split "$model" --pp 2 -o "$work/partition" --db "$work/runs.db" >&2
# 2. Serve it: pp-serve starts one pp-stage process per stage; port 0 picks a free port.
# PP_DEVICE=cuda runs the two stages on two GPUs (NCCL between them) instead of the CPU.
"$build/tools/pp-serve" --model "$work/partition" --port 0 --served-model-name smollm2 \
  --device "${PP_DEVICE:-cpu}" --db "$work/runs.db" 2>"$work/serve.log" &
server_pid=$!
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's|.*listening on http://[^:]*:\([0-9]*\).*|\1|p' "$work/serve.log" | head -n 1)
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "quickstart: pp-serve did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "quickstart: serving on http://127.0.0.1:$port (2 stages)" >&2
# 3. One chat request through the API; print the answer.
request=$(python3 -c 'import json, sys; print(json.dumps({"model": "smollm2", "temperature": 0,
  "max_tokens": int(sys.argv[2]), "messages": [{"role": "user", "content": sys.argv[1]}]}))' \
  "$question" "${PP_MAX_TOKENS:-64}")
curl -sS --fail-with-body "http://127.0.0.1:$port/v1/chat/completions" \
  -H 'Content-Type: application/json' -d "$request" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
# 4. A short benchmark against the same server (recorded in the run store of this run).
"$build/tools/pp-bench" serve --base-url "http://127.0.0.1:$port" --backend openai \
  --model smollm2 --dataset-name random-ids --tokenizer "$work/partition/tokenizer.json" \
  --num-prompts "${PP_BENCH_PROMPTS:-32}" --random-input-len 128 --random-output-len 32 \
  --random-range-ratio 0.5 --max-concurrency 16 --ignore-eos --disable-progress \
  --db "$work/runs.db" --label quickstart
# 5. Stop the server (SIGTERM drains it and stops its stages).
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=""
