#!/usr/bin/env bash
# Run the chaos test (8 nodes, 4+2, a node killed or restarted every 1-2.5 s, never more than 2
# down, 1 GiB written in 16 MiB files) N times in a row (default 10). Stops at the first
# failure and keeps its log. Prints each run's summary: time, per-file write latency, failures.
#   scripts/chaos-loop.sh [RUNS]
set -euo pipefail
source "$(dirname "$0")/common.sh"
ensure_packages
build
cd "$ROOT"
runs=${1:-10}
for i in $(seq "$runs"); do
  log=$(mktemp /tmp/shardfs-chaos-XXXXXX.log)
  t0=$(date +%s)
  if ! cargo test --release -p shardfs-tests --test chaos writes_survive -- --nocapture >"$log" 2>&1; then
    say "run $i of $runs FAILED after $(( $(date +%s) - t0 )) s; log: $log"
    grep -E "panicked|chaos:|failed \(" "$log" >&2 || true
    exit 1
  fi
  say "run $i of $runs ($(( $(date +%s) - t0 )) s): $(grep '^chaos:' "$log" || echo 'no summary')"
  rm -f "$log"
done
say "$runs of $runs runs passed"
