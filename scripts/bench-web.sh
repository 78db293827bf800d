#!/usr/bin/env bash
# The web UI's speed, one run on a launcher cluster: a 1 GiB file read through
# `/raw/…` (curl, signed in) against `dd` of it on a fresh mount, both after dropping the page
# cache; and the time to render a 10,000-entry directory's listing: by the master (curl of
# /files/DIR/, the HTML the browser gets) and in headless Chromium (driven by chromedriver
# over WebDriver: the navigation's timings and the first paint). Not run in CI.
#   scripts/bench-web.sh [SIZE_MIB] [ENTRIES]
set -u
cd "$(dirname "$0")/.."
source scripts/common.sh
ensure_packages
build
command -v curl >/dev/null || apt-get install -y -q curl >/dev/null
command -v jq >/dev/null || apt-get install -y -q jq >/dev/null
apt_ensure chromium chromium-driver
SIZE=${1:-1024} ENTRIES=${2:-10000}
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/shardfs-target}/release
H=/tmp/bench-web M=/tmp/bench-web-mnt R=/tmp/bench-web-read
SHARDFS_HOME=$H bash scripts/cluster.sh down >/dev/null 2>&1
rm -rf "$H" "$M" "$R"
mkdir -p "$M" "$R"
SHARDFS_HOME=$H SHARDFS_SKIP_BUILD=1 bash scripts/cluster.sh up "$M" >/dev/null 2>&1 ||
  die "the cluster did not start (logs in $H/logs)"
trap '"$BIN/shardfs" umount "$R" >/dev/null 2>&1; SHARDFS_HOME=$H bash scripts/cluster.sh down >/dev/null 2>&1' EXIT
dd if=/dev/urandom of="$M/big" bs=1M count="$SIZE" conv=fsync status=none
mkdir "$M/many"
(cd "$M/many" && seq 1 "$ENTRIES" | xargs -n 1000 touch)
HTTP=$(cat "$H/http.addr")
LINK=$("$BIN/shardfs" web "$H/master.addr" --uid 0 2>/dev/null)
curl -s -c "$H/cookies" -o /dev/null "$LINK"
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f MiB/s", b / 1048576 / s }'; }
"$BIN/shardfs" mount "$H/master.addr" "$R" --credentials "$H/client.cred" >/dev/null
sync; echo 3 >/proc/sys/vm/drop_caches
t0=$(date +%s.%N); dd if="$R/big" of=/dev/null bs=4M status=none; t1=$(date +%s.%N)
echo "dd of ${SIZE} MiB on a fresh mount: $(rate $((SIZE << 20)) "$(echo "$t1 - $t0" | bc)")"
sync; echo 3 >/proc/sys/vm/drop_caches
out=$(curl -s -b "$H/cookies" -o /dev/null -w '%{size_download} %{time_total}' "http://$HTTP/raw/big")
echo "HTTP download of ${SIZE} MiB (curl): $(rate ${out% *} ${out#* }) (${out% *} bytes)"
for i in 1 2 3; do
  out=$(curl -s -b "$H/cookies" -o /dev/null -w '%{size_download} %{time_total}' "http://$HTTP/files/many/")
  echo "listing of $ENTRIES entries, round $i: ${out#* } s, ${out% *} bytes of HTML"
done
# The same listing in a browser.
PORT=$((20000 + RANDOM % 20000))
chromedriver --port=$PORT >/dev/null 2>&1 &
DRIVER=$!
trap 'kill $DRIVER 2>/dev/null; "$BIN/shardfs" umount "$R" >/dev/null 2>&1; SHARDFS_HOME=$H bash scripts/cluster.sh down >/dev/null 2>&1' EXIT
WD=http://127.0.0.1:$PORT
for _ in $(seq 100); do curl -sf "$WD/status" >/dev/null && break; sleep 0.2; done
caps='{"capabilities":{"alwaysMatch":{"browserName":"chrome","goog:chromeOptions":{"binary":"/usr/bin/chromium","args":["--headless=new","--no-sandbox","--disable-gpu","--disable-dev-shm-usage","--window-size=1200,800","--user-data-dir='"$H"'/chromium"]}}}}'
SID=$(curl -s -X POST -H 'Content-Type: application/json' -d "$caps" "$WD/session" | jq -r .value.sessionId)
go() { curl -s -X POST -H 'Content-Type: application/json' -d "{\"url\":\"$1\"}" "$WD/session/$SID/url" >/dev/null; }
js() { curl -s -X POST -H 'Content-Type: application/json' -d "{\"script\":\"$1\",\"args\":[]}" "$WD/session/$SID/execute/sync" | jq -r .value; }
go "$("$BIN/shardfs" web "$H/master.addr" --uid 0 2>/dev/null)"
for i in 1 2 3; do
  go "http://$HTTP/files/many/"
  t=$(js "const n = performance.getEntriesByType('navigation')[0]; const p = performance.getEntriesByName('first-contentful-paint')[0]; return [n.responseEnd, n.domContentLoadedEventEnd, n.loadEventEnd, p ? p.startTime : -1, document.querySelectorAll('tbody tr').length].map(x => Math.round(x)).join(' ');")
  read -r resp dcl load fcp rows <<<"$t"
  echo "listing of $ENTRIES entries in Chromium, round $i: HTML received ${resp} ms, DOM ready ${dcl} ms, load ${load} ms, first paint ${fcp} ms ($rows rows)"
done
curl -s -X DELETE "$WD/session/$SID" >/dev/null
echo "master peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$(cat "$H/run/master.pid")/status")"
