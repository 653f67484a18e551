#!/usr/bin/env bash
# `make bench`'s driver: ten vs nginx vs a vanilla Pingora proxy vs direct, in one run, then the
# routing micro-benchmarks; writes BENCHMARKS.md. Expects the tools `make bench` installs and a
# `profiling` build (`cargo build --profile profiling --bins`). Options: benches/run.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(nproc)" -ge 2 ] || { echo "bench: needs 2 cores (proxy on core 0, load on core 1)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export PATH="$HOME/.cargo/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in benches/harness
exec python3 benches/harness "$@"
