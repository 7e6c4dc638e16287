#!/usr/bin/env bash
# Validate an .ipk made by scripts/package-ipk.sh (or any OpenWrt ipk of socketman):
#
#   scripts/check-ipk.sh FILE EXPECTED_ARCH
#
# Checks: the outer gzip'd tar holds exactly ./debian-binary ("2.0"), ./control.tar.gz and
# ./data.tar.gz; control has Package, Version, Architecture (= EXPECTED_ARCH), Depends,
# Maintainer, Description and an Installed-Size equal to the data's size; conffiles lists
# /etc/config/socketman and /etc/socketman/config.json, both present in data; postinst and
# prerm are executable shell scripts that call /etc/init.d/socketman and honour IPKG_INSTROOT;
# data has /usr/sbin/socketman (executable, static ELF for EXPECTED_ARCH's CPU per `file`),
# /etc/init.d/socketman (procd script) and the config files, all owned by root.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: scripts/check-ipk.sh FILE EXPECTED_ARCH" >&2
    exit 2
fi
IPK=$1 ARCH=$2
FAILS=0
fail() { echo "check-ipk: FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
die() { echo "check-ipk: FAIL: $*" >&2; exit 1; }
[ -f "$IPK" ] || die "$IPK: no such file"
command -v file >/dev/null || die "file(1) is needed (apt-get install file)"

W=$(mktemp -d "${TMPDIR:-/tmp}/socketman-check-ipk.XXXXXX")
trap 'rm -rf "$W"' EXIT

gzip -t "$IPK" 2>/dev/null || die "$IPK is not gzip data (opkg wants a gzip'd tar)"
outer=$(tar -tzf "$IPK" | sort | tr '\n' ' ')
[ "$outer" = "./control.tar.gz ./data.tar.gz ./debian-binary " ] || die "outer members are '$outer'"
mkdir -p "$W/outer" "$W/control" "$W/data"
tar -xzf "$IPK" -C "$W/outer"
[ "$(cat "$W/outer/debian-binary")" = "2.0" ] || fail "debian-binary is not 2.0"
tar -xzf "$W/outer/control.tar.gz" -C "$W/control"
tar -xzf "$W/outer/data.tar.gz" -C "$W/data"

# Ownership inside both inner tars: root only.
for t in control data; do
    if tar -tvzf "$W/outer/$t.tar.gz" | awk '{print $2}' | grep -vqx '0/0\|root/root'; then
        fail "$t.tar.gz has entries not owned by root: $(tar -tvzf "$W/outer/$t.tar.gz" | awk '{print $2}' | sort -u | tr '\n' ' ')"
    fi
done

C=$W/control/control
[ -f "$C" ] || die "control.tar.gz has no ./control"
field() { sed -n "s/^$1: //p" "$C" | head -n1; }
for f in Package Version Architecture Depends Maintainer Description Installed-Size; do
    grep -q "^$f:" "$C" || fail "control lacks $f"
done
[ "$(field Package)" = socketman ] || fail "Package is '$(field Package)'"
[ "$(field Architecture)" = "$ARCH" ] || fail "Architecture is '$(field Architecture)', want '$ARCH'"
field Version | grep -Eq '^[0-9][A-Za-z0-9.+~-]*$' || fail "Version '$(field Version)' is malformed"
size=$(find "$W/data" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
[ "$(field Installed-Size)" = "$size" ] || fail "Installed-Size is '$(field Installed-Size)', data holds $size bytes"

[ -f "$W/control/conffiles" ] || fail "control.tar.gz has no ./conffiles"
for cf in /etc/config/socketman /etc/socketman/config.json; do
    grep -qx "$cf" "$W/control/conffiles" 2>/dev/null || fail "conffiles lacks $cf"
    [ -f "$W/data$cf" ] || fail "conffile $cf is not in data.tar.gz"
done
if [ -f "$W/data/etc/socketman/config.json" ] && command -v python3 >/dev/null; then
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$W/data/etc/socketman/config.json" \
        || fail "/etc/socketman/config.json is not valid JSON"
fi

for s in postinst prerm; do
    p=$W/control/$s
    [ -x "$p" ] || { fail "$s missing or not executable"; continue; }
    head -n1 "$p" | grep -q '^#!/bin/sh' || fail "$s does not start with #!/bin/sh"
    grep -q 'IPKG_INSTROOT' "$p" || fail "$s ignores IPKG_INSTROOT"
    grep -q '/etc/init.d/socketman' "$p" || fail "$s does not use /etc/init.d/socketman"
    sh -n "$p" || fail "$s has a shell syntax error"
done
grep -q 'enable' "$W/control/postinst" 2>/dev/null || fail "postinst does not enable the service"
grep -q 'disable' "$W/control/prerm" 2>/dev/null || fail "prerm does not disable the service"

init=$W/data/etc/init.d/socketman
[ -x "$init" ] || fail "/etc/init.d/socketman missing or not executable"
grep -q '^USE_PROCD=1' "$init" 2>/dev/null || fail "init script is not a procd script"
sh -n "$init" 2>/dev/null || fail "init script has a shell syntax error"

bin=$W/data/usr/sbin/socketman
[ -x "$bin" ] || die "/usr/sbin/socketman missing or not executable"
desc=$(file -b "$bin")
case "$ARCH" in
    x86_64*)   want='ELF 64-bit LSB .*x86-64' ;;
    aarch64*)  want='ELF 64-bit LSB .*ARM aarch64' ;;
    arm_*|armv7*) want='ELF 32-bit LSB .*ARM, EABI5' ;;
    mipsel*)   want='ELF 32-bit LSB .*MIPS' ;;
    mips_*|mips) want='ELF 32-bit MSB .*MIPS' ;;
    i386*|i686*) want='ELF 32-bit LSB .*Intel 80386' ;;
    *) die "no CPU known for OpenWrt arch '$ARCH'" ;;
esac
echo "$desc" | grep -Eq "$want" || fail "binary is '$desc', want /$want/ for $ARCH"
echo "$desc" | grep -Eq 'statically linked|static-pie linked' || fail "binary is not static: $desc"

if [ "$FAILS" -ne 0 ]; then
    echo "check-ipk: $IPK: $FAILS problem(s)" >&2
    exit 1
fi
echo "check-ipk: ok $IPK ($(field Package) $(field Version) $(field Architecture), $(stat -c %s "$IPK") bytes; $desc)"
