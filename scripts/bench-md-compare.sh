#!/usr/bin/env bash
# bench-md-compare.sh ROUNDS N: the lab's mdbench phases (create, stat, rename, unlink of N
# files in one directory, caches dropped before each) on two builds of ShardFS, rounds
# interleaved so both see the same machine. SHARDFS_OLD: a checkout of the older version,
# SHARDFS_OLD_TARGET its cargo target dir (binaries already built); the newer is this
# checkout with its binaries in CARGO_TARGET_DIR (default ~/.cache/shardfs-target).
# Prints one line per build per round, ops/s per phase, and (when the lab's tree tarball is in
# /tmp/lab-fsbench-cache, as fsbench leaves it) files/s extracting it with syncfs.
# Needs root (drop_caches) and cc.
set -u
R=${1:-2}; N=${2:-2000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OLD=${SHARDFS_OLD:?set SHARDFS_OLD to a checkout of the older version}
OLD_TARGET=${SHARDFS_OLD_TARGET:?set SHARDFS_OLD_TARGET to its target dir}
LAB=${SHARDFS_LAB:-$HERE/../shared/lab}
MDB=/tmp/lab-bin/mdbench
if [ ! -x "$MDB" ]; then mkdir -p /tmp/lab-bin && cc -O2 -o "$MDB" "$LAB/bench/mdbench.c" || exit 2; fi
for r in $(seq $R); do
for which in old new; do
  H=/tmp/mdcmp-$which; rm -rf $H; mkdir -p $H/mnt
  if [ $which = old ]; then
    SHARDFS_HOME=$H/home CARGO_TARGET_DIR=$OLD_TARGET SHARDFS_SKIP_BUILD=1 "$OLD/scripts/cluster.sh" up $H/mnt > $H/up.log 2>&1
  else
    SHARDFS_HOME=$H/home SHARDFS_SKIP_BUILD=1 "$HERE/scripts/cluster.sh" up $H/mnt > $H/up.log 2>&1
  fi
  D=$H/mnt/md; mkdir -p $D; line="$which r$r:"
  for ph in create stat rename unlink; do
    sync; echo 3 > /proc/sys/vm/drop_caches
    out=$("$MDB" $ph $D $N 120); set -- $out
    line="$line $ph $(awk -v n=$1 -v s=$2 'BEGIN{printf "%.0f", n/s}')/s"
  done
  TAR=$(ls /tmp/lab-fsbench-cache/tree-*.tar 2>/dev/null | head -1)
  if [ -n "$TAR" ]; then
    nf=$(tar -tf "$TAR" | grep -vc '/$'); mkdir -p $H/mnt/tree; sync; echo 3 > /proc/sys/vm/drop_caches
    cat "$TAR" > /dev/null
    t0=$(date +%s.%N); tar -C $H/mnt/tree --no-same-owner -xf "$TAR" && sync -f $H/mnt/tree; t1=$(date +%s.%N)
    line="$line untar $(awk -v n=$nf -v a=$t0 -v b=$t1 'BEGIN{printf "%.0f", n/(b-a)}')/s"
  fi
  echo "$line load $(cut -d' ' -f1 /proc/loadavg)"
  if [ $which = old ]; then SHARDFS_HOME=$H/home "$OLD/scripts/cluster.sh" down >/dev/null 2>&1; else SHARDFS_HOME=$H/home "$HERE/scripts/cluster.sh" down > /dev/null 2>&1; fi
done; done
