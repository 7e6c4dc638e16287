#!/usr/bin/env bash
# Run the static socketman in a root that holds nothing but BusyBox, as on a router:
#
#   scripts/test-busybox-root.sh [BINARY]   # default target/x86_64-unknown-linux-musl/release/socketman
#
# The root: the static musl binary as /usr/sbin/socketman; Debian's busybox-static as
# /bin/busybox with its applets as symlinks (/bin/sh is ash, /usr/bin/logger, …); the OpenWrt
# fixture captures from tests/fixtures in their OpenWrt places (/etc/openwrt_release,
# /etc/openwrt_version, /tmp/sysinfo/model, /tmp/dhcp.leases); stand-in `iw` and `ubus` (ash)
# that print the real `iw dev`, `iw dev X station dump` and `ubus call iwinfo info` captures;
# an ash init script /etc/init.d/dummyd (no rc.common); recovery stand-ins
# /etc/init.d/network and /sbin/reboot that record that they ran (the default of
# network_restart_cmd; reboot_cmd is set to /sbin/reboot, because Debian's busybox-static
# prefers its own applets in `sh -c reboot`, which OpenWrt's BusyBox does not).
# No bash, coreutils, glibc or systemd inside.
#
# socketman runs as the child of an ash PID 1 (standing in for procd) under
# `unshare --mount --pid --fork --mount-proc` + chroot, against a mosquitto outside on a free
# loopback port, driven by target/debug/smctl from outside. Checked:
#   --collect-once: machine_type, firmware, dhcp, ssids, stations from the fixtures;
#   a shell job runs in BusyBox ash (exit code, output); daemon.restart through the init script;
#   the healthz job; recovery with real config keys (monitor 15, reboot 30, an unreachable
#   health_url/dns_check): network_restart_cmd after 15 s offline, then reboot.json and
#   reboot_cmd after 30 s; TERM to PID 1 is passed on and socketman exits 0.
# Takes about 50 s (the recovery timer dominates). Needs root (chroot, unshare).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/x86_64-unknown-linux-musl/release/socketman}
FX=$ROOT/tests/fixtures
die() { echo "test-busybox-root: FAIL: $*" >&2; exit 1; }
FAILS=0
fail() { echo "test-busybox-root: FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
ok() { echo "test-busybox-root: ok   $*"; }

[ "$(id -u)" = 0 ] || die "needs root (chroot, unshare)"
[ -x "$BIN" ] || die "$BIN: no such binary (scripts/build-static.sh x86_64-unknown-linux-musl)"
file -b "$BIN" | grep -Eq 'statically linked|static-pie linked' || die "$BIN is not static"
BUSYBOX=${BUSYBOX:-$(command -v busybox || true)}
[ -n "$BUSYBOX" ] && file -b "$BUSYBOX" | grep -Eq 'statically linked|static-pie' \
    || die "a static busybox is needed (apt-get install busybox-static)"
command -v unshare >/dev/null && command -v chroot >/dev/null || die "unshare and chroot are needed (util-linux, coreutils)"
command -v python3 >/dev/null || die "python3 is needed"
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQ" ] || die "mosquitto is needed"
SMCTL=$ROOT/target/debug/smctl
if [ ! -x "$SMCTL" ]; then
    (cd "$ROOT" && cargo build --quiet --bin smctl) || die "cannot build smctl"
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/socketman-bbroot.XXXXXX")
R=$W/root
UNSHARE_PID="" MOSQ_PID=""
cleanup() {
    [ -n "$UNSHARE_PID" ] && kill -KILL "$UNSHARE_PID" 2>/dev/null || true
    [ -n "$MOSQ_PID" ] && kill "$MOSQ_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
t0=$(date +%s)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
CLOSED=$(free_port)
MAC=02-17-00-00-00-01 TOPIC=bbroot KEY=k$$

# --- the root ------------------------------------------------------------------------------
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/socketman,tmp/sysinfo,var/run,dev,proc,root,fx}
chmod 1777 "$R/tmp"
ln -s /tmp "$R/var/tmp"
cp "$BUSYBOX" "$R/bin/busybox"
"$BUSYBOX" --list-full | while read -r a; do
    case "$a" in sbin/reboot|sbin/halt|sbin/poweroff) continue ;; esac
    [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done
install -m 0755 "$BIN" "$R/usr/sbin/socketman"
for n in null zero urandom; do
    case $n in null) m=3 ;; zero) m=5 ;; urandom) m=9 ;; esac
    mknod -m 666 "$R/dev/$n" c 1 $m
done
printf 'root:x:0:0:root:/root:/bin/ash\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
cp "$FX/openwrt_release-23.05-snapshot-x86_64" "$R/etc/openwrt_release"
cp "$FX/openwrt_version-23.05-snapshot-x86_64" "$R/etc/openwrt_version"
cp "$FX/sysinfo-model-openwrt-rpi3bplus" "$R/tmp/sysinfo/model"
cp "$FX/dhcp.leases-openwrt-tessel2" "$R/tmp/dhcp.leases"
cp "$FX/iw-dev-openwrt-3radio-ath10k.txt" "$R/fx/iw-dev"
cp "$FX/iw-station-dump-openwrt-4chain-3sta-spaces.txt" "$R/fx/station-dump"
cp "$FX/ubus-iwinfo-info-openwrt-mt7981-1.json" "$R/fx/iwinfo-info"

cat >"$R/usr/sbin/iw" <<'SH'
#!/bin/sh
# Stand-in iw: prints real captures. `iw dev`; `iw dev phy1-ap0 station dump`; else nothing.
case "$*" in
	"dev") cat /fx/iw-dev ;;
	"dev phy1-ap0 station dump") cat /fx/station-dump ;;
	"dev "*" station dump") ;;
	*) echo "iw stand-in: $*" >&2; exit 1 ;;
esac
SH
cat >"$R/bin/ubus" <<'SH'
#!/bin/sh
# Stand-in ubus: `ubus call iwinfo info {...}` prints a real capture; nothing else exists.
[ "$1 $2 $3" = "call iwinfo info" ] && exec cat /fx/iwinfo-info
echo "ubus stand-in: $*" >&2
exit 4
SH
cat >"$R/etc/init.d/dummyd" <<'SH'
#!/bin/sh
# An init script in plain BusyBox ash (no rc.common): a daemon that is a sleep.
PIDF=/var/run/dummyd.pid
log() { echo "$*" >>/tmp/dummyd.log; }
is_running() { [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }
start() {
	is_running && return 0
	setsid sleep 600 </dev/null >/dev/null 2>&1 &
	echo $! >"$PIDF"
	log "start $!"
}
stop() {
	is_running && kill "$(cat "$PIDF")"
	rm -f "$PIDF"
	log stop
}
case "$1" in
	start) start ;;
	stop) stop ;;
	restart) log restart; stop; start ;;
	reload) log reload ;;
	running|status) is_running ;;
	enable|disable) log "$1" ;;
	enabled) true ;;
	*) echo "usage: $0 start|stop|restart|reload|running|status|enable|disable|enabled" >&2; exit 1 ;;
esac
SH
cat >"$R/etc/init.d/network" <<'SH'
#!/bin/sh
# Stand-in for OpenWrt's network init script: records a restart (network_restart_cmd).
[ "$1" = restart ] || exit 1
echo "network restart $(date +%s)" >>/tmp/recovery.log
SH
cat >"$R/sbin/reboot" <<'SH'
#!/bin/sh
# Stand-in reboot (reboot_cmd): records that it ran; the system stays up.
echo "reboot $* $(date +%s)" >>/tmp/recovery.log
SH
cat >"$R/sbin/test-init" <<'SH'
#!/bin/sh
# PID 1 of the test's PID namespace, standing in for procd: starts the daemons, runs
# socketman, passes TERM on to it and records its exit code.
/etc/init.d/dummyd start
DEBUG=1 /usr/sbin/socketman --config=/etc/socketman/config.json >/tmp/socketman.log 2>&1 &
pid=$!
echo "$pid" >/tmp/socketman.pid
trap 'kill -TERM "$pid"' TERM
while :; do
	wait "$pid"
	rc=$?
	kill -0 "$pid" 2>/dev/null || break
done
echo "$rc" >/tmp/socketman.exit
SH
chmod 0755 "$R/usr/sbin/iw" "$R/bin/ubus" "$R/etc/init.d/dummyd" "$R/etc/init.d/network" \
    "$R/sbin/reboot" "$R/sbin/test-init"
for s in usr/sbin/iw bin/ubus etc/init.d/dummyd etc/init.d/network sbin/reboot sbin/test-init; do
    "$BUSYBOX" ash -n "$R/$s" || die "$s: ash syntax error"
done

cat >"$R/etc/socketman/config.json" <<JSON
{"topic":"$TOPIC","key":"$KEY","mqtt_host":"127.0.0.1","port":$PORT,"mac":"$MAC",
 "cache_dir":"/tmp/socketman","state_dir":"/etc/socketman/state",
 "monitor":15,"heartbeat":60,"reboot":30,"no-ping":1,"watchdog_port":0,
 "health_url":"127.0.0.1","health_port":$CLOSED,"dns_check":"socketman-root-test.invalid",
 "reboot_cmd":"/sbin/reboot","daemons":["dummyd","network"]}
JSON
chmod 0600 "$R/etc/socketman/config.json"
printf 'nameserver 127.0.0.1\n' >"$R/etc/resolv.conf"
# Nothing of the host's userland may be in the root.
for f in bash dash coreutils; do
    [ -z "$(find "$R" -name "$f" -print -quit)" ] || die "$f in the root"
done
[ -z "$(find "$R" -name 'ld-linux*' -o -name 'libc.so*' | head -n1)" ] || die "glibc in the root"

inroot() { # inroot CMD... : run in a fresh PID namespace, chrooted, with a router's environment
    unshare --mount --pid --fork --mount-proc="$R/proc" \
        chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"
}

# --- collect-once --------------------------------------------------------------------------
s=$(date +%s)
inroot /usr/sbin/socketman --config=/etc/socketman/config.json --collect-once >"$W/record.json" 2>"$W/collect.err" \
    || { cat "$W/collect.err" >&2; die "--collect-once failed in the root"; }
python3 - "$W/record.json" <<'PY' || fail "--collect-once record does not match the fixtures"
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
d = r["device"]
bad = []
def want(what, got, exp):
    if got != exp: bad.append(f"{what}: got {got!r}, want {exp!r}")
want("machine_type", d.get("machine_type"), "Raspberry Pi 3 Model B Plus Rev 1.3")
want("firmware", d.get("firmware"), "r23633-c7b6cfac40")
want("dhcp", [(x.get("mac"), x.get("ip"), x.get("name")) for x in r.get("dhcp", [])],
     [("5C:A8:6A:F4:E8:EE", "192.168.1.158", "android-72d96d29a805b447")])
want("ssids", sorted((x.get("interface"), x.get("ssid"), x.get("channel")) for x in r.get("ssids", [])),
     [("phy0-ap0", "AltheaHome-5", 149), ("phy1-ap0", "AltheaHome-2.4", 1), ("phy2-ap0", "AltheaHome-5", 36)])
want("ssid noise from ubus", sorted({x.get("noise") for x in r.get("ssids", [])}), [-83])
# MACs upper case, as the C SocketMan sends them (issue 16).
macs = [l.split()[1].upper() for l in open(sys.argv[1].rsplit("/", 1)[0] + "/root/fx/station-dump") if l.startswith("Station ")]
want("stations", sorted(x.get("mac") for x in r.get("stations", [])), sorted(macs))
want("station ssid", sorted({x.get("ssid") for x in r.get("stations", [])}), ["AltheaHome-2.4"])
for b in bad: print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
ok "--collect-once in the root: machine_type, firmware, dhcp, ssids, stations ($(( $(date +%s) - s )) s)"

# --- the broker and the agent --------------------------------------------------------------
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" >"$W/mosquitto.conf"
"$MOSQ" -c "$W/mosquitto.conf" >"$W/mosquitto.log" 2>&1 &
MOSQ_PID=$!
cat >"$W/smctl.json" <<JSON
{"mqtt_host":"127.0.0.1","port":$PORT,"topic":"$TOPIC","key":"$KEY","mac":"$MAC"}
JSON
sm() { "$SMCTL" -c "$W/smctl.json" "$@"; }
for _ in $(seq 50); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && break
    sleep 0.1
done

start=$(date +%s)
unshare --mount --pid --fork --mount-proc="$R/proc" chroot "$R" \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/sh /sbin/test-init >"$W/init.out" 2>&1 &
UNSHARE_PID=$!
agent_log() { echo "--- socketman log (tail)"; tail -n 40 "$R/tmp/socketman.log" 2>/dev/null; cat "$W/init.out"; } >&2
online=0
for _ in $(seq 40); do
    if sm op --timeout 2 ping >"$W/ping.json" 2>/dev/null; then online=1; break; fi
    sleep 0.5
done
[ "$online" = 1 ] || { agent_log; die "socketman in the root never answered a ping"; }
ok "socketman online, answers ping ($(( $(date +%s) - start )) s after start)"

# --- a shell job in ash ----------------------------------------------------------------------
set +e
out=$(sm send --timeout 20 -- 'readlink /proc/$$/exe; echo "bash=${BASH_VERSION:-none}"; ls --help 2>&1 | head -n 1; exit 3')
rc=$?
set -e
[ "$rc" = 3 ] || fail "shell job exit code $rc, want 3 (output: $out)"
echo "$out" | grep -qx '/bin/busybox' || fail "the job's shell is not /bin/busybox: $out"
echo "$out" | grep -qx 'bash=none' || fail "the job ran in bash: $out"
echo "$out" | grep -q '^BusyBox v' || fail "ls in the job is not BusyBox's: $out"
ok "shell job in BusyBox ash (exit code 3 returned)"

# --- daemon.restart through the init script --------------------------------------------------
before=$(cat "$R/var/run/dummyd.pid" 2>/dev/null || echo none)
sm op --timeout 20 daemon.restart '{"name":"dummyd"}' >"$W/restart.json" 2>"$W/restart.err" \
    || fail "daemon.restart failed: $(cat "$W/restart.json" "$W/restart.err")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get("name")=="dummyd" and d.get("status")=="running" else 1)' \
    "$W/restart.json" 2>/dev/null || fail "daemon.restart result is $(cat "$W/restart.json")"
grep -qx restart "$R/tmp/dummyd.log" || fail "the init script did not see restart: $(cat "$R/tmp/dummyd.log" 2>/dev/null)"
after=$(cat "$R/var/run/dummyd.pid" 2>/dev/null || echo none)
[ "$before" != "$after" ] && [ "$after" != none ] || fail "dummyd was not restarted (pid $before -> $after)"
sm op --timeout 20 daemon.list >"$W/daemons.json" 2>/dev/null || fail "daemon.list failed"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); n={x["name"]:x["status"] for x in d["daemons"]}; sys.exit(0 if n.get("dummyd")=="running" else 1)' \
    "$W/daemons.json" 2>/dev/null || fail "daemon.list: $(cat "$W/daemons.json")"
ok "daemon.restart via /etc/init.d/dummyd (pid $before -> $after), daemon.list"

# --- healthz ----------------------------------------------------------------------------------
VER=$("$BIN" --version | awk '{print $2}')
# The first connectivity check takes up to 6 s (TCP and DNS timeouts); until then online is null.
for _ in $(seq 20); do
    sm op --timeout 20 healthz >"$W/healthz.json" 2>/dev/null || { fail "healthz job failed"; break; }
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["meta"]["network"]["online"] is not None else 1)' \
        "$W/healthz.json" 2>/dev/null && break
    sleep 0.5
done
python3 - "$W/healthz.json" "$VER" <<'PY' || fail "healthz document: $(cat "$W/healthz.json")"
import json, sys
h = json.load(open(sys.argv[1])); m = h["meta"]
ok = (m["agent"]["version"] == sys.argv[2] and m["mqtt_status"]["is_connected"] is True
      and m["network"]["online"] is False
      and any(d["name"] == "dummyd" and d["status"] == "running" for d in h["data"]["daemons"]))
sys.exit(0 if ok else 1)
PY
ok "healthz: version $VER, MQTT connected, network offline, dummyd running"

# --- recovery: network_restart_cmd at 15 s offline, reboot_cmd at 30 s ------------------------
wait_for() { # wait_for PATTERN FILE DEADLINE_S_AFTER_START
    while [ $(( $(date +%s) - start )) -lt "$3" ]; do
        grep -q "$1" "$2" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}
if wait_for '^network restart' "$R/tmp/recovery.log" 40; then
    ok "network_restart_cmd (/etc/init.d/network restart) ran $(( $(sed -n 's/^network restart //p' "$R/tmp/recovery.log" | head -n1) - start )) s after start"
else
    agent_log; fail "network_restart_cmd did not run within 40 s"
fi
if wait_for '^reboot' "$R/tmp/recovery.log" 60; then
    grep -q '"reason":"offline"' "$R/etc/socketman/state/reboot.json" 2>/dev/null \
        || fail "no reboot.json with reason offline before reboot_cmd"
    ok "reboot.json written and reboot_cmd (/sbin/reboot) ran $(( $(sed -n 's/^reboot //p' "$R/tmp/recovery.log" | head -n1) - start )) s after start"
else
    agent_log; fail "reboot_cmd did not run within 60 s"
fi
[ "$(grep -c '^network restart' "$R/tmp/recovery.log" 2>/dev/null)" = 1 ] || fail "network_restart_cmd ran more than once"

# --- clean stop -------------------------------------------------------------------------------
# PID 1 of the namespace (the ash test-init) is unshare's child.
init_pid=$(ps -o pid= --ppid "$UNSHARE_PID" | awk 'NR==1{print $1}')
[ -n "$init_pid" ] || die "cannot find PID 1 of the namespace"
s=$(date +%s)
kill -TERM "$init_pid"
for _ in $(seq 60); do kill -0 "$UNSHARE_PID" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$UNSHARE_PID" 2>/dev/null; then
    agent_log; fail "socketman did not stop within 30 s of TERM"
else
    wait "$UNSHARE_PID" 2>/dev/null || true
    UNSHARE_PID=""
    rc=$(cat "$R/tmp/socketman.exit" 2>/dev/null || echo none)
    [ "$rc" = 0 ] || { agent_log; fail "socketman exited with $rc after TERM, want 0"; }
    [ "$rc" = 0 ] && ok "TERM: socketman exited 0 in $(( $(date +%s) - s )) s"
fi
if grep -qiE 'panick|No such file or directory \(os error 2\).*(/bin/bash|/usr/bin/env)' "$R/tmp/socketman.log" 2>/dev/null; then
    fail "socketman log shows a panic or a missing host program: $(grep -iE 'panick|os error 2' "$R/tmp/socketman.log" | head -n 3)"
fi

if [ "$FAILS" -ne 0 ]; then
    echo "test-busybox-root: $FAILS problem(s) ($(( $(date +%s) - t0 )) s)" >&2
    exit 1
fi
echo "test-busybox-root: all passed in $(( $(date +%s) - t0 )) s"
