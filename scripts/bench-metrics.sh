#!/usr/bin/env bash
# The cost of a mount's metrics, one run: the lab's fsbench on two mounts of one launcher
# cluster, one without --http (no metrics kept, the default) and one with `--http
# 127.0.0.1:0` (every FUSE operation timed into histograms, scraped once a second as
# Prometheus would), alternating per round. Not run in CI.
#   scripts/bench-metrics.sh            (BENCH_ROUNDS=1; fsbench's FSB_* knobs apply)
set -u
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_packages
build
LAB=${SHARDFS_LAB:-$ROOT/../shared/lab}
[ -x "$LAB/bench/fsbench.sh" ] || die "measurement lab not found at $LAB (set SHARDFS_LAB)"
for t in fio jq curl; do command -v $t >/dev/null || apt-get install -y -q $t >/dev/null; done
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/shardfs-target}/release
H=/tmp/bench-metrics M=/tmp/bench-metrics-off N=/tmp/bench-metrics-on
RESULTS=${BENCH_RESULTS:-$H-results.jsonl}
SHARDFS_HOME=$H bash scripts/cluster.sh down >/dev/null 2>&1
rm -rf "$H" "$M" "$N" "$RESULTS"
mkdir -p "$M" "$N"
SHARDFS_HOME=$H SHARDFS_SKIP_BUILD=1 bash scripts/cluster.sh up "$M" >/dev/null 2>&1 ||
  die "the cluster did not start (logs in $H/logs)"
"$BIN/shardfs" mount "$H/master.addr" "$N" --credentials "$H/client.cred" \
  --http 127.0.0.1:0 --http-addr-file "$H/mount-on.http" --pid-file "$H/mount-on.pid" --log-file "$H/logs/mount-on.log" >/dev/null ||
  die "the second mount failed"
# A scraper, as Prometheus would run against the mount.
(while sleep 1; do curl -s "http://$(cat "$H/mount-on.http")/metrics" >/dev/null; done) &
SCRAPER=$!
trap 'kill $SCRAPER 2>/dev/null; "$BIN/shardfs" umount "$N" >/dev/null 2>&1; SHARDFS_HOME=$H bash scripts/cluster.sh down >/dev/null 2>&1' EXIT
for r in $(seq 1 "${BENCH_ROUNDS:-1}"); do
  for t in off on; do
    mp=$M
    [ $t = on ] && mp=$N
    say "round $r: metrics $t"
    FSB_RESULTS=$RESULTS "$LAB/bench/fsbench.sh" "$mp" "metrics-$t#$r" >/dev/null || say "fsbench ($t) failed"
  done
done
python3 "$LAB/bench/summarize.py" "$RESULTS"
hwm() { awk '/VmHWM/ {print $2, $3}' "/proc/$(cat "$1")/status" 2>/dev/null; }
echo "peak RSS of the mount without metrics: $(hwm "$H/run/mount.pid"), with: $(hwm "$H/mount-on.pid")"
