#!/usr/bin/env bash
# Print the path of an apk-tools 3 `apk` (the package manager of OpenWrt 25.12 and later).
#
#   APK=$(scripts/apk-tool.sh)
#
# Uses `apk` from PATH when it is version 3.x. Otherwise builds apk-tools 3.0.6 from the
# vendored source (APK_TOOLS_SRC, default ../shared/vendor/apk-tools-3.0.6.tar.gz beside the
# repository, as described in its README) with meson and ninja into target/tools/apk-3.0.6
# (about 10 s on 2 cores; cached: a second call only prints the path). Installs the apt
# packages the build needs (meson ninja-build zlib1g-dev libssl-dev pkg-config) when missing.
# Build output goes to stderr; stdout is only the path.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VER=3.0.6
SHA=8a1b1abd48ee2610a4d229c111757aebeda8f8c8f76d5f49fb8162ec5c19b5a6
die() { echo "apk-tool: error: $*" >&2; exit 1; }

if command -v apk >/dev/null 2>&1 && apk --version 2>/dev/null | grep -q '^apk-tools 3\.'; then
    command -v apk
    exit 0
fi

DIR=$ROOT/target/tools/apk-$VER
BIN=$DIR/build/src/apk
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "^apk-tools $VER"; then
    echo "$BIN"
    exit 0
fi

SRC=${APK_TOOLS_SRC:-}
if [ -z "$SRC" ]; then
    for c in "$ROOT/../shared/vendor/apk-tools-$VER.tar.gz" "/work/shared/vendor/apk-tools-$VER.tar.gz"; do
        [ -f "$c" ] && { SRC=$c; break; }
    done
fi
[ -n "$SRC" ] && [ -f "$SRC" ] || die "apk-tools $VER source not found (set APK_TOOLS_SRC to apk-tools-$VER.tar.gz)"
echo "$SHA  $SRC" | sha256sum -c --quiet - >&2 || die "$SRC: sha256 mismatch"

need=()
command -v meson >/dev/null 2>&1 || need+=(meson)
command -v ninja >/dev/null 2>&1 || need+=(ninja-build)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists zlib; } || need+=(zlib1g-dev)
{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; } || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "apk-tool: installing ${need[*]}" >&2
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

echo "apk-tool: building apk-tools $VER into $DIR" >&2
rm -rf "$DIR"
mkdir -p "$DIR"
tar -xzf "$SRC" -C "$DIR" --strip-components=1
(
    cd "$DIR"
    meson setup build -Dlua=disabled -Ddocs=disabled -Dpython=disabled -Dtests=disabled \
        -Dcompressed-help=false >"$DIR/build.log" 2>&1
    ninja -C build >>"$DIR/build.log" 2>&1
) || { tail -n 30 "$DIR/build.log" >&2; die "apk-tools build failed (log: $DIR/build.log)"; }
"$BIN" --version | grep -q "^apk-tools $VER" || die "$BIN does not report apk-tools $VER"
echo "$BIN"
