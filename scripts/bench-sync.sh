#!/usr/bin/env bash
# Benchmark `replicator sync` next to `skopeo sync` at 60 and 600 tags and write
# benchmarks/RESULTS-sync.md, benchmarks/sync_results.json and benchmarks/sync_results.png.
#
#   bash scripts/bench-sync.sh [--sizes 60,600] [--reps N] [--reps-large N] [--with-copy]
#                              [--replicator PATH --label NAME --out FILE] [--skip-counted]
#
# Set-up first (scripts/setup.sh --bench: docker-registry, skopeo, .venv), then
# python -m benchmarks.sync_bench (arguments are passed on), then
# python -m benchmarks.sync_report.  Every registry runs on 127.0.0.1 with its
# storage in a temporary directory on a tmpfs (/dev/shm; --ram DIR), removed at
# the end; every process started is stopped, also on Ctrl-C.
#
# The figures are only worth keeping on a quiet machine: the script waits (up to
# BENCH_WAIT_S seconds, default 1800) for the 1-minute load average to fall below
# BENCH_MAX_LOAD (default 2) before it starts, and says so when it gives up.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --bench

max_load=${BENCH_MAX_LOAD:-2}
deadline=$(( $(date +%s) + ${BENCH_WAIT_S:-1800} ))
while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v m="$max_load" 'BEGIN { exit !(l < m) }'; then
        echo "[bench-sync] 1-minute load average $load (< $max_load): starting" >&2
        break
    fi
    if (( $(date +%s) >= deadline )); then
        echo "[bench-sync] 1-minute load average still $load (>= $max_load): starting anyway" >&2
        break
    fi
    echo "[bench-sync] 1-minute load average $load (>= $max_load): waiting" >&2
    sleep 30
done

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NO_COLOR=1
out=benchmarks/sync_results.json
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [[ ${args[i]} == --out ]] && out=${args[i + 1]}
    [[ ${args[i]} == --out=* ]] && out=${args[i]#--out=}
done
start=$(date +%s)
.venv/bin/python -m benchmarks.sync_bench "$@"
if [[ $out == benchmarks/sync_results.json ]]; then
    .venv/bin/python -m benchmarks.sync_report
    echo "[bench-sync] done in $(( $(date +%s) - start ))s: benchmarks/RESULTS-sync.md, $out, benchmarks/sync_results.png" >&2
else
    echo "[bench-sync] done in $(( $(date +%s) - start ))s: $out (report: python -m benchmarks.sync_report --compare $out)" >&2
fi
