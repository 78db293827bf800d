#!/usr/bin/env bash
# Degraded reads and repair speed on a local 8-node 4+2 cluster (a record, never a test):
#   1. write a BENCH_FILE_MIB (default 1024) MiB random file;
#   2. read it back through a fresh mount with no block cache, after drop_caches: healthy,
#      with 1 node killed, with 2 nodes killed;
#   3. restart the master with a zero repair grace and time the rebuild of the 2 dead nodes'
#      shards on the other 6 (from the first rebuilt shard to the last, polling its status).
# Prints MiB/s and the ratios to the healthy read.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ensure_packages
build
SIZE=${BENCH_FILE_MIB:-1024}
B=/tmp/shardfs-bench-repair
export SHARDFS_HOME=$B/home SHARDFS_NODES=8 SHARDFS_EC=4+2
# No repair during the degraded reads.
export SHARDFS_REPAIR_GRACE_SECS=3600 SHARDFS_REPAIR_INTERVAL_MS=200 SHARDFS_NODE_TIMEOUT_MS=2000
cleanup() {
  fusermount3 -u -z "$B/r" 2>/dev/null || true
  "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$B" && mkdir -p "$B/mnt" "$B/r"
"$ROOT/scripts/cluster.sh" up "$B/mnt" >&2
MASTER=$SHARDFS_HOME/master.addr

say "writing $SIZE MiB"
head -c "${SIZE}M" /dev/urandom >"$B/src"
dd if="$B/src" of="$B/mnt/f" bs=1M conv=fsync status=none
want=$(sha256sum <"$B/src" | cut -d' ' -f1)

read_rate() { # prints MiB/s of a cold sequential read through a fresh mount
  "$BIN/shardfs" mount "$MASTER" "$B/r" --log-file "$B/home/logs/bench-read.log" >&2
  sync
  echo 3 >/proc/sys/vm/drop_caches
  local t0 t1 got
  t0=$(date +%s.%N)
  dd if="$B/r/f" of=/dev/null bs=1M status=none
  t1=$(date +%s.%N)
  got=$(sha256sum <"$B/r/f" | cut -d' ' -f1) # not timed
  "$BIN/shardfs" umount "$B/r" >&2
  [ "$got" = "$want" ] || die "read back differs"
  awk -v n="$SIZE" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}'
}

kill_node() {
  kill -9 "$(cat "$SHARDFS_HOME/run/node$1.pid")"
  sleep 3 # past the node timeout: the master reports it down
}

healthy=$(read_rate)
say "healthy read: $healthy MiB/s"
kill_node 1
one=$(read_rate)
say "1 node down: $one MiB/s"
kill_node 2
two=$(read_rate)
say "2 nodes down: $two MiB/s"

health() { "$BIN/shardfs" status "$MASTER" --json | python3 -c 'import json,sys; h=json.load(sys.stdin)["health"]; print(h["repaired_shards"], h["repaired_bytes"], h["degraded"])'; }
say "restarting the master with repair grace 0"
kill "$(cat "$SHARDFS_HOME/run/master.pid")"
while kill -0 "$(cat "$SHARDFS_HOME/run/master.pid")" 2>/dev/null; do sleep 0.1; done
SHARDFS_REPAIR_GRACE_SECS=0 "$BIN/shardfs-master" --data-dir "$SHARDFS_HOME/master" --listen 127.0.0.1:0 \
  --addr-file "$MASTER" --ec 4+2 >>"$SHARDFS_HOME/logs/master.log" 2>&1 &
echo $! >"$SHARDFS_HOME/run/master.pid"
t0="" t1=""
for _ in $(seq 1 6000); do
  read -r shards bytes degraded < <(health 2>/dev/null || echo "0 0 1")
  now=$(date +%s.%N)
  [ -z "$t0" ] && [ "$shards" -gt 0 ] && t0=$now
  if [ "$shards" -gt 0 ] && [ "$degraded" -eq 0 ]; then t1=$now; break; fi
  sleep 0.1
done
[ -n "$t1" ] || die "repair did not finish"
repair=$(awk -v n="$bytes" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/1048576/(b-a)}')
say "repair: $bytes bytes rebuilt at $repair MiB/s"
after=$(read_rate)

echo "| measure | MiB/s | ratio to healthy read |"
echo "|---|---|---|"
echo "| sequential read, healthy | $healthy | 1.00 |"
awk -v h="$healthy" -v v="$one" 'BEGIN{printf "| sequential read, 1 of 8 nodes down | %d | %.2f |\n", v, v/h}'
awk -v h="$healthy" -v v="$two" 'BEGIN{printf "| sequential read, 2 of 8 nodes down | %d | %.2f |\n", v, v/h}'
awk -v h="$healthy" -v v="$repair" -v b="$bytes" 'BEGIN{printf "| repair of 2 nodes'"'"' shards (%.0f MiB of shards rebuilt; first to last rebuilt shard, status polled every 0.1 s) | %d | %.2f |\n", b/1048576, v, v/h}'
awk -v h="$healthy" -v v="$after" 'BEGIN{printf "| sequential read after repair (2 nodes still down) | %d | %.2f |\n", v, v/h}'
