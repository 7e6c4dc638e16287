#!/usr/bin/env bash
# See it work: builds socketman, starts mosquitto on a free loopback port, writes a config
# from examples/config.json pointed at it, starts the agent with DEBUG=1, sends the README's
# job with mosquitto_pub and prints the DELIVERED and PROCESSED answers.
#   scripts/run-local.sh          run once and stop everything
#   scripts/run-local.sh --keep   leave broker and agent running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0; [ "${1:-}" = "--keep" ] && keep=1

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev pkg-config)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)

echo "== building socketman"
cargo build --locked --bin socketman
BIN=target/debug/socketman

work=$(mktemp -d /tmp/socketman-local.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'user root\nallow_anonymous true\npersistence false\nlistener %s 127.0.0.1\n' "$port" > "$work/mosquitto.conf"
"$MOSQ" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mpid=$!
apid=""
cleanup() {
  [ -n "$apid" ] && kill -TERM "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
  kill "$mpid" 2>/dev/null || true
  echo "== logs and config kept in $work"
}
trap cleanup EXIT
sleep 0.5

python3 - "$work" "$port" <<'PY'
import json, sys
work, port = sys.argv[1], int(sys.argv[2])
cfg = json.load(open("examples/config.json"))
for k in ("cacrt", "username", "password", "token", "stats_url", "api_url"):
    cfg.pop(k, None)
cfg.update({"mqtt_host": "127.0.0.1", "port": port, "tls": False, "mac": "02-00-00-00-00-01",
            "topic": "demo", "key": "local", "cache_dir": work + "/cache", "state_dir": work + "/state",
            "reboot": 0, "watchdog_port": 0, "health_url": "127.0.0.1", "health_port": port,
            "dns_check": "localhost", "network_backup_files": []})
json.dump(cfg, open(work + "/config.json", "w"), indent=2)
PY
echo "== config: $work/config.json (broker 127.0.0.1:$port)"

DEBUG=1 "$BIN" --config="$work/config.json" 2> >(sed 's/^/  [agent] /' >&2) &
apid=$!
T=demo/local/02-00-00-00-00-01
timeout 20 mosquitto_sub -p "$port" -t "status/$T" -C 1 >/dev/null
echo "== agent online; sending a job to sub/$T"
mosquitto_sub -p "$port" -t "delivery/$T" -t "pub/$T" -v -C 2 -W 30 > "$work/answers" &
spid=$!
sleep 0.3
job='{"id":"hello-1","timestamp":'"$(date +%s)"',"meta":{"msg":"echo hello from $(hostname); uptime","type":"cmd"}}'
echo "   $job"
mosquitto_pub -p "$port" -q 1 -t "sub/$T" -m "$job"
wait "$spid" || true
echo "== answers"
sed 's/^/   /' "$work/answers"
grep -q '"event_type":"PROCESSED"' "$work/answers"
if [ "$keep" = 1 ]; then
  echo "== running; try: mosquitto_pub -p $port -t sub/$T -m '{\"id\":\"2\",\"meta\":{\"msg\":\"uname -a\"}}'"
  echo "   and watch: mosquitto_sub -p $port -t '+/$T' -v     (Ctrl-C to stop)"
  wait "$apid"
fi
