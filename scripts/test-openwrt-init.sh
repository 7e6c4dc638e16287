#!/bin/sh
# Exercise openwrt/files/socketman.init without OpenWrt: source it with stand-ins for the
# rc.common / UCI / procd shell functions that record what the script asks procd to run,
# then check the command line, respawn, term_timeout and stdout/stderr settings for:
#   defaults; a UCI config path and init_url (-b); enabled=0; an invalid config without
#   init_url (must not start); an invalid config with init_url (starts, to provision).
#   scripts/test-openwrt-init.sh
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
INIT=${SOCKETMAN_INIT:-$ROOT/openwrt/files/socketman.init}
W=$(mktemp -d "${TMPDIR:-/tmp}/socketman-init.XXXXXX")
trap 'rm -rf "$W"' EXIT
PASS=0 FAIL=0

# run_case NAME UCI_ENABLED UCI_CONFIG UCI_INIT_URL CHECK_RC -> $W/NAME.out
run_case() {
    name=$1
    cat >"$W/fake-socketman" <<FAKE
#!/bin/sh
echo "fake \$*" >>"$W/$name.calls"
exit $5
FAKE
    chmod +x "$W/fake-socketman"
    (
        # rc.common / functions.sh / procd.sh stand-ins
        config_load() { :; }
        config_get() { # config_get VAR SECTION OPTION DEFAULT
            eval "v=\${UCI_$3:-}"
            [ -n "$v" ] || v=$4
            eval "$1=\$v"
        }
        config_get_bool() { config_get "$@"; }
        procd_open_instance() { echo "open $*"; }
        procd_set_param() { echo "set $*"; }
        procd_append_param() { echo "append $*"; }
        procd_close_instance() { echo "close"; }
        procd_add_reload_trigger() { echo "trigger $*"; }
        logger() { echo "logger $*"; }
        UCI_enabled=$2 UCI_config=$3 UCI_init_url=$4
        . "$INIT"
        PROG=$W/fake-socketman
        rc=0
        start_service || rc=$?
        echo "rc $rc"
        service_triggers
    ) >"$W/$name.out" 2>&1
}

expect() { # expect NAME PATTERN (grep -E on the output)
    if grep -Eq -- "$2" "$W/$1.out"; then PASS=$((PASS + 1)); else
        FAIL=$((FAIL + 1)); echo "FAIL $1: no line matching /$2/ in:"; sed 's/^/    /' "$W/$1.out"; fi
}
reject() {
    if grep -Eq -- "$2" "$W/$1.out"; then
        FAIL=$((FAIL + 1)); echo "FAIL $1: unexpected /$2/ in:"; sed 's/^/    /' "$W/$1.out"; else PASS=$((PASS + 1)); fi
}

sh -n "$INIT" && PASS=$((PASS + 1)) || { FAIL=$((FAIL + 1)); echo "FAIL: syntax"; }
grep -q '^USE_PROCD=1' "$INIT" && PASS=$((PASS + 1)) || { FAIL=$((FAIL + 1)); echo "FAIL: USE_PROCD"; }

run_case defaults "" "" "" 0
expect defaults "^set command $W/fake-socketman --config=/etc/socketman/config.json$"
reject defaults "^append command"
expect defaults "^set respawn 3600 5 5$"
expect defaults "^set term_timeout 20$"
expect defaults "^set stdout 1$"
expect defaults "^set stderr 1$"
expect defaults "^set file /etc/socketman/config.json$"
expect defaults "^close$"
expect defaults "^rc 0$"
expect defaults "^trigger socketman$"

run_case uci 1 /data/sm.json https://init.example/i 0
expect uci "^set command $W/fake-socketman --config=/data/sm.json$"
expect uci "^append command -b https://init.example/i$"

run_case disabled 0 "" "" 0
reject disabled "^open"
expect disabled "^rc 0$"

run_case invalid "" "" "" 2
reject invalid "^open"
expect invalid "^logger .*not started"
expect invalid "^rc 1$"

run_case provision "" "" https://init.example/i 2
expect provision "^open main$"
expect provision "^append command -b https://init.example/i$"

echo "openwrt-init: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
