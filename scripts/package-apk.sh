#!/usr/bin/env bash
# Package static socketman binaries as OpenWrt 25.12+ .apk files (apk-tools 3, ADB format).
#
#   scripts/package-apk.sh [--out DIR] [--release N] [--arch NAME] [--bin FILE] TARGET...
#   scripts/package-apk.sh --arch-of TARGET       # print OpenWrt's arch name for a triple
#
# TARGET is a Rust triple (x86_64-unknown-linux-musl, aarch64-unknown-linux-musl,
# armv7-unknown-linux-musleabihf, mipsel-unknown-linux-musl, mips-unknown-linux-musl); the
# binary is target/TARGET/release/socketman (scripts/build-static.sh TARGET), or --bin FILE
# (one TARGET only). --arch NAME packages it under another OpenWrt arch of the same CPU family
# (e.g. aarch64_cortex-a53): apk installs only packages whose arch is in /etc/apk/arch.
# Output: DIR/ARCH/socketman-VERSION-rN.apk (default DIR target/apk, N 1), as OpenWrt names it
# (one directory per arch; the arch is not in the file name). Prints each path.
#
# Follows OpenWrt's include/package-pack.mk (CONFIG_USE_APK): `apk mkpkg` with --info name,
# version (PKG_VERSION-rPKG_RELEASE), description, arch, license, origin, url, maintainer,
# depends, and the scripts post-install, post-upgrade (PKG_UPGRADE=1 + post-install) and
# pre-deinstall; the data carries lib/apk/packages/socketman.{list,conffiles,conffiles_static}.
# Differences (README "Install on OpenWrt"): the scripts do not source /lib/functions.sh
# (default_postinst would enable the service unconditionally); post-install enables and
# starts the service only when the config validates (or an init_url is set), post-upgrade
# restarts it only when it is enabled, pre-deinstall stops and disables it.
# Files are owned by root; mtimes come from SOURCE_DATE_EPOCH (default: the last commit).
# SOCKETMAN_OPENWRT_FILES: another directory of init/UCI/JSON files (default openwrt/files).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "package-apk: error: $*" >&2; exit 1; }

openwrt_arch() {
    case "$1" in
        x86_64-*) echo x86_64 ;;
        aarch64-*) echo aarch64_generic ;;
        armv7-*) echo arm_cortex-a7_neon-vfpv4 ;;
        mipsel-*) echo mipsel_24kc ;;
        mips-*) echo mips_24kc ;;
        *) return 1 ;;
    esac
}

OUT=$ROOT/target/apk RELEASE=${APK_RELEASE:-1} ARCH_OVERRIDE="" BIN_OVERRIDE=""
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --arch-of) [ $# -eq 2 ] || die "usage: --arch-of TARGET"
            openwrt_arch "$2" || die "no OpenWrt arch known for '$2'"; exit 0 ;;
        --out) OUT=$2; shift 2 ;;
        --release) RELEASE=$2; shift 2 ;;
        --arch) ARCH_OVERRIDE=$2; shift 2 ;;
        --bin) BIN_OVERRIDE=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || die "usage: scripts/package-apk.sh [--out DIR] [--release N] [--arch NAME] [--bin FILE] TARGET..."
if [ ${#TARGETS[@]} -gt 1 ] && [ -n "$ARCH_OVERRIDE$BIN_OVERRIDE" ]; then
    die "--arch and --bin take one TARGET"
fi
echo "$RELEASE" | grep -Eq '^[0-9]+$' || die "release '$RELEASE' is not a number (apk: -r<number>)"
PKG_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)
VERSION=$PKG_VERSION-r$RELEASE
# apk: number{.number}...{letter}{_suffix{number}}...{~hash}{-r#}
echo "$VERSION" | grep -Eq '^[0-9]+(\.[0-9]+)*[a-z]?(_(alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*(~[0-9a-f]+)?-r[0-9]+$' \
    || die "version '$VERSION' is not an apk version"

APK=$("$ROOT/scripts/apk-tool.sh")
FILES=${SOCKETMAN_OPENWRT_FILES:-$ROOT/openwrt/files}
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}
DEPENDS=${APK_DEPENDS:-procd}
MAINTAINER=${APK_MAINTAINER:-socketman maintainers}
URL=${APK_URL:-}   # the project has no public home page yet (OpenWrt passes URL, empty when unset)
DESCRIPTION="socketman connects an OpenWrt device to an MQTT broker and an HTTP API: it runs jobs sent over MQTT, collects and uploads device stats, recovers from network failures (network restart, then reboot) and supervises configured services."

WORK=$(mktemp -d "${TMPDIR:-/tmp}/socketman-apk.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
umask 022

# The maintainer scripts (POSIX sh; BusyBox ash on the router; apk runs them chrooted into
# the target root with PATH=/usr/sbin:/usr/bin:/sbin:/bin).
cat >"$WORK/post-install" <<'SH'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
# Building an image (IPKG_INSTROOT): nothing; enable it on the device once configured.
[ -n "${IPKG_INSTROOT}" ] && exit 0
init=/etc/init.d/socketman
[ -x "$init" ] || exit 0
uci_get() {
	if command -v uci >/dev/null 2>&1; then
		uci -q get "socketman.main.$1"
	else
		sed -n "s/^[[:space:]]*option[[:space:]]\{1,\}$1[[:space:]]\{1,\}'\{0,1\}\([^']*\)'\{0,1\}[[:space:]]*\$/\1/p" /etc/config/socketman 2>/dev/null | head -n 1
	fi
}
config=$(uci_get config)
[ -n "$config" ] || config=/etc/socketman/config.json
init_url=$(uci_get init_url)
if [ "$PKG_UPGRADE" = 1 ]; then
	# Keep the admin's enable/disable choice; restart so that the new binary runs.
	if "$init" enabled; then "$init" restart; fi
	exit 0
fi
if [ -n "$init_url" ] || /usr/sbin/socketman --config="$config" --check-config >/dev/null 2>&1; then
	"$init" enable
	"$init" start
else
	echo "socketman: installed but not enabled: $config does not validate (socketman --check-config --config=$config) and no init_url in /etc/config/socketman. Configure it, then: $init enable; $init start" >&2
fi
exit 0
SH
{ echo '#!/bin/sh'; echo 'export PKG_UPGRADE=1'; sed '1d' "$WORK/post-install"; } >"$WORK/post-upgrade"
cat >"$WORK/pre-deinstall" <<'SH'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -n "${IPKG_INSTROOT}" ] && exit 0
init=/etc/init.d/socketman
[ -x "$init" ] || exit 0
"$init" stop
"$init" disable
exit 0
SH
chmod 0755 "$WORK/post-install" "$WORK/post-upgrade" "$WORK/pre-deinstall"

for t in "${TARGETS[@]}"; do
    arch=${ARCH_OVERRIDE:-$(openwrt_arch "$t" || true)}
    [ -n "$arch" ] || die "no OpenWrt arch known for '$t' (use --arch)"
    echo "$arch" | grep -Eq '^[A-Za-z0-9_+.-]+$' || die "bad arch '$arch'"
    bin=${BIN_OVERRIDE:-$ROOT/target/$t/release/socketman}
    [ -f "$bin" ] || die "$bin: no such file (build it: scripts/build-static.sh $t)"

    D=$WORK/$arch/data
    rm -rf "$WORK/$arch"
    mkdir -p "$D/usr/sbin" "$D/etc/init.d" "$D/etc/config" "$D/etc/socketman"
    install -m 0755 "$bin" "$D/usr/sbin/socketman"
    install -m 0755 "$FILES/socketman.init" "$D/etc/init.d/socketman"
    install -m 0644 "$FILES/socketman.config" "$D/etc/config/socketman"
    install -m 0600 "$FILES/config.json" "$D/etc/socketman/config.json"
    chmod 0700 "$D/etc/socketman"
    # As package-pack.mk: the file list (before the metadata files), the conffiles, and the
    # conffiles with their sha256 (sysupgrade uses them to find changed configs).
    P=$D/lib/apk/packages
    mkdir -p "$P"
    (cd "$D" && find . -type f,l -printf '/%P\n' | LC_ALL=C sort) >"$WORK/list"
    mv "$WORK/list" "$P/socketman.list"
    printf '%s\n' /etc/socketman/config.json /etc/config/socketman >"$P/socketman.conffiles"
    : >"$P/socketman.conffiles_static"
    while read -r f; do
        echo "$f $(sha256sum "$D$f" | cut -d' ' -f1)" >>"$P/socketman.conffiles_static"
    done <"$P/socketman.conffiles"
    chown -R 0:0 "$D" 2>/dev/null || true
    find "$D" -exec touch -h -d "@$EPOCH" {} +

    mkdir -p "$OUT/$arch"
    out="$(cd "$OUT/$arch" && pwd)/socketman-$VERSION.apk"
    rm -f "$out"
    SOURCE_DATE_EPOCH=$EPOCH "$APK" mkpkg \
        --info "name:socketman" \
        --info "version:$VERSION" \
        --info "description:$DESCRIPTION" \
        --info "arch:$arch" \
        --info "license:MIT" \
        --info "origin:socketman" \
        --info "url:$URL" \
        --info "maintainer:$MAINTAINER" \
        --script "post-install:$WORK/post-install" \
        --script "post-upgrade:$WORK/post-upgrade" \
        --script "pre-deinstall:$WORK/pre-deinstall" \
        --info "depends:$DEPENDS" \
        --files "$D" \
        --output "$out" >&2
    [ -f "$out" ] || die "apk mkpkg wrote no $out"
    echo "$out"
done
