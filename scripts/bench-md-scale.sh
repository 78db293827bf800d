#!/usr/bin/env bash
# bench-md-scale.sh N: the master at scale. Starts a fresh local cluster (scripts/cluster.sh,
# binaries already built), measures mdbench create/stat of 2,000 files on the mount, fills the
# namespace with N empty files through the master protocol (fs-client/examples/md_fill), and
# measures again. Prints the master's resident memory (VmRSS, VmHWM) and RocksDB size before
# and after, per million files, and both rates. Needs root (drop_caches) and cc. Not in CI.
set -u
N=${1:-1000000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardfs-target}
LAB=${SHARDFS_LAB:-$HERE/../shared/lab}
MDB=/tmp/lab-bin/mdbench
if [ ! -x "$MDB" ]; then mkdir -p /tmp/lab-bin && cc -O2 -o "$MDB" "$LAB/bench/mdbench.c" || exit 2; fi
(cd "$HERE" && cargo build --release --example md_fill -p shardfs-client >/dev/null 2>&1) || exit 2
FILL=$CARGO_TARGET_DIR/release/examples/md_fill
H=/tmp/mdscale; SHARDFS_HOME=$H/home "$HERE/scripts/cluster.sh" down >/dev/null 2>&1
rm -rf $H; mkdir -p $H/mnt
SHARDFS_HOME=$H/home SHARDFS_SKIP_BUILD=1 "$HERE/scripts/cluster.sh" up $H/mnt > $H/up.log 2>&1 || { cat $H/up.log; exit 1; }
MP=$(cat $H/home/run/master.pid 2>/dev/null || pgrep -f "shardfs-master --data-dir $H/home/master")
mem() { awk '/^VmRSS|^VmHWM/ {printf "%s %d MiB  ", $1, $2/1024}' /proc/$MP/status; echo "rocksdb $(du -sm $H/home/master | cut -f1) MiB"; }
rates() {
  local D=$H/mnt/md$1; mkdir -p $D; sync; echo 3 > /proc/sys/vm/drop_caches
  set -- $("$MDB" create $D 2000 120); local c=$(awk -v n=$1 -v s=$2 'BEGIN{printf "%.0f", n/s}')
  sync; echo 3 > /proc/sys/vm/drop_caches
  set -- $("$MDB" stat $D 2000 120); local s=$(awk -v n=$1 -v s=$2 'BEGIN{printf "%.0f", n/s}')
  echo "create $c/s stat $s/s"
}
echo "empty:   $(mem)"; echo "empty:   $(rates 0)"
"$FILL" "$(cat $H/home/master.addr)" $H/home/client.cred "$N" 32
sleep 5
echo "$N files: $(mem)"; echo "$N files: $(rates 1)"
SHARDFS_HOME=$H/home "$HERE/scripts/cluster.sh" down >/dev/null 2>&1
