#!/usr/bin/env bash
# Application workloads on a mounted filesystem: git clone of a local repository, and SQLite
# inserts (10,000 rows in transactions of 100, rollback journal and WAL). Prints one JSON line
# and appends it to RESULTS.
#
#   scripts/bench-apps.sh MOUNTPOINT LABEL RESULTS
set -euo pipefail
MNT=${1:?usage: bench-apps.sh MOUNTPOINT LABEL RESULTS}
LABEL=${2:?label}
RESULTS=${3:?results file}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WD=$MNT/.bench-apps.$$
SRC=/tmp/shardfs-bench-apps-src
trap 'rm -rf "$WD"' EXIT
mkdir -p "$WD"

# The repository to clone: this project's history plus a generated tree of 2,000 files, made
# once and kept (same bytes for every target).
if [ ! -d "$SRC/repo.git" ]; then
  rm -rf "$SRC" && mkdir -p "$SRC"
  git clone -q --no-hardlinks "$ROOT" "$SRC/work"
  python3 - "$SRC/work/generated" <<'PY'
import os, random, sys
root = sys.argv[1]; r = random.Random(7)
for i in range(2000):
    d = os.path.join(root, f"d{i % 40}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write("".join(f"line {j} {r.random()}\n" for j in range(r.randint(5, 200))))
PY
  git -C "$SRC/work" add -A
  git -C "$SRC/work" -c user.name=bench -c user.email=bench@example.com commit -qm generated
  git clone -q --bare "$SRC/work" "$SRC/repo.git"
  rm -rf "$SRC/work"
fi
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(date +%s.%N)
git clone -q "$SRC/repo.git" "$WD/clone"
sync -f "$WD"
t1=$(date +%s.%N)
files=$(git -C "$WD/clone" ls-files | wc -l)
clone_s=$(awk -v a="$t1" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
rm -rf "$WD/clone"

sqlite_rate() { # journal mode -> rows per second
  python3 - "$WD/bench-$1.db" "$1" <<'PY'
import sqlite3, sys, time
path, mode = sys.argv[1], sys.argv[2]
db = sqlite3.connect(path)
db.execute(f"PRAGMA journal_mode={mode}")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v INTEGER)")
t = time.time()
for tx in range(100):
    with db:
        db.executemany("INSERT INTO t (name, v) VALUES (?, ?)", [(f"row {tx} {i}", i) for i in range(100)])
el = time.time() - t
assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
print(f"{10000 / el:.0f}")
PY
}
journal=$(sqlite_rate delete)
wal=$(sqlite_rate wal)
line=$(printf '{"label":"%s","git_clone_s":%s,"git_clone_files":%s,"sqlite_journal_rows_s":%s,"sqlite_wal_rows_s":%s,"date":"%s"}' \
  "$LABEL" "$clone_s" "$files" "$journal" "$wal" "$(date -u +%FT%TZ)")
echo "$line" >>"$RESULTS"
echo "$line"
