#!/usr/bin/env bash
# The full check: set-up, lint, format, types, tests (without the `slow` marker).
#
#   bash scripts/test.sh [extra pytest arguments]
#
# Every stage runs even when an earlier one failed; the exit status is non-zero
# when any failed.  pytest collecting no test at all (exit 5) counts as a failure.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || {
  echo "[test] set-up failed" >&2
  exit 1
}

failed=()
stage() {
  local name="$1"
  shift
  echo "==> $name: $*"
  "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "==> $name FAILED (exit $rc)"
    failed+=("$name")
  fi
  return 0
}

# --no-cache: a stale cache can hide import-order errors that a fresh clone (CI) sees.
stage "ruff check" .venv/bin/ruff check --no-cache .
stage "ruff format" .venv/bin/ruff format --no-cache --check .
stage "mypy" .venv/bin/mypy

echo "==> pytest"
.venv/bin/python -m pytest -p no:cacheprovider -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "==> pytest collected no tests: that is a failure"
  failed+=("pytest (no tests)")
elif [ "$rc" -ne 0 ]; then
  echo "==> pytest FAILED (exit $rc)"
  failed+=("pytest")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED stages: ${failed[*]}"
  exit 1
fi
echo "all checks passed"
