#!/usr/bin/env bash
# The long tests (soak runs, kill loops, the randomized fault schedules): pytest -m slow.
#
#   bash scripts/test-slow.sh [extra pytest arguments]
#
# One randomized fault schedule again (its seed is printed with every outcome):
#
#   REPLICATOR_FAULT_SEED=1234 bash scripts/test-slow.sh -k fault_schedule
#
# REPLICATOR_FAULT_SEED takes N, N,M,... or N-M.  REPLICATOR_FAULT_REPORT=FILE
# appends every randomized outcome to FILE as a JSON line (docs/RELIABILITY.md).
# REPLICATOR_KILL_SEED changes the seed of the SIGKILL trials of sync.
#
# pytest collecting no test at all (exit 5) counts as a failure.  The wall time
# is printed at the end (the budget: about 30 minutes).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || {
  echo "[test-slow] set-up failed" >&2
  exit 1
}

# A soak loop may take longer than the default suite's 600 s per test (the
# twenty SIGKILL trials of 1 GiB each, on a busy machine): 30 minutes here.
started=$SECONDS
.venv/bin/python -m pytest -p no:cacheprovider -q -m slow --timeout 1800 --durations 12 "$@"
rc=$?
elapsed=$((SECONDS - started))
echo "==> slow suite wall time: $((elapsed / 60))m$((elapsed % 60))s"
if [ "$rc" -eq 5 ]; then
  echo "==> pytest -m slow collected no tests: that is a failure"
  exit 1
fi
exit "$rc"
