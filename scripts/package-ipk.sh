#!/usr/bin/env bash
# Package a static socketman binary as an OpenWrt .ipk (opkg).
#
#   scripts/package-ipk.sh BINARY ARCH VERSION OUTDIR
#
# ARCH is OpenWrt's package architecture, exactly as `opkg print-architecture` prints it on
# the device (e.g. x86_64, aarch64_cortex-a53, aarch64_generic, arm_cortex-a7_neon-vfpv4,
# mipsel_24kc, mips_24kc): opkg installs only packages whose Architecture it lists. A static
# binary runs on every device of its CPU family, so one binary can be packaged under several
# ARCH names. VERSION is the package version, e.g. 0.1.0-1.
#
# Layout (what opkg expects; OpenWrt's ipkg-build makes the same): a gzip'd tar of
#   ./debian-binary    "2.0"
#   ./data.tar.gz      ./usr/sbin/socketman, ./etc/init.d/socketman,
#                      ./etc/config/socketman, ./etc/socketman/config.json
#   ./control.tar.gz   ./control, ./conffiles, ./postinst, ./prerm
# All entries are owned by root (0:0); mtimes come from SOURCE_DATE_EPOCH (default: the last
# commit), so the same inputs give the same file. Prints the path of the .ipk.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ne 4 ]; then
    echo "usage: scripts/package-ipk.sh BINARY ARCH VERSION OUTDIR" >&2
    exit 2
fi
BIN=$1 ARCH=$2 VERSION=$3 OUTDIR=$4
die() { echo "package-ipk: error: $*" >&2; exit 1; }

[ -f "$BIN" ] || die "$BIN: no such file"
echo "$ARCH" | grep -Eq '^[A-Za-z0-9_+.-]+$' || die "bad ARCH '$ARCH'"
echo "$VERSION" | grep -Eq '^[0-9][A-Za-z0-9.+~-]*$' || die "bad VERSION '$VERSION'"
command -v tar >/dev/null && command -v gzip >/dev/null || die "tar and gzip are needed"

FILES=$ROOT/openwrt/files
DEPENDS=${IPK_DEPENDS:-procd}
MAINTAINER=${IPK_MAINTAINER:-socketman maintainers}
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/socketman-ipk.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DATA=$WORK/data CTRL=$WORK/control PKG=$WORK/pkg
mkdir -p "$DATA/usr/sbin" "$DATA/etc/init.d" "$DATA/etc/config" "$DATA/etc/socketman" "$CTRL" "$PKG"

install -m 0755 "$BIN" "$DATA/usr/sbin/socketman"
install -m 0755 "$FILES/socketman.init" "$DATA/etc/init.d/socketman"
install -m 0644 "$FILES/socketman.config" "$DATA/etc/config/socketman"
install -m 0600 "$FILES/config.json" "$DATA/etc/socketman/config.json"
chmod 0700 "$DATA/etc/socketman"

installed_size=$(find "$DATA" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')

cat >"$CTRL/control" <<CTL
Package: socketman
Version: $VERSION
Depends: $DEPENDS
SourceName: socketman
License: MIT
Section: net
Priority: optional
Architecture: $ARCH
Installed-Size: $installed_size
Maintainer: $MAINTAINER
Description: Device agent for OpenWrt routers: MQTT jobs, stats upload, network
 recovery and services, in one static binary (no shared libraries needed).
CTL

cat >"$CTRL/conffiles" <<'CONF'
/etc/config/socketman
/etc/socketman/config.json
CONF

cat >"$CTRL/postinst" <<'SH'
#!/bin/sh
# Enable and start the service on a live system; nothing when building an image
# (IPKG_INSTROOT set: the image's first boot enables it through /etc/rc.d).
[ -n "${IPKG_INSTROOT}" ] && exit 0
/etc/init.d/socketman enable
/etc/init.d/socketman start
exit 0
SH

cat >"$CTRL/prerm" <<'SH'
#!/bin/sh
# Stop and disable the service before its files go away (not when building an image).
[ -n "${IPKG_INSTROOT}" ] && exit 0
/etc/init.d/socketman stop
/etc/init.d/socketman disable
exit 0
SH
chmod 0755 "$CTRL/postinst" "$CTRL/prerm"
chmod 0644 "$CTRL/control" "$CTRL/conffiles"

TAR=(tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name --mtime="@$EPOCH")
(cd "$DATA" && "${TAR[@]}" -cf - .) | gzip -9n >"$PKG/data.tar.gz"
(cd "$CTRL" && "${TAR[@]}" -cf - .) | gzip -9n >"$PKG/control.tar.gz"
echo "2.0" >"$PKG/debian-binary"
touch -d "@$EPOCH" "$PKG"/*

mkdir -p "$OUTDIR"
out="$(cd "$OUTDIR" && pwd)/socketman_${VERSION}_${ARCH}.ipk"
(cd "$PKG" && "${TAR[@]}" -cf - ./debian-binary ./data.tar.gz ./control.tar.gz) | gzip -9n >"$out"
echo "$out"
