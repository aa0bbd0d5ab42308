#!/usr/bin/env bash
# The long tests (soak runs, kill loops): pytest -m slow.
#
#   bash scripts/test-slow.sh [extra pytest arguments]
#
# pytest collecting no test at all (exit 5) counts as a failure.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || {
  echo "[test-slow] set-up failed" >&2
  exit 1
}

.venv/bin/python -m pytest -p no:cacheprovider -q -m slow "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "==> pytest -m slow collected no tests: that is a failure"
  exit 1
fi
exit "$rc"
