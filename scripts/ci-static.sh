#!/usr/bin/env bash
# CI step for issue 7: static musl builds for x86_64 and aarch64, the qemu round trip
# (version, collect-once, job over MQTT and MQTT/TLS) for both, a check that the release
# binary carries no test hooks (scripts/check-no-test-hooks.sh), and an .ipk per target,
# unpacked and checked; first the procd init script test. Installs what is missing (apt, rustup, pip); caches nothing
# outside the repository's target/ directory.
#
#   scripts/ci-static.sh            # both targets
#   CI_STATIC_TARGETS="aarch64-unknown-linux-musl" scripts/ci-static.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TARGETS=${CI_STATIC_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
OUT=$ROOT/target/ipk
SUMMARY=()
t0=$(date +%s)

echo "=== procd init script (stand-in procd/UCI functions)"
sh scripts/test-openwrt-init.sh

openwrt_arch() {
    case "$1" in
        x86_64-*) echo x86_64 ;;
        aarch64-*) echo aarch64_generic ;;
        armv7-*) echo arm_cortex-a7_neon-vfpv4 ;;
        mipsel-*) echo mipsel_24kc ;;
        mips-*) echo mips_24kc ;;
    esac
}

for t in $TARGETS; do
    s=$(date +%s)
    echo "=== build $t"
    scripts/build-static.sh "$t"
    b=$(( $(date +%s) - s ))
    bin=target/$t/release/socketman
    scripts/check-no-test-hooks.sh "$bin"
    s=$(date +%s)
    echo "=== qemu round trip $t"
    scripts/qemu-roundtrip.sh "$t" "$bin"
    r=$(( $(date +%s) - s ))
    arch=$(openwrt_arch "$t")
    echo "=== ipk $t ($arch)"
    ipk=$(scripts/package-ipk.sh "$bin" "$arch" "$VERSION-1" "$OUT")
    scripts/check-ipk.sh "$ipk" "$arch"
    SUMMARY+=("$(printf '%-28s %9s bytes  build %4ss  roundtrip %3ss  %s' "$t" "$(stat -c %s "$bin")" "$b" "$r" "$(basename "$ipk")")")
done

echo "=== static builds: all passed in $(( $(date +%s) - t0 )) s"
printf '%s\n' "${SUMMARY[@]}"
