#!/usr/bin/env bash
# Soak run: pp-serve on a tiny model (CPU backend, 2 stages, a small KV pool and queue) under
# mixed load for MINUTES (default 30): streaming and not, cancellations, bad requests, requests
# that can never fit, bursts beyond the queue. Fails (non-zero exit) on a crash, an unanswered
# or wrongly answered request, KV blocks or requests left when idle, or idle memory growth.
# Uses the build in ${PP_BUILD_DIR:-build} (built first when pp-serve is missing); extra
# arguments go to tests/python/soak.py (--seed N repeats a run, --json FILE keeps the numbers).
#
#   scripts/soak.sh          # 30 minutes
#   scripts/soak.sh 2        # 2 minutes
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=30
if [[ $# -gt 0 && $1 != -* ]]; then
  minutes=$1
  shift
fi
export PP_SOURCE_DIR="$root"
export PP_BUILD_DIR=${PP_BUILD_DIR:-$root/build}
# Passive OpenMP waiting: the stages share a few cores (as in the tests).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if [[ ! -x $PP_BUILD_DIR/tools/pp-serve || ! -x $PP_BUILD_DIR/tools/pp-stage ]]; then
  "$root/scripts/build.sh"
fi
exec python3 "$root/tests/python/soak.py" --minutes "$minutes" "$@"
