#!/usr/bin/env bash
# Check an .apk made by scripts/package-apk.sh the way a router would, with apk-tools 3:
#
#   scripts/check-apk.sh FILE EXPECTED_ARCH
#
# 1. Metadata (apk adbdump): name socketman, version N-rM, arch EXPECTED_ARCH, depends procd,
#    license, maintainer, description, origin, the scripts post-install, post-upgrade and
#    pre-deinstall, and every file owned by root.
# 2. `apk add --root R --initdb --allow-untrusted --no-network` into a root that holds only
#    what a router has and apk needs: BusyBox (Debian's busybox-static: /bin/sh is ash), a
#    stand-in /etc/rc.common that records enable/disable/start/stop/restart, an empty
#    stand-in `procd` package (the dependency) and /etc/apk/arch = EXPECTED_ARCH. Then: the
#    file list, modes and owners; lib/apk/packages/socketman.{list,conffiles,conffiles_static}
#    as OpenWrt's build makes them; the static binary for EXPECTED_ARCH's CPU (`file`).
#    When the binary runs here (same CPU, or binfmt): the shipped config does not validate,
#    so post-install must not enable the service.
# 3. Upgrade to a -r(M+1) package built from the same binary with a changed packaged
#    /etc/config/socketman, after the user edited /etc/config/socketman, wrote a valid
#    config.json and enabled the service: both edits survive (apk's protected /etc keeps them;
#    the new default lands as .apk-new) and post-upgrade restarts the enabled service.
# 4. `apk del`: pre-deinstall stops and disables it; the binary, init script and package
#    metadata are gone; only the user-modified configs stay, as OpenWrt leaves them.
# 5. Reinstall with the kept valid config: post-install enables and starts the service.
# 6. Signing: a feed index made with `apk mkndx --sign-key` and an EC key generated here;
#    `apk add` with --keys-dir holding the public key installs from it, without
#    --allow-untrusted; with no key it refuses (UNTRUSTED signature).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ne 2 ]; then
    echo "usage: scripts/check-apk.sh FILE EXPECTED_ARCH" >&2
    exit 2
fi
PKG=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") ARCH=$2
FAILS=0
fail() { echo "check-apk: FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
die() { echo "check-apk: FAIL: $*" >&2; exit 1; }
[ -f "$PKG" ] || die "$PKG: no such file"
command -v file >/dev/null || die "file(1) is needed (apt-get install file)"
command -v openssl >/dev/null || die "openssl is needed"
[ "$(id -u)" = 0 ] || die "needs root (apk --initdb into a root, chroot for the scripts)"
BUSYBOX=${BUSYBOX:-$(command -v busybox || true)}
[ -n "$BUSYBOX" ] && file -b "$BUSYBOX" | grep -Eq 'statically linked|static-pie' \
    || die "a static busybox is needed (apt-get install busybox-static)"
APK=$("$ROOT/scripts/apk-tool.sh")

W=$(mktemp -d "${TMPDIR:-/tmp}/socketman-check-apk.XXXXXX")
trap 'rm -rf "$W"' EXIT
R=$W/root

# --- 1. metadata -------------------------------------------------------------------------
"$APK" adbdump "$PKG" >"$W/dump" || die "apk adbdump cannot read $PKG"
meta() { sed -n "s/^  $1: //p" "$W/dump" | head -n1; }
[ "$(meta name)" = socketman ] || fail "name is '$(meta name)'"
VERSION=$(meta version)
echo "$VERSION" | grep -Eq '^[0-9]+(\.[0-9]+)*-r[0-9]+$' || fail "version '$VERSION' is not PKG_VERSION-rN"
[ "$(meta arch)" = "$ARCH" ] || fail "arch is '$(meta arch)', want '$ARCH'"
for k in license maintainer origin; do [ -n "$(meta $k)" ] || fail "no $k"; done
grep -q '^  description: ' "$W/dump" || fail "no description"
grep -A2 '^  depends:' "$W/dump" | grep -qx '    - procd' || fail "depends lacks procd"
for s in post-install post-upgrade pre-deinstall; do
    grep -q "^  $s: " "$W/dump" || fail "no $s script"
done
if grep -E '^ +(user|group): ' "$W/dump" | grep -vqE ': root$'; then
    fail "entries not owned by root: $(grep -E '^ +(user|group): ' "$W/dump" | sort -u | tr -s ' ' | tr '\n' ' ')"
fi

# --- the router-like root ----------------------------------------------------------------
mkdir -p "$R/bin" "$R/sbin" "$R/usr/bin" "$R/usr/sbin" "$R/tmp" "$R/etc/apk"
cp "$BUSYBOX" "$R/bin/busybox"
"$BUSYBOX" --list-full | while read -r a; do
    [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done
echo "$ARCH" >"$R/etc/apk/arch"
cat >"$R/etc/rc.common" <<'RC'
#!/bin/sh
# Stand-in for OpenWrt's /etc/rc.common: records the action; enable/disable/enabled use
# /etc/rc.d links as the real one does.
initscript=$1 action=$2
name=${initscript##*/}
START=$(sed -n 's/^START=//p' "$initscript") STOP=$(sed -n 's/^STOP=//p' "$initscript")
echo "$name $action" >>/tmp/rc.log
case "$action" in
	enable) mkdir -p /etc/rc.d
		ln -sf "../init.d/$name" "/etc/rc.d/S$START$name"
		ln -sf "../init.d/$name" "/etc/rc.d/K$STOP$name" ;;
	disable) rm -f /etc/rc.d/S??"$name" /etc/rc.d/K??"$name" ;;
	enabled) [ -e "/etc/rc.d/S$START$name" ] ;;
esac
RC
chmod 0755 "$R/etc/rc.common"
mkdir -p "$W/procd/lib/apk/packages"
: >"$W/procd/lib/apk/packages/procd.list"
"$APK" mkpkg --info name:procd --info version:0-r0 --info arch:noarch \
    --info "description:stand-in for the router's procd" --files "$W/procd" --output "$W/procd.apk" >/dev/null
rclog() { cat "$R/tmp/rc.log" 2>/dev/null | tr '\n' ',' ; }

# Can this machine run the package's binary inside the root (same CPU or binfmt)?
SCRIPTS=1
mkdir -p "$W/x"
"$APK" extract --allow-untrusted --destination "$W/x" "$PKG" >/dev/null 2>&1 || fail "apk extract failed"
cp "$W/x/usr/sbin/socketman" "$R/tmp/probe" 2>/dev/null || true
chroot "$R" /tmp/probe --version >/dev/null 2>&1 || SCRIPTS=0
rm -f "$R/tmp/probe"
[ "$SCRIPTS" = 1 ] || echo "check-apk: $ARCH binary does not run here: scripts checked for syntax only, installs use --no-scripts"
NOSCRIPTS=()
[ "$SCRIPTS" = 1 ] || NOSCRIPTS=(--no-scripts)

# --- 2. install --------------------------------------------------------------------------
"$APK" add --root "$R" --initdb --allow-untrusted --no-network --quiet "${NOSCRIPTS[@]}" \
    "$W/procd.apk" "$PKG" >"$W/add.out" 2>&1 || { cat "$W/add.out" >&2; die "apk add into an empty root failed"; }
want_mode() { # want_mode PATH MODE
    [ -e "$R$1" ] || { fail "$1 is not installed"; return; }
    m=$(stat -c '%a %U:%G' "$R$1")
    [ "$m" = "$2 root:root" ] || fail "$1 is '$m', want '$2 root:root'"
}
want_mode /usr/sbin/socketman 755
want_mode /etc/init.d/socketman 755
want_mode /etc/config/socketman 644
want_mode /etc/socketman 700
want_mode /etc/socketman/config.json 600
P=$R/lib/apk/packages
printf '%s\n' /etc/config/socketman /etc/init.d/socketman /etc/socketman/config.json /usr/sbin/socketman >"$W/list.want"
cmp -s "$W/list.want" "$P/socketman.list" || fail "socketman.list is '$(tr '\n' ' ' <"$P/socketman.list" 2>/dev/null)'"
for cf in /etc/config/socketman /etc/socketman/config.json; do
    grep -qx "$cf" "$P/socketman.conffiles" 2>/dev/null || fail "socketman.conffiles lacks $cf"
    sum=$(sha256sum "$R$cf" 2>/dev/null | cut -d' ' -f1)
    grep -qx "$cf $sum" "$P/socketman.conffiles_static" 2>/dev/null || fail "socketman.conffiles_static lacks '$cf <sha256>'"
done
"$APK" info --root "$R" --no-network -L socketman 2>/dev/null | grep -qx 'usr/sbin/socketman' \
    || fail "apk info -L does not list usr/sbin/socketman"
desc=$(file -b "$R/usr/sbin/socketman")
case "$ARCH" in
    x86_64*) want='ELF 64-bit LSB .*x86-64' ;;
    aarch64*) want='ELF 64-bit LSB .*ARM aarch64' ;;
    arm_*) want='ELF 32-bit LSB .*ARM, EABI5' ;;
    mipsel*) want='ELF 32-bit LSB .*MIPS' ;;
    mips_*) want='ELF 32-bit MSB .*MIPS' ;;
    *) die "no CPU known for OpenWrt arch '$ARCH'" ;;
esac
echo "$desc" | grep -Eq "$want" || fail "binary is '$desc', want /$want/ for $ARCH"
echo "$desc" | grep -Eq 'statically linked|static-pie linked' || fail "binary is not static: $desc"
# The scripts as apk stored them, under BusyBox ash.
for s in post-install post-upgrade pre-deinstall; do
    sed -n "/^  $s: |/,/^  [a-z-]*:/p" "$W/dump" | sed '1d;$d' | sed 's/^    //' >"$W/$s.sh"
    [ -s "$W/$s.sh" ] || { fail "cannot read the $s script"; continue; }
    head -n1 "$W/$s.sh" | grep -qx '#!/bin/sh' || fail "$s does not start with #!/bin/sh"
    grep -q 'IPKG_INSTROOT' "$W/$s.sh" || fail "$s ignores IPKG_INSTROOT"
    "$BUSYBOX" ash -n "$W/$s.sh" || fail "$s: ash syntax error"
done
if [ "$SCRIPTS" = 1 ]; then
    grep -q 'not enabled' "$W/add.out" || fail "post-install said nothing about the invalid config: $(cat "$W/add.out")"
    case ",$(rclog)" in *",socketman enable,"*|*",socketman start,"*)
        fail "post-install enabled/started with a config that does not validate: $(rclog)" ;; esac
    [ ! -e "$R/etc/rc.d/S95socketman" ] || fail "S95socketman link after install with an invalid config"
fi

# --- 3. upgrade over the user's edits ----------------------------------------------------
rel=${VERSION##*-r}
cp -r "$ROOT/openwrt/files" "$W/files2"
echo "# packaged default changed in -r$((rel + 1))" >>"$W/files2/socketman.config"
PKG2=$(SOCKETMAN_OPENWRT_FILES=$W/files2 "$ROOT/scripts/package-apk.sh" --out "$W/out2" \
    --release $((rel + 1)) --arch "$ARCH" --bin "$W/x/usr/sbin/socketman" "$ARCH") \
    || die "cannot build the -r$((rel + 1)) package"
printf "\toption init_url 'https://init.example.invalid/x' # user edit\n" >>"$R/etc/config/socketman"
cat >"$R/etc/socketman/config.json" <<'JSON'
{"topic":"t","key":"k","mqtt_host":"127.0.0.1","cache_dir":"/tmp/socketman","state_dir":"/tmp/socketman-state"}
JSON
cp "$R/etc/config/socketman" "$W/user.uci"
cp "$R/etc/socketman/config.json" "$W/user.json"
if [ "$SCRIPTS" = 1 ]; then
    chroot "$R" /etc/init.d/socketman enable || fail "/etc/init.d/socketman enable failed"
fi
: >"$R/tmp/rc.log"
"$APK" add --root "$R" --allow-untrusted --no-network --quiet "${NOSCRIPTS[@]}" "$PKG2" >"$W/up.out" 2>&1 \
    || { cat "$W/up.out" >&2; fail "upgrade to $(basename "$PKG2") failed"; }
installed=$(sed -n '/^P:socketman$/,/^$/s/^V://p' "$R/lib/apk/db/installed")
[ "$installed" = "${VERSION%-r*}-r$((rel + 1))" ] || fail "after the upgrade the apk database has socketman '$installed'"
cmp -s "$W/user.uci" "$R/etc/config/socketman" || fail "the user's /etc/config/socketman did not survive the upgrade"
cmp -s "$W/user.json" "$R/etc/socketman/config.json" || fail "the user's config.json did not survive the upgrade"
grep -q 'packaged default changed' "$R/etc/config/socketman.apk-new" 2>/dev/null \
    || fail "no /etc/config/socketman.apk-new with the new packaged default"
if [ "$SCRIPTS" = 1 ]; then
    case ",$(rclog)" in *",socketman restart,"*) ;; *) fail "post-upgrade did not restart the enabled service: $(rclog)" ;; esac
    case ",$(rclog)" in *",socketman disable,"*) fail "the upgrade disabled the service: $(rclog)" ;; esac
    [ -e "$R/etc/rc.d/S95socketman" ] || fail "the upgrade lost the S95socketman link"
fi

# --- 4. remove ---------------------------------------------------------------------------
rm -f "$R/etc/config/socketman.apk-new"
: >"$R/tmp/rc.log"
"$APK" del --root "$R" --no-network --quiet "${NOSCRIPTS[@]}" socketman >"$W/del.out" 2>&1 \
    || { cat "$W/del.out" >&2; fail "apk del failed"; }
if [ "$SCRIPTS" = 1 ]; then
    case ",$(rclog)" in *",socketman stop,"*"socketman disable,"*) ;; *) fail "pre-deinstall did not stop and disable: $(rclog)" ;; esac
    [ ! -e "$R/etc/rc.d/S95socketman" ] || fail "S95socketman left after removal"
fi
for f in /usr/sbin/socketman /etc/init.d/socketman /lib/apk/packages/socketman.list \
    /lib/apk/packages/socketman.conffiles /lib/apk/packages/socketman.conffiles_static; do
    [ ! -e "$R$f" ] || fail "$f left after apk del"
done
left=$(cd "$R" && find . -path ./bin -prune -o -path ./sbin -prune -o -path ./usr/bin -prune \
    -o -path ./usr/sbin -prune -o -path ./lib/apk/db -prune -o -path ./tmp -prune -o -path ./var -prune \
    -o -path ./dev -prune -o -path ./proc -prune -o -path ./etc/apk -prune -o -type f -print | LC_ALL=C sort | tr '\n' ' ')
want_left="./etc/config/socketman ./etc/rc.common ./etc/socketman/config.json ./lib/apk/packages/procd.list "
[ "$left" = "$want_left" ] || fail "after apk del the root holds '$left', want '$want_left' (the user's edited configs)"

# --- 5. reinstall with the kept valid config ---------------------------------------------
if [ "$SCRIPTS" = 1 ]; then
    : >"$R/tmp/rc.log"
    "$APK" add --root "$R" --allow-untrusted --no-network --quiet "$PKG" >"$W/re.out" 2>&1 \
        || { cat "$W/re.out" >&2; fail "reinstall failed"; }
    case ",$(rclog)" in *",socketman enable,socketman start,"*) ;;
        *) fail "post-install with a valid config did not enable and start: $(rclog) $(cat "$W/re.out")" ;; esac
    [ -e "$R/etc/rc.d/S95socketman" ] || fail "no S95socketman link after install with a valid config"
    cmp -s "$W/user.json" "$R/etc/socketman/config.json" || fail "reinstall replaced the kept config.json"
fi

# --- 6. a signed feed --------------------------------------------------------------------
F=$W/feed
mkdir -p "$F/$ARCH" "$W/keys" "$W/nokeys"
cp "$PKG" "$F/$ARCH/"
openssl ecparam -name prime256v1 -genkey -noout -out "$W/feed-key.pem" 2>/dev/null
openssl ec -in "$W/feed-key.pem" -pubout -out "$W/keys/feed-key.pem" 2>/dev/null
"$APK" mkndx --allow-untrusted --sign-key "$W/feed-key.pem" --output "$F/$ARCH/packages.adb" \
    "$F/$ARCH/$(basename "$PKG")" >/dev/null 2>&1 || fail "apk mkndx --sign-key failed"
S=$W/signed-root
mkdir -p "$S/etc/apk"
echo "$ARCH" >"$S/etc/apk/arch"
"$APK" add --root "$S" --initdb --no-network --no-scripts --allow-untrusted "$W/procd.apk" >/dev/null 2>&1
if ! "$APK" add --root "$S" --no-network --no-scripts --keys-dir "$W/keys" \
    --repository "$F/$ARCH/packages.adb" socketman >"$W/signed.out" 2>&1; then
    fail "apk add from the signed index with --keys-dir failed: $(tr '\n' ' ' <"$W/signed.out")"
fi
[ -x "$S/usr/sbin/socketman" ] || fail "nothing installed from the signed index"
U=$W/untrusted-root
mkdir -p "$U/etc/apk"
echo "$ARCH" >"$U/etc/apk/arch"
"$APK" add --root "$U" --initdb --no-network --no-scripts --allow-untrusted "$W/procd.apk" >/dev/null 2>&1
if "$APK" add --root "$U" --no-network --no-scripts --keys-dir "$W/nokeys" \
    --repository "$F/$ARCH/packages.adb" socketman >"$W/unsigned.out" 2>&1; then
    fail "apk add from the signed index without its key succeeded"
fi
grep -qi 'untrusted' "$W/unsigned.out" || fail "refusal without the key does not say UNTRUSTED: $(tr '\n' ' ' <"$W/unsigned.out")"

if [ "$FAILS" -ne 0 ]; then
    echo "check-apk: $PKG: $FAILS problem(s)" >&2
    exit 1
fi
scripts_note=$([ "$SCRIPTS" = 1 ] && echo "scripts run under busybox ash" || echo "scripts syntax-checked only")
echo "check-apk: ok $PKG (socketman $VERSION $ARCH, $(stat -c %s "$PKG") bytes; install, upgrade, remove, signed feed; $scripts_note)"
