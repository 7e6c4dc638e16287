#!/bin/sh
# Stats benchmark (issue 3): CPU and wall time of one collection, gzip ratio and bytes on the
# wire per record, time to drain a 5760-record backlog to a local HTTP server.
# Figures only, no asserts. Builds the release profile (opt-level z, LTO) once.
set -eu
cd "$(dirname "$0")/.."
exec cargo run --quiet --release --example bench_stats "$@"
