#!/usr/bin/env bash
# Run every benchmark scenario against fresh local docker-registry processes and
# write benchmarks/RESULTS.md, benchmarks/results.json and benchmarks/results.png.
#
#   bash scripts/bench.sh [--reps N] [--skip-big] [--skip-world] [--big-layer-mib M] [--tmp DIR]
#
# Set-up first (scripts/setup.sh --bench: docker-registry, skopeo, .venv), then
# python -m benchmarks.run (arguments are passed on), then python -m benchmarks.report.
# Registries run on 127.0.0.1 only, with storage in a temporary directory that is
# removed at the end (and, for the second (a)+(c) series, in a temporary directory
# under /dev/shm); every process started is stopped, also on Ctrl-C.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --bench

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NO_COLOR=1
start=$(date +%s)
.venv/bin/python -m benchmarks.run "$@"
.venv/bin/python -m benchmarks.report
echo "[bench] done in $(( $(date +%s) - start ))s: benchmarks/RESULTS.md, benchmarks/results.json, benchmarks/results.png" >&2
