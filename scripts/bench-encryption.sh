#!/usr/bin/env bash
# The cost of encryption at rest, one run: sequential write and read of 512 MiB (dd) and 4 KiB
# random writes with fsync and random reads (fio, 20 s each, 256 MiB file), on a launcher
# cluster made as usual (encrypted) and one made with `shardfs-master --no-encryption`. Reads
# go through a second mount with no block cache (--cache-mib 0), after dropping the kernel's
# page cache, so they decrypt what the nodes send. Not run in CI.
#   scripts/bench-encryption.sh
set -u
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_packages
build
command -v fio >/dev/null || apt-get install -y -q fio >/dev/null
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/shardfs-target}/release
sed 's/--http 127.0.0.1:0 --ec/--http 127.0.0.1:0 --no-encryption --ec/' scripts/cluster.sh >scripts/.cluster-plain.sh
trap 'rm -f scripts/.cluster-plain.sh' EXIT
for mode in encrypted plain; do
  H=/tmp/bench-enc-$mode M=/tmp/bench-enc-mnt-$mode R=/tmp/bench-enc-read-$mode
  rm -rf "$H" "$M" "$R"
  mkdir -p "$M" "$R"
  script=scripts/cluster.sh
  [ $mode = plain ] && script=scripts/.cluster-plain.sh
  SHARDFS_HOME=$H SHARDFS_SKIP_BUILD=1 bash $script up "$M" >/dev/null 2>&1 || {
    echo "$mode: the cluster did not start"
    continue
  }
  "$BIN/shardfs" mount "$H/master.addr" "$R" --credentials "$H/client.cred" --cache-mib 0 \
    --log-file "$H/logs/read-mount.log" >/dev/null
  w=$({ /usr/bin/time -f %e dd if=/dev/urandom of="$M/seq" bs=4M count=128 conv=fsync status=none; } 2>&1)
  fio --name=rw --filename="$M/rand" --size=256M --bs=4k --rw=randwrite --fsync=1 --runtime=20 \
    --time_based --ioengine=psync --output-format=terse --terse-version=3 >"$H/fio-w.txt" 2>/dev/null
  sync
  echo 3 >/proc/sys/vm/drop_caches
  r=$({ /usr/bin/time -f %e dd if="$R/seq" of=/dev/null bs=4M status=none; } 2>&1)
  fio --name=rr --filename="$R/rand" --size=256M --bs=4k --rw=randread --runtime=20 --time_based \
    --ioengine=psync --output-format=terse --terse-version=3 >"$H/fio-r.txt" 2>/dev/null
  echo "$mode: seq write $(echo "scale=1; 512/$w" | bc) MiB/s (dd of urandom, conv=fsync)," \
    "seq read $(echo "scale=1; 512/$r" | bc) MiB/s," \
    "4 KiB randwrite+fsync $(cut -d';' -f49 "$H/fio-w.txt") IOPS," \
    "4 KiB randread $(cut -d';' -f8 "$H/fio-r.txt") IOPS"
  "$BIN/shardfs" umount "$R" >/dev/null 2>&1
  SHARDFS_HOME=$H bash $script down >/dev/null 2>&1
done
