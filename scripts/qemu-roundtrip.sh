#!/usr/bin/env bash
# Run a static socketman binary for TARGET (natively, or under qemu-user for other
# architectures) and prove it works end to end:
#   1. `--version` prints `socketman <semver> (<sha>)`;
#   2. `--collect-once` exits 0 and prints one JSON object line;
#   3. a real job round trip over plain MQTT and over MQTT/TLS: a local mosquitto (started
#      here) with a test CA made by `openssl` at run time (server certificate for 127.0.0.1
#      and localhost); the agent gets {"id":"qemu-1","meta":{"msg":"echo hello"}} on
#      sub/T/K/MAC and must answer PROCESSED with "hello" on pub/T/K/MAC.
#
#   scripts/qemu-roundtrip.sh TARGET [BINARY]
#
# BINARY defaults to target/TARGET/release/socketman (scripts/build-static.sh TARGET).
# Installs missing qemu-user-static, mosquitto, mosquitto-clients, openssl with apt-get.
# KEEP=1 keeps the temp directory (configs, certificates, logs) for a look afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${1:?usage: scripts/qemu-roundtrip.sh TARGET [BINARY]}
BIN=${2:-$ROOT/target/$TARGET/release/socketman}
WAIT=${ROUNDTRIP_WAIT:-30}

log() { echo "qemu-roundtrip[$TARGET]: $*" >&2; }
die() { echo "qemu-roundtrip[$TARGET]: FAIL: $*" >&2; exit 1; }

APT_UPDATED=0
need() { # need CMD PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ "$APT_UPDATED" = 0 ]; then $sudo apt-get update -qq >&2; APT_UPDATED=1; fi
    log "apt-get install $2"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$2" >&2
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}

[ -x "$BIN" ] || die "$BIN not found (run scripts/build-static.sh $TARGET first)"

host=$(uname -m)
case "$TARGET" in
    x86_64-*)  arch=x86_64;  qemu=qemu-x86_64-static ;;
    aarch64-*) arch=aarch64; qemu=qemu-aarch64-static ;;
    armv7-*)   arch=armv7l;  qemu=qemu-arm-static ;;
    mipsel-*)  arch=mipsel;  qemu=qemu-mipsel-static ;;
    mips-*)    arch=mips;    qemu=qemu-mips-static ;;
    *) die "unknown target $TARGET" ;;
esac
RUN=()
if [ "$arch" != "$host" ]; then
    need "$qemu" qemu-user-static
    RUN=("$qemu")
fi
need mosquitto mosquitto
need mosquitto_pub mosquitto-clients
need openssl openssl
# Debian puts mosquitto in /usr/sbin, which may not be on a CI user's PATH.
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/socketman-roundtrip.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$rc" != 0 ]; then
        for f in "$TMP"/*.log; do
            [ -f "$f" ] || continue
            echo "----- $f (last 40 lines) -----" >&2
            tail -n 40 "$f" >&2
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT

log "binary: $BIN ($(stat -c %s "$BIN") bytes; $(file -b "$BIN"))"
log "runner: ${RUN[*]:-native}"

# 1. --version
ver=$("${RUN[@]}" "$BIN" --version) || die "--version exited $?"
echo "$ver" | grep -Eq '^socketman [0-9]+\.[0-9]+\.[0-9]+[^ ]* \([^)]+\)$' || die "--version printed '$ver'"
log "ok --version: $ver"

# 2. --collect-once: one JSON object line on stdout, exit 0.
set +e
timeout "${ROUNDTRIP_COLLECT_TIMEOUT:-60}" "${RUN[@]}" "$BIN" --collect-once >"$TMP/collect.out" 2>"$TMP/collect.log"
rc=$?
set -e
if [ "$rc" = 124 ] && [ "$arch" = mips ] && [ ${#RUN[@]} -gt 0 ]; then
    # musl's getifaddrs(3) (rtnetlink dump) spins forever under qemu-mips: qemu-user's netlink
    # translation for a big-endian guest on a little-endian host. A 10-line C program calling
    # getifaddrs does the same under qemu-mips and works under qemu-mipsel; real MIPS
    # big-endian hardware talks to its own kernel and is not affected.
    log "skip --collect-once: getifaddrs(3) spins under qemu-mips (qemu-user netlink translation), not a socketman failure"
elif [ "$rc" = 0 ]; then
    lines=$(grep -c . "$TMP/collect.out" || true)
    [ "$lines" = 1 ] || die "--collect-once printed $lines non-empty lines, want 1"
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; v=json.loads(open(sys.argv[1]).read()); assert isinstance(v, dict), "not an object"' \
            "$TMP/collect.out" || die "--collect-once output is not a JSON object: $(head -c 300 "$TMP/collect.out")"
    else
        grep -Eq '^\{.*\}$' "$TMP/collect.out" || die "--collect-once output is not a JSON object"
    fi
    log "ok --collect-once: $(wc -c <"$TMP/collect.out") bytes of JSON"
elif grep -qi 'not built yet' "$TMP/collect.out" "$TMP/collect.log"; then
    log "skip --collect-once: this build says the collector is not built yet (exit $rc)"
else
    die "--collect-once exited $rc: $(head -c 300 "$TMP/collect.log")"
fi

# 3. Test CA and a server certificate for 127.0.0.1 / localhost, made now.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=socketman test CA" \
    -keyout "$TMP/ca.key" -out "$TMP/ca.crt" 2>"$TMP/openssl.err"
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$TMP/server.key" -out "$TMP/server.csr" 2>>"$TMP/openssl.err"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$TMP/server.ext"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -extfile "$TMP/server.ext" -out "$TMP/server.crt" 2>>"$TMP/openssl.err"
# A second CA that did not sign the server: the agent must refuse the broker with it.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=wrong CA" \
    -keyout "$TMP/wrong.key" -out "$TMP/wrong.crt" 2>>"$TMP/openssl.err"

free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$(( 20000 + RANDOM % 30000 ))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    die "no free port"
}
PLAIN=$(free_port)
TLS=$(free_port)
[ "$PLAIN" != "$TLS" ] || TLS=$((PLAIN + 1))
cat >"$TMP/mosquitto.conf" <<CONF
persistence false
# mosquitto started as root would switch to user "mosquitto", which cannot read $TMP.
user $(id -un)
allow_anonymous true
log_dest stderr
log_type error
log_type warning
log_type notice
listener $PLAIN 127.0.0.1
listener $TLS 127.0.0.1
cafile $TMP/ca.crt
certfile $TMP/server.crt
keyfile $TMP/server.key
CONF
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PLAIN") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$TLS") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$TLS") 2>/dev/null || die "mosquitto did not start"
log "mosquitto on 127.0.0.1: plain $PLAIN, TLS $TLS"

SUB=(mosquitto_sub -h 127.0.0.1 -p "$PLAIN")
PUB=(mosquitto_pub -h 127.0.0.1 -p "$PLAIN")

# write_config NAME PORT TLS CACRT
write_config() {
    local name=$1 port=$2 tls=$3 ca=$4
    mkdir -p "$TMP/$name"
    cat >"$TMP/$name/config.json" <<JSON
{
  "topic": "qemu-$name",
  "key": "k$$",
  "mqtt_host": "127.0.0.1",
  "port": $port,
  "mac": "02-00-00-00-00-$(printf %02X $(( RANDOM % 256 )))",
  "tls": $tls,
  "cacrt": "$ca",
  "cache_dir": "$TMP/$name/cache",
  "state_dir": "$TMP/$name/state",
  "mac_file": "$TMP/$name/mac",
  "watchdog_port": 0,
  "reboot": 0,
  "reboot_cmd": "true",
  "network_restart_cmd": "true",
  "scan": 0
}
JSON
}

cfg_value() { sed -n "s/^  \"$2\": \"\\(.*\\)\",\$/\\1/p" "$TMP/$1/config.json"; }

start_agent() { # start_agent NAME -> AGENT_PID
    DEBUG=1 "${RUN[@]}" "$BIN" --config="$TMP/$1/config.json" >"$TMP/agent-$1.log" 2>&1 &
    AGENT_PID=$!
    PIDS+=("$AGENT_PID")
}

stop_agent() { # stop_agent NAME PID: TERM, clean exit 0 within 20 s
    local name=$1 pid=$2
    kill -TERM "$pid" 2>/dev/null || die "$name: agent died before TERM"
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; die "$name: agent still running 20 s after TERM"; fi
    local rc=0
    wait "$pid" || rc=$?
    [ "$rc" = 0 ] || die "$name: agent exited $rc after TERM, want 0"
}

roundtrip() { # roundtrip NAME PORT TLS CACRT
    local name=$1
    write_config "$@"
    local t k m
    t=$(cfg_value "$name" topic); k=$(cfg_value "$name" key); m=$(cfg_value "$name" mac)
    local path="$t/$k/$m"
    start_agent "$name"
    local pid=$AGENT_PID
    # The CONNECT event is retained on status/: once it is there the agent is connected
    # and subscribed to sub/ (it subscribes before announcing itself).
    "${SUB[@]}" -t "status/$path" -C 1 -W "$WAIT" >"$TMP/$name.status" 2>>"$TMP/sub.log" \
        || die "$name: no CONNECT on status/$path within ${WAIT}s"
    grep -q '"CONNECT"' "$TMP/$name.status" && grep -q '"online":"1"' "$TMP/$name.status" \
        || die "$name: first status message is not an online CONNECT: $(cat "$TMP/$name.status")"
    "${SUB[@]}" -q 1 -t "pub/$path" -C 1 -W "$WAIT" >"$TMP/$name.pub" 2>>"$TMP/sub.log" &
    local sub=$!
    sleep 1 # let mosquitto_sub subscribe before the job goes out
    "${PUB[@]}" -q 1 -t "sub/$path" -m '{"id":"qemu-1","meta":{"msg":"echo hello"}}'
    wait "$sub" || die "$name: no answer on pub/$path within ${WAIT}s"
    grep -q '"PROCESSED"' "$TMP/$name.pub" || die "$name: answer is not PROCESSED: $(cat "$TMP/$name.pub")"
    grep -q 'hello' "$TMP/$name.pub" || die "$name: answer lacks the job output: $(cat "$TMP/$name.pub")"
    grep -q '"qemu-1"' "$TMP/$name.pub" || die "$name: answer lacks the job id: $(cat "$TMP/$name.pub")"
    grep -q '"success":true' "$TMP/$name.pub" || die "$name: answer is not success:true: $(cat "$TMP/$name.pub")"
    stop_agent "$name" "$pid"
    log "ok $name round trip: $(head -c 200 "$TMP/$name.pub")"
}

roundtrip plain "$PLAIN" false ""
roundtrip tls "$TLS" true "$TMP/ca.crt"

# With a CA that did not sign the broker's certificate the agent must not connect.
write_config wrongca "$TLS" true "$TMP/wrong.crt"
start_agent wrongca
wpid=$AGENT_PID
t=$(cfg_value wrongca topic); k=$(cfg_value wrongca key); m=$(cfg_value wrongca mac)
if "${SUB[@]}" -t "status/$t/$k/$m" -C 1 -W 8 >"$TMP/wrongca.status" 2>/dev/null && grep -q '"online":"1"' "$TMP/wrongca.status"; then
    die "wrongca: agent connected although the broker certificate is not signed by its cacrt"
fi
kill -0 "$wpid" 2>/dev/null || die "wrongca: agent exited instead of retrying"
stop_agent wrongca "$wpid"
log "ok TLS refuses a broker certificate from another CA"

log "PASS ($TARGET)"
