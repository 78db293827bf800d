#!/usr/bin/env bash
# Run the whole test suite: unit tests, and the cluster tests that start real masters and storage
# nodes on 127.0.0.1 and mount them through FUSE. Installs what it needs (needs root for apt and
# for mounting).
set -euo pipefail
source "$(dirname "$0")/common.sh"
ensure_packages
ensure_test_packages
build
ensure_tools
cd "$ROOT"
cargo test --release --workspace -- --test-threads="${SHARDFS_TEST_THREADS:-2}" "$@"
