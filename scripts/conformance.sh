#!/usr/bin/env bash
# POSIX conformance of a fresh local cluster's mount: pjdfstest (the whole suite) and fsx (both
# op mixes in tests/fsx/, fixed seed). Prints one summary line per run and keeps the logs.
#
#   scripts/conformance.sh [all|pjdfstest|fsx]
#
# Env: FSX_OPS (100000), FSX_SEED (42), CONFORMANCE_OUT (./.shardfs-conformance: logs, the
# cluster's state and its mountpoint). Needs root (mounts, pjdfstest switches users).
#
# pjdfstest runs in two passes: its erofs tests (which remount the filesystem read-only) first,
# then everything else. In one pass, posix_fallocate::affected_only_create_flags leaks two
# descriptors of files it then deletes (nix's open() returns a raw fd that is never closed), and
# the kernel refuses to remount any filesystem read-only while such files exist (EBUSY): every
# erofs test after it fails, on ext4 just the same.
set -euo pipefail
source "$(dirname "$0")/common.sh"
WHAT=${1:-all}
case $WHAT in all | pjdfstest | fsx) ;; *) die "usage: $0 [all|pjdfstest|fsx]" ;; esac
OUT=${CONFORMANCE_OUT:-./.shardfs-conformance}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ensure_packages
build
ensure_tools

export SHARDFS_HOME=$OUT/cluster SHARDFS_SKIP_BUILD=1
# fsx rewrites a 4 MiB file a hundred times a second; every rewrite of a block is a new block,
# and the old ones wait out the collector's grace period: keep it short so they do not pile up
# (at the default 60 s they fill tens of GiB).
export SHARDFS_GC_GRACE_SECS=${SHARDFS_GC_GRACE_SECS:-3}
MNT=$OUT/mnt
"$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
rm -rf "$SHARDFS_HOME"
"$ROOT/scripts/cluster.sh" up "$MNT" >/dev/null
trap '"$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$SHARDFS_HOME"/node* "$SHARDFS_HOME"/master' EXIT
say "cluster up, mounted at $MNT"
rc=0

pjd_config() { # allow_remount
  cat <<EOF
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.1
allow_remount = $1
[dummy_auth]
entries = [ ["nobody", "nogroup"], ["tests", "tests"] ]
EOF
}

run_pjdfstest() {
  local wd=$MNT/pjdfstest sec=$OUT/secondary log=$OUT/pjdfstest.log
  mkdir -p "$wd" "$sec" && chmod 0755 "$wd"
  pjd_config true >"$OUT/pjd-erofs.toml"
  pjd_config false >"$OUT/pjd-rest.toml"
  (cd "$wd" && NO_COLOR=1 timeout -k 10 1200 pjdfstest -c "$OUT/pjd-erofs.toml" -p "$wd" -s "$sec" erofs) >"$OUT/pjdfstest-erofs.log" 2>&1 || true
  (cd "$wd" && NO_COLOR=1 timeout -k 10 1800 pjdfstest -c "$OUT/pjd-rest.toml" -p "$wd" -s "$sec") >"$OUT/pjdfstest-rest.log" 2>&1 || true
  # The erofs tests' results come from the first pass; everything else from the second.
  { grep -E '^\S+\s+(ok|FAILED|skipped)$' "$OUT/pjdfstest-erofs.log" || true
    grep -E '^\S+\s+(ok|FAILED|skipped)$' "$OUT/pjdfstest-rest.log" | grep -v erofs || true
  } >"$log"
  local pass fail skip total
  pass=$(grep -cE '\sok$' "$log" || true)
  fail=$(grep -cE '\sFAILED$' "$log" || true)
  skip=$(grep -cE '\sskipped$' "$log" || true)
  total=$((pass + fail + skip))
  echo "pjdfstest: $pass passed, $fail failed, $skip skipped of $total (logs: $OUT/pjdfstest-*.log)"
  grep -E '\s(FAILED|skipped)$' "$log" | while read -r name result; do
    why=$(grep -A1 -E "^$name\s" "$OUT/pjdfstest-erofs.log" "$OUT/pjdfstest-rest.log" | sed -n '2p' | sed 's/^[^\t]*\t//')
    echo "  $result $name: ${why:-?}"
  done
  [ "$total" -ge 398 ] || { say "pjdfstest ran only $total tests"; rc=1; }
  [ "$fail" -eq 0 ] || rc=1
  rm -rf "$wd"
}

run_fsx() {
  local profile ops=${FSX_OPS:-100000} seed=${FSX_SEED:-42}
  for profile in core full; do
    local wd=$MNT/fsx-$profile log=$OUT/fsx-$profile.log t0=$SECONDS
    mkdir -p "$wd" "$OUT/fsx-$profile.work"
    if (cd "$OUT/fsx-$profile.work" && timeout -k 10 3600 fsx -f "$ROOT/tests/fsx/$profile.toml" \
      -N "$ops" -S "$seed" -P "$OUT/fsx-$profile.work" "$wd/testfile") >"$log" 2>&1 &&
      grep -q "All operations completed A-OK" "$log"; then
      echo "fsx $profile: PASS $ops ops, seed $seed, $((SECONDS - t0)) s"
    else
      echo "fsx $profile: FAIL ($ops ops, seed $seed): $(grep -vE '^\[INFO' "$log" | head -5 | tr '\n' ' ')"
      echo "  log: $log"
      rc=1
    fi
    rm -rf "$wd"
  done
}

case $WHAT in
  all) run_pjdfstest; run_fsx ;;
  pjdfstest) run_pjdfstest ;;
  fsx) run_fsx ;;
esac
exit $rc
