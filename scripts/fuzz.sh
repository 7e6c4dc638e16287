#!/usr/bin/env bash
# cargo-fuzz targets of fuzz/ (docs/SECURITY.md "Fuzzing").
#
#   scripts/fuzz.sh build            build every target (what scripts/test.sh runs)
#   scripts/fuzz.sh run [SECONDS]    build, then run each target SECONDS (default 60) on
#                                    fuzz/corpus/<t> + the fixture seeds; new inputs go to
#                                    fuzz/corpus-run/<t>, crashes to fuzz/artifacts/<t>/
#   scripts/fuzz.sh cmin             minimise fuzz/corpus-run/<t> + seeds into fuzz/corpus/<t>
#
# Env: FUZZ_TARGETS="job config" (default: all), FUZZ_NICE=19 (run under nice),
#      FUZZ_RUNS=N (stop each run after N executions instead of at SECONDS),
#      FUZZ_JOBS=N (targets run side by side, default 1).
# Needs the nightly toolchain; installs cargo-fuzz into target/tools when it is missing.
# Built without a sanitizer (-s none): the targets reach only safe Rust (the paho C code is
# linked but never called), and ASan would double the build time and halve execs/s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_FLAGS=(--sanitizer none)
ALL="job job_signed config heartbeat parsers tar_path tar_unpack"
TARGETS=${FUZZ_TARGETS:-$ALL}
BIN=fuzz/target/x86_64-unknown-linux-gnu/release

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 3
fi
export PATH="$ROOT/target/tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz into target/tools"
  cargo install cargo-fuzz --locked --root "$ROOT/target/tools"
fi

build() {
  echo "== cargo +nightly fuzz build (fuzz/target)"
  local t0=$SECONDS
  (cd fuzz && cargo +nightly fuzz build "${FUZZ_FLAGS[@]}")
  echo "== fuzz targets built in $((SECONDS - t0)) s"
}

seeds() {
  [ -d fuzz/seeds ] || python3 fuzz/make-seeds.py >/dev/null
}

run_one() {
  local t=$1 secs=$2 log=fuzz/artifacts/$1/run.log
  mkdir -p "fuzz/corpus-run/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  local args=(-print_final_stats=1 -rss_limit_mb=1024 -artifact_prefix="fuzz/artifacts/$t/")
  if [ -n "${FUZZ_RUNS:-}" ]; then args+=(-runs="$FUZZ_RUNS"); else args+=(-max_total_time="$secs"); fi
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2086
  if TMPDIR=$tmp nice -n "${FUZZ_NICE:-0}" "$BIN/$t" "${args[@]}" \
      "fuzz/corpus-run/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" >"$log" 2>&1; then
    rm -rf "$tmp"
    local last execs rate
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "fuzz $t: ok, $execs execs, $rate execs/s | cov: ${last#*cov: }"
  else
    rm -rf "$tmp"
    echo "fuzz $t: FAILED (log: $log, inputs: fuzz/artifacts/$t/)" >&2
    grep -E 'panicked|SUMMARY|Test unit written' "$log" >&2 || tail -n 20 "$log" >&2
    return 1
  fi
}

case "${1:-build}" in
  build) build ;;
  run)
    secs=${2:-${FUZZ_SECONDS:-60}}
    build
    seeds
    fail=0
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
      export -f run_one; export BIN FUZZ_NICE FUZZ_RUNS
      printf '%s\n' $TARGETS | xargs -P "$FUZZ_JOBS" -I{} bash -c 'run_one {} '"$secs" || fail=1
    else
      for t in $TARGETS; do run_one "$t" "$secs" || fail=1; done
    fi
    exit $fail
    ;;
  cmin)
    seeds
    for t in $TARGETS; do
      mkdir -p "fuzz/corpus/$t" "fuzz/corpus-run/$t"
      new=$(mktemp -d)
      "$BIN/$t" -merge=1 "$new" "fuzz/corpus/$t" "fuzz/corpus-run/$t" "fuzz/seeds/$t" \
        >/dev/null 2>&1
      rm -rf "fuzz/corpus/$t" && mv "$new" "fuzz/corpus/$t"
      echo "fuzz $t: corpus $(find "fuzz/corpus/$t" -type f | wc -l) files, $(du -sb "fuzz/corpus/$t" | cut -f1) bytes"
    done
    ;;
  *) echo "usage: scripts/fuzz.sh build | run [SECONDS] | cmin" >&2; exit 2 ;;
esac
