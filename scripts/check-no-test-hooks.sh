#!/usr/bin/env bash
# Fails when a release binary carries the test hooks: any `SOCKETMAN_TEST` string (the timing
# overrides, the switch that disables the forced reboot) or the `test.panic` job type. They
# exist only with the `test-hooks` Cargo feature, which release, static and OpenWrt builds
# leave off (the integration tests turn it on).
#
#   scripts/check-no-test-hooks.sh target/x86_64-unknown-linux-musl/release/socketman
set -euo pipefail
bin=${1:?usage: check-no-test-hooks.sh BINARY}
[ -f "$bin" ] || { echo "check-no-test-hooks: $bin: no such file" >&2; exit 1; }
if command -v strings >/dev/null 2>&1; then
    found=$(strings -a "$bin" | grep -E 'SOCKETMAN_TEST|test\.panic' | head -n 5 || true)
else
    found=$(grep -aoE 'SOCKETMAN_TEST[A-Z_]*|test\.panic' "$bin" | head -n 5 || true)
fi
if [ -n "$found" ]; then
    echo "check-no-test-hooks: $bin contains test hooks:" >&2
    echo "$found" >&2
    exit 1
fi
echo "check-no-test-hooks: $bin has no test hooks"
