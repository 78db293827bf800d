# Shared helpers for the ShardFS scripts (sourced, not run).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardfs-target}
BIN=${SHARDFS_BIN_DIR:-$CARGO_TARGET_DIR/release}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# System packages: FUSE 3, and clang/libclang for building RocksDB.
ensure_packages() {
  local missing=() p
  for p in fuse3 libfuse3-dev clang libclang-dev pkg-config build-essential python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  [ -e /dev/fuse ] || die "/dev/fuse is missing: this machine cannot mount FUSE filesystems"
  command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] ||
    die "cargo not found: install Rust from https://rustup.rs"
  export PATH="$HOME/.cargo/bin:$PATH"
}

# One release build for the launcher and the tests (RocksDB's C++ is compiled once per target dir).
build() {
  if [ "${SHARDFS_SKIP_BUILD:-0}" = 1 ]; then return 0; fi
  say "building (release) into $CARGO_TARGET_DIR ..."
  (cd "$ROOT" && cargo build --release --bins --quiet) || die "build failed"
}
