#!/usr/bin/env bash
# Local ShardFS cluster on 127.0.0.1: one master, $SHARDFS_NODES storage nodes, one mount.
#
#   scripts/cluster.sh up [MOUNTPOINT]   start (installing packages and building if needed) and mount
#   scripts/cluster.sh status            nodes, capacity and mounts
#   scripts/cluster.sh down              unmount and stop every process
#
# State (data, logs, pid files, master.addr) lives in $SHARDFS_HOME (default ./.shardfs), with
# the credentials the launcher makes: admin.cred (status, scrub, repair, drain, tokens) and
# client.cred (the mount's), both mode 0600. Nodes keep theirs in their data directories.
# SHARDFS_NODES (default 6) and SHARDFS_EC (default 4+2) shape a new cluster.
set -euo pipefail
source "$(dirname "$0")/common.sh"

H=${SHARDFS_HOME:-./.shardfs}
mkdir -p "$H"
H=$(cd "$H" && pwd)
NODES=${SHARDFS_NODES:-6}
EC=${SHARDFS_EC:-4+2}
RUN=$H/run
LOGS=$H/logs

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # seconds, description, command...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@"; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.2
  done
}

nodes_up() {
  local n
  n=$("$BIN/shardfs" status "$H/master.addr" --json 2>/dev/null | sed -n 's/.*"nodes_up":\([0-9]*\).*/\1/p')
  [ "${n:-0}" -ge "$NODES" ]
}

start_master() {
  alive "$RUN/master.pid" && return 0
  rm -f "$H/master.addr" "$H/master/http.addr"
  "$BIN/shardfs-master" --data-dir "$H/master" --listen 127.0.0.1:0 --addr-file "$H/master.addr" \
    --http 127.0.0.1:0 --ec "$EC" >>"$LOGS/master.log" 2>&1 &
  echo $! >"$RUN/master.pid"
  wait_for 30 "master" test -s "$H/master.addr" ||
    die "master did not start; see $LOGS/master.log: $(tail -n 3 "$LOGS/master.log")"
  # Its metrics (and `shardfs top`) address, on a free port of 127.0.0.1.
  wait_for 10 "master metrics" test -s "$H/master/http.addr" && cp "$H/master/http.addr" "$H/http.addr"
  # The master makes the cluster CA and a first admin credential when it creates the cluster.
  if [ ! -s "$H/admin.cred" ]; then
    [ -s "$H/master/admin.cred" ] || die "the master made no admin credential; see $LOGS/master.log"
    install -m 0600 "$H/master/admin.cred" "$H/admin.cred"
  fi
}

token() { # role [extra args]: a one-time join token
  local role=$1; shift
  "$BIN/shardfs" token create "$H/master.addr" --role "$role" --credentials "$H/admin.cred" "$@" 2>/dev/null ||
    die "cannot make a $role join token (is $H/admin.cred this cluster's?)"
}

start_node() {
  local i=$1
  alive "$RUN/node$i.pid" && return 0
  local join=()
  [ -s "$H/node$i/node.cred" ] || join=(--token "$(token node)")
  "$BIN/shardfs-node" --data-dir "$H/node$i" --listen 127.0.0.1:0 --master "$(cat "$H/master.addr")" \
    "${join[@]}" >>"$LOGS/node$i.log" 2>&1 &
  echo $! >"$RUN/node$i.pid"
}

up() {
  local mp=${1:-./mnt}
  ensure_packages
  build
  mkdir -p "$RUN" "$LOGS" "$mp"
  mp=$(cd "$mp" && pwd)
  start_master
  for i in $(seq 1 "$NODES"); do start_node "$i"; done
  wait_for 60 "nodes" nodes_up || die "storage nodes did not come up; see $LOGS/node*.log"
  if grep -qs "^shardfs[^ ]* $mp fuse" /proc/mounts; then
    say "already mounted at $mp"
  else
    [ -z "$(ls -A "$mp")" ] || die "mountpoint $mp is not empty"
    # The launcher's own mount may act as root (as the local user running it can anyway).
    [ -s "$H/client.cred" ] || "$BIN/shardfs" credentials join "$H/master.addr" \
      --token "$(token client --allow-root)" --credentials "$H/client.cred" >/dev/null ||
      die "cannot make the mount's credential"
    "$BIN/shardfs" mount "$H/master.addr" "$mp" --log-file "$LOGS/mount.log" \
      --pid-file "$RUN/mount.pid" >/dev/null || die "mount failed; see $LOGS/mount.log"
    echo "$mp" >"$RUN/mountpoint"
  fi
  cat <<MSG
ShardFS is up: master $(cat "$H/master.addr"), $NODES storage nodes (code $EC), state in $H
Mounted at:   $mp
Status:       scripts/cluster.sh status   (admin credential: $H/admin.cred)
Metrics:      http://$(cat "$H/http.addr" 2>/dev/null)/metrics   (live view: shardfs top $H/master.addr)
Web UI:       shardfs web $H/master.addr   (prints a one-time sign-in link)
Mount again:  shardfs mount $H/master.addr DIR --credentials $H/client.cred
Stop:         scripts/cluster.sh down
MSG
}

status() {
  [ -s "$H/master.addr" ] || die "no cluster in $H (start one with: scripts/cluster.sh up)"
  "$BIN/shardfs" status "$H/master.addr" || true
  grep "^shardfs" /proc/mounts | awk '{print "mounted: " $2 " (" $1 ")"}' || echo "no mounts"
}

stop_pids() { # pidfile... : TERM all, wait up to 15 s, then KILL what is left
  local pids=() f
  for f in "$@"; do
    [ -f "$f" ] || continue
    pids+=("$(cat "$f")")
    kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
  local end=$((SECONDS + 15)) p left
  while :; do
    left=()
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
    [ ${#left[@]} -gt 0 ] || break
    if [ $SECONDS -ge $end ]; then
      say "killing processes that did not stop: ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$@"
}

down() {
  if [ -f "$RUN/mountpoint" ]; then
    local mp
    mp=$(cat "$RUN/mountpoint")
    if grep -qs "^shardfs[^ ]* $mp fuse" /proc/mounts; then
      "$BIN/shardfs" umount "$mp" || fusermount3 -u -z "$mp" || umount -l "$mp" || true
    fi
    rm -f "$RUN/mountpoint"
  fi
  stop_pids "$RUN/mount.pid"
  stop_pids "$RUN"/node*.pid "$RUN/master.pid"
  say "ShardFS stopped (data kept in $H)"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) status ;;
  down) down ;;
  *) say "usage: $0 up [MOUNTPOINT] | status | down"; exit 2 ;;
esac
