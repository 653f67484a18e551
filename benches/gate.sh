#!/usr/bin/env bash
# benches/gate.sh BASE_TEN [LIMIT_PERCENT]
# The hot-path gate: callgrind instructions/request of this tree's `ten` (target/profiling) vs
# BASE_TEN (the same profile built from the commit to compare with), measured side by side, five
# times each, medians compared. Exit 0 when the difference is within ±LIMIT_PERCENT (default 1).
# Build both first: docs/benchmarks.md "Comparing two commits".
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: benches/gate.sh BASE_TEN [LIMIT_PERCENT]}
limit=${2:-1}
out=$(mktemp -d)/gate.md
TEN_BENCH_BASE=$base benches/run.sh --only ten,ten-base --rounds 1 --duration 1 \
    --latency-duration 1 --idle-conns 10 --cg-runs 5 --no-micro --out "$out" >&2
python3 - "${out%.md}.json" "$limit" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
limit = float(sys.argv[2])
ten, base = res["callgrind"]["ten"], res["callgrind"]["ten-base"]
delta = (ten["per_req"] / base["per_req"] - 1) * 100
def runs(m):
    return ", ".join(f"{x:,.0f}" for x in m["runs"])
print(f"ten-base: {base['per_req']:,.0f} instructions/request (median of {runs(base)})")
print(f"ten:      {ten['per_req']:,.0f} instructions/request (median of {runs(ten)})")
pairs = ", ".join(f"{(a / b - 1) * 100:+.2f} %" for a, b in zip(ten["runs"], base["runs"]))
print(f"difference: {delta:+.2f} % (per run: {pairs}); limit ±{limit} %")
sys.exit(0 if abs(delta) <= limit else 1)
PY
