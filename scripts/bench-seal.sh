#!/usr/bin/env bash
# Sealing, measured: write amplification of fsync'd 4 KiB random writes before sealing, and
# stored bytes / logical bytes once the master has sealed them into erasure-coded blocks.
#
#   scripts/bench-seal.sh [SIZE_MIB] [WRITES]     (defaults: 1024 MiB file, 20000 writes)
#
# Starts its own cluster (scripts/cluster.sh, 6 nodes, 4+2) in a temporary SHARDFS_HOME with a
# 5 s quiet period (and a 5 s collector grace), writes a SIZE_MIB file sequentially, makes WRITES 4 KiB writes at random
# page offsets with an fsync every 16, then waits for `shardfs status` to show no file left to
# seal. Prints the figures; not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
WRITES=${2:-20000}
export SHARDFS_HOME=${SHARDFS_HOME:-$(mktemp -d /tmp/shardfs-seal-XXXX)}
export SHARDFS_SEAL_QUIET_SECS=5
# Replaced pieces and blocks are deleted 5 s after they lose their last reference.
export SHARDFS_GC_GRACE_SECS=5
MNT=$SHARDFS_HOME/mnt
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/shardfs-target}/release
stored() { du -sb --apparent-size "$SHARDFS_HOME"/node*/shards 2>/dev/null | awk '{s+=$1} END {printf "%.0f\n", s}'; }
cleanup() { scripts/cluster.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT
scripts/cluster.sh up "$MNT" >/dev/null
dd if=/dev/urandom of="$MNT/f" bs=1M count="$SIZE_MIB" status=none
sync "$MNT/f"
base=$(stored)
python3 - "$MNT/f" "$SIZE_MIB" "$WRITES" <<'PY'
import os, random, sys
path, size, n = sys.argv[1], int(sys.argv[2]) << 20, int(sys.argv[3])
fd = os.open(path, os.O_WRONLY)
rnd = random.Random(7)
pages = size // 4096
for i in range(n):
    os.pwrite(fd, os.urandom(4096), rnd.randrange(pages) * 4096)
    if i % 16 == 15:
        os.fsync(fd)
os.fsync(fd)
os.close(fd)
PY
written=$((WRITES * 4096))
after=$(stored)
echo "4 KiB random writes: $WRITES, fsync every 16; bytes stored for them: $((after - base))"
awk -v s="$((after - base))" -v w="$written" 'BEGIN { printf "write amplification before sealing: %.2f\n", s / w }'
start=$(date +%s)
until "$BIN/shardfs" status "$SHARDFS_HOME/master.addr" --json | grep -q '"unsealed_files":0'; do
  sleep 2
  [ $(( $(date +%s) - start )) -lt 3600 ] || { echo "not sealed within an hour" >&2; exit 1; }
done
sealed_in=$(( $(date +%s) - start ))
status=$("$BIN/shardfs" status "$SHARDFS_HOME/master.addr" --json)
sealed_bytes=$(echo "$status" | sed -n 's/.*"sealed_bytes":\([0-9]*\).*/\1/p')
awk -v b="$sealed_bytes" -v w="$written" 'BEGIN { printf "sealing rewrote %.0f MiB of blocks (%.0f MiB of shards in 4+2): %.1fx the small writes\n", b / 1048576, b * 1.5 / 1048576, b * 1.5 / w }'
# The collector deletes what sealing replaced once its grace is over: wait until the stored
# bytes stop falling.
final=$(stored)
while sleep 10; prev=$final; final=$(stored); [ "$final" -lt "$prev" ]; do :; done
awk -v s="$final" -v l="$((SIZE_MIB << 20))" -v t="$sealed_in" \
  'BEGIN { printf "sealed in %d s; stored / logical after sealing: %.4f\n", t, s / l }'
"$BIN/shardfs" status "$SHARDFS_HOME/master.addr" | tail -1
