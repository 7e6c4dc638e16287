#!/usr/bin/env bash
# The test command (README): installs what is missing, then runs cargo fmt --check,
# clippy -D warnings, every test (unit + integration against a real mosquitto), and — unless
# SKIP_STATIC=1 — the static musl builds with their qemu round trip and the check that the
# release binaries carry no test hooks (`strings`: no SOCKETMAN_TEST, scripts/ci-static.sh).
# With nightly installed it also builds the fuzz targets and runs each 5 s (FUZZ=1: 60 s).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
have() { command -v "$1" >/dev/null 2>&1; }
{ have mosquitto || [ -x /usr/sbin/mosquitto ]; } || need+=(mosquitto)
have mosquitto_pub || need+=(mosquitto-clients)
have cmake || need+=(cmake)
have openssl || need+=(openssl)
have pkg-config || need+=(pkg-config)
{ have pkg-config && pkg-config --exists openssl; } || need+=(libssl-dev)
have cc || need+=(build-essential)
have file || need+=(file)
have strings || need+=(binutils)
have python3 || need+=(python3)
# WebSocket endpoint of the issue-15 tests (Debian's mosquitto has no websockets listener).
{ [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import websockify' 2>/dev/null; } || need+=(websockify)
# OpenWrt 25.12 .apk (apk-tools 3 built from the vendored source: scripts/apk-tool.sh) and the
# BusyBox-only root test (scripts/test-busybox-root.sh).
{ have apk && apk --version 2>/dev/null | grep -q '^apk-tools 3\.'; } || {
  have meson || need+=(meson)
  have ninja || need+=(ninja-build)
  { have pkg-config && pkg-config --exists zlib; } || need+=(zlib1g-dev)
}
{ have busybox && file -b "$(command -v busybox)" 2>/dev/null | grep -q static; } || need+=(busybox-static)
have unshare || need+=(util-linux)
have ps || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts a mosquitto service on 1883 after install; the tests use their own brokers.

if ! have cargo; then
  echo "cargo is missing: install Rust with rustup first" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "== module graph: dependencies point down only (scripts/module-deps.py)"
python3 scripts/module-deps.py --sub | tail -n 2
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked -- --test-threads="${TEST_THREADS:-4}"

# Fuzz targets (fuzz/, docs/SECURITY.md "Fuzzing"): always built when nightly is installed
# and run 5 s each (a smoke run: the targets start, read their corpus, find nothing); FUZZ=1
# runs each one for FUZZ_SECONDS (60) on the committed corpus and the fixtures.
# rustup, not `cargo +nightly`: a missing toolchain must not be installed on the fly.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if [ "${FUZZ:-0}" = 1 ]; then
    echo "== fuzz targets: build and run ${FUZZ_SECONDS:-60} s each (scripts/fuzz.sh)"
    scripts/fuzz.sh run "${FUZZ_SECONDS:-60}"
  else
    echo "== fuzz targets: build and a 5 s smoke run each (scripts/fuzz.sh; FUZZ=1: 60 s each)"
    scripts/fuzz.sh run 5
  fi
else
  echo "== fuzz targets: skipped, the nightly toolchain is not installed"
fi

if [ "${SKIP_STATIC:-0}" != 1 ] && [ -x scripts/ci-static.sh ]; then
  echo "== static builds and qemu round trip"
  scripts/ci-static.sh
fi
echo "== all checks passed"
