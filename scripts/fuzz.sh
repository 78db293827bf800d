#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder that reads bytes from the network or from disk (frame
# prefix and headers of every request/response type, shard files, journal entries, merge
# documents, credentials/tokens/certificates), with AFL++ through cargo-afl: it instruments with
# rustc's sanitizer-coverage passes, so it runs on stable Rust.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 60); all by default
#
# A crash fails the run; its input is copied to fuzz/inputs/TARGET/regressions/ (commit it with
# the fix: every kept input is replayed by the fuzz crate's test, which this script runs first).
# Per target it prints executions, corpus size and edges covered.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frame shard journal merge_doc credential)
export CARGO_TARGET_DIR=${SHARDFS_FUZZ_TARGET:-$HOME/.cache/shardfs-fuzz-target}
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_QUIET=1
if ! cargo afl --version >/dev/null 2>&1; then
  say "installing cargo-afl (AFL++ for Rust) ..."
  cargo install cargo-afl --locked --quiet
fi
# Builds AFL++ once per toolchain (the install above usually did).
out=$(cargo afl config --build 2>&1) || grep -q "already built" <<<"$out" || die "cannot build AFL++: $out"
cd "$ROOT/fuzz"
cargo afl build --release --quiet
"$CARGO_TARGET_DIR/release/make_seeds"
cargo afl test --release --quiet
WORK=$(mktemp -d /tmp/shardfs-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failed=0
for t in "${TARGETS[@]}"; do
  timeout $((SECS + 60)) cargo afl fuzz -V "$SECS" -i "inputs/$t/seeds" -o "$WORK/$t" \
    "$CARGO_TARGET_DIR/release/$t" >"$WORK/$t.log" 2>&1 || true
  stats="$WORK/$t/default/fuzzer_stats"
  [ -f "$stats" ] || { tail -n 20 "$WORK/$t.log"; die "fuzzer $t did not run"; }
  get() { sed -n "s/^$1 *: *//p" "$stats"; }
  crashes=$(find "$WORK/$t/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
  printf '%-11s %6ss  execs %-10s corpus %-5s edges %s/%s (%s)  crashes %s\n' "$t" "$SECS" \
    "$(get execs_done)" "$(get corpus_count)" "$(get edges_found)" "$(get total_edges)" \
    "$(get bitmap_cvg)" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    mkdir -p "inputs/$t/regressions"
    cp "$WORK/$t/default/crashes"/id:* "inputs/$t/regressions/"
    failed=1
  fi
done
[ $failed -eq 0 ] || die "fuzzing found crashes; inputs kept in fuzz/inputs/*/regressions/"
