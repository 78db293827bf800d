# Shared helpers for the ShardFS scripts (sourced, not run).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardfs-target}
BIN=${SHARDFS_BIN_DIR:-$CARGO_TARGET_DIR/release}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# System packages: FUSE 3, clang/libclang for building RocksDB, and the programs the tests run
# on the mount (python3, git, sqlite3, rsync, cc).
ensure_packages() {
  apt_ensure fuse3 libfuse3-dev clang libclang-dev pkg-config build-essential python3 git sqlite3 \
    rsync iproute2
  [ -e /dev/fuse ] || die "/dev/fuse is missing: this machine cannot mount FUSE filesystems"
  command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] ||
    die "cargo not found: install Rust from https://rustup.rs"
  export PATH="$HOME/.cargo/bin:$PATH"
}

# What only the test suite needs: headless Chromium and its WebDriver for the web UI's test.
ensure_test_packages() {
  apt_ensure chromium chromium-driver
}

# Install (with apt) whichever of the Debian packages named is not installed yet.
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# One release build for the launcher and the tests (RocksDB's C++ is compiled once per target dir).
build() {
  if [ "${SHARDFS_SKIP_BUILD:-0}" = 1 ]; then return 0; fi
  say "building (release) into $CARGO_TARGET_DIR ..."
  (cd "$ROOT" && cargo build --release --bins --quiet) || die "build failed"
}

# The POSIX suite and the exerciser the conformance tests run (pinned versions, built once into
# ~/.cache/shardfs-tools; about a minute each on first use).
TOOLS=${SHARDFS_TOOLS_DIR:-$HOME/.cache/shardfs-tools}
ensure_tools() {
  local spec
  for spec in pjdfstest@0.2.2 fsx@0.3.2; do
    [ -x "$TOOLS/bin/${spec%@*}" ] && continue
    say "installing $spec into $TOOLS ..."
    cargo install --quiet --locked --root "$TOOLS" "$spec" || die "cargo install $spec failed"
  done
  export PATH="$TOOLS/bin:$PATH"
  # pjdfstest switches to these users; its erofs tests remount through the mount helper.
  getent group tests >/dev/null || as_root groupadd tests
  getent passwd tests >/dev/null || as_root useradd -M -g tests -s /usr/sbin/nologin tests
  local helper=/sbin/mount.fuse.shardfs
  if [ ! -e "$helper" ] || { [ -L "$helper" ] && [ "$(basename "$(readlink "$helper")")" = shardfs ]; }; then
    as_root ln -sf "$BIN/shardfs" "$helper"
  fi
}
