#!/usr/bin/env bash
# CI step for issue 7: static musl builds for x86_64 and aarch64, the qemu round trip
# (version, collect-once, job over MQTT and MQTT/TLS) for both, a check that the release
# binary carries no test hooks (scripts/check-no-test-hooks.sh), an .ipk (OpenWrt 24.10, opkg)
# and an .apk (OpenWrt 25.12+, apk-tools 3) per target, checked (scripts/check-ipk.sh,
# scripts/check-apk.sh), and for x86_64 the BusyBox-only root test
# (scripts/test-busybox-root.sh); first the procd init script test. Installs what is missing
# (apt, rustup, pip); caches nothing outside the repository's target/ directory.
#
#   scripts/ci-static.sh            # both targets
#   CI_STATIC_TARGETS="aarch64-unknown-linux-musl" scripts/ci-static.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TARGETS=${CI_STATIC_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
OUT=$ROOT/target/ipk
APK_OUT=$ROOT/target/apk
# OpenWrt's package release: PKG_VERSION-rPKG_RELEASE in both the .ipk (since 24.10) and the .apk.
RELEASE=1
SUMMARY=()
t0=$(date +%s)

echo "=== procd init script (stand-in procd/UCI functions)"
sh scripts/test-openwrt-init.sh

openwrt_arch() { scripts/package-apk.sh --arch-of "$1"; }

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
    ipk=$(scripts/package-ipk.sh "$bin" "$arch" "$VERSION-r$RELEASE" "$OUT")
    scripts/check-ipk.sh "$ipk" "$arch"
    s=$(date +%s)
    echo "=== apk $t ($arch)"
    apk=$(scripts/package-apk.sh --out "$APK_OUT" --release "$RELEASE" "$t")
    scripts/check-apk.sh "$apk" "$arch"
    a=$(( $(date +%s) - s ))
    bb=-
    if [ "${t%%-*}" = x86_64 ]; then
        s=$(date +%s)
        echo "=== BusyBox-only root $t"
        scripts/test-busybox-root.sh "$bin"
        bb="$(( $(date +%s) - s ))s"
    fi
    SUMMARY+=("$(printf '%-28s %9s bytes  build %4ss  roundtrip %3ss  ipk %8s bytes  apk %8s bytes (%ss)  busybox root %s' \
        "$t" "$(stat -c %s "$bin")" "$b" "$r" "$(stat -c %s "$ipk")" "$(stat -c %s "$apk")" "$a" "$bb")")
done

echo "=== static builds: all passed in $(( $(date +%s) - t0 )) s"
printf '%s\n' "${SUMMARY[@]}"
