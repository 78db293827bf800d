#!/usr/bin/env bash
# Benchmark ShardFS side by side with reference mounts, with the lab's fsbench workload:
# sequential write/read of 1 GiB, 4 KiB random read/write, create/stat/rename/unlink of 10,000
# files, and extracting a 5,000-file tree; then scripts/bench-apps.sh (git clone, SQLite inserts).
#
#   scripts/bench.sh [TARGET...]      TARGETs: shardfs bindfs moosefs (default: all three), and
#                                     shardfs-old: another checkout of ShardFS (SHARDFS_OLD, its
#                                     binaries in SHARDFS_OLD_TARGET/release), for before/after runs
#
# Env: SHARDFS_LAB (the measurement lab, default ../shared/lab beside the repo), BENCH_ROUNDS
# (default 1; targets are interleaved per round), BENCH_RESULTS (default bench/results/bench.jsonl),
# and fsbench's FSB_* knobs (e.g. FSB_SIZE=256m FSB_RUNTIME=5 FSB_NFILES=2000 for a quick run).
# Prints a markdown table (median per target) at the end.
set -euo pipefail
source "$(dirname "$0")/common.sh"
LAB=${SHARDFS_LAB:-$ROOT/../shared/lab}
[ -x "$LAB/bench/fsbench.sh" ] || die "measurement lab not found at $LAB (set SHARDFS_LAB)"
ROUNDS=${BENCH_ROUNDS:-1}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results/bench.jsonl}
APPS=$(dirname "$RESULTS")/apps.jsonl
mkdir -p "$(dirname "$RESULTS")"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(shardfs bindfs moosefs)

ensure_packages
need=()
for t in fio jq bindfs; do command -v $t >/dev/null 2>&1 || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
build

BH=/tmp/shardfs-bench
up() {
  case $1 in
    shardfs)
      rm -rf "$BH" && mkdir -p "$BH/mnt"
      SHARDFS_HOME=$BH/home "$ROOT/scripts/cluster.sh" up "$BH/mnt" >&2 && echo "$BH/mnt" ;;
    shardfs-old)
      [ -x "${SHARDFS_OLD:-}/scripts/cluster.sh" ] || { say "set SHARDFS_OLD to a checkout"; return 1; }
      rm -rf "$BH-old" && mkdir -p "$BH-old/mnt"
      SHARDFS_HOME=$BH-old/home CARGO_TARGET_DIR=${SHARDFS_OLD_TARGET:?} SHARDFS_BIN_DIR=$SHARDFS_OLD_TARGET/release \
        "$SHARDFS_OLD/scripts/cluster.sh" up "$BH-old/mnt" >&2 && echo "$BH-old/mnt" ;;
    bindfs) "$LAB/peers/bindfs-up.sh" /tmp/lab-bindfs/mnt -o big_writes >&2 && echo /tmp/lab-bindfs/mnt ;;
    moosefs)
      command -v mfsmaster >/dev/null 2>&1 ||
        as_root apt-get install -y -qq moosefs-master moosefs-chunkserver moosefs-client moosefs-metalogger moosefs-cli >/dev/null 2>&1 ||
        { say "MooseFS could not be installed; skipping"; return 1; }
      "$LAB/peers/moosefs-up.sh" /tmp/lab-mfs/mnt >&2 && echo /tmp/lab-mfs/mnt ;;
    *) say "unknown target $1"; return 1 ;;
  esac
}
down() {
  case $1 in
    shardfs) SHARDFS_HOME=$BH/home "$ROOT/scripts/cluster.sh" down >&2 || true; rm -rf "$BH" ;;
    shardfs-old)
      SHARDFS_HOME=$BH-old/home CARGO_TARGET_DIR=$SHARDFS_OLD_TARGET SHARDFS_BIN_DIR=$SHARDFS_OLD_TARGET/release \
        "$SHARDFS_OLD/scripts/cluster.sh" down >&2 || true
      rm -rf "$BH-old" ;;
    bindfs) "$LAB/peers/bindfs-down.sh" >&2 || true ;;
    moosefs) "$LAB/peers/moosefs-down.sh" >&2 || true ;;
  esac
}
CUR=""
trap '[ -n "$CUR" ] && down "$CUR"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    say "=== round $r: $t ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
    CUR=$t
    if mnt=$(up "$t"); then
      FSB_RESULTS=$RESULTS "$LAB/bench/fsbench.sh" "$mnt" "$t#$r" >/dev/null || say "fsbench on $t failed"
      "$ROOT/scripts/bench-apps.sh" "$mnt" "$t#$r" "$APPS" >/dev/null || say "application workloads on $t failed"
    fi
    down "$t"
    CUR=""
  done
done
python3 "$LAB/bench/summarize.py" "$RESULTS"
# Application workloads: median per target over the rounds.
python3 - "$APPS" <<'PY'
import json, statistics, sys
rows = {}
for l in open(sys.argv[1]):
    r = json.loads(l)
    rows.setdefault(r["label"].split("#")[0], []).append(r)
cols = [("git_clone_s", "git clone (s)"), ("sqlite_journal_rows_s", "SQLite rows/s (journal)"),
        ("sqlite_wal_rows_s", "SQLite rows/s (WAL)")]
print("\n| target | " + " | ".join(c[1] for c in cols) + " |")
print("|---|" + "---|" * len(cols))
for t, rs in rows.items():
    print(f"| {t} | " + " | ".join(f"{statistics.median(r[c] for r in rs):g}" for c, _ in cols) + " |")
PY
