#!/usr/bin/env bash
# Idempotent set-up of a development / CI machine (Debian, Python >= 3.11).
#
#   bash scripts/setup.sh [--bench]
#
# - installs Debian's docker-registry and skopeo (interop tests, benchmarks) only where missing;
# - creates .venv with python3.11 (or python3 >= 3.11) only where missing;
# - installs the package editable with its test and bench extras, again only when
#   pyproject.toml changed since the last successful install (stamp in .venv).
# Run as root or as a user with sudo.  Tests never use a system registry service:
# they start their own docker-registry processes on free loopback ports.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    -h | --help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "setup.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  fi
fi

APT_UPDATED=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not found: install $* by hand"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
    log "need root or sudo to install: $*"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    "${SUDO[@]}" apt-get update -qq -o DPkg::Lock::Timeout=300
    APT_UPDATED=1
  fi
  # Keep the packages' maintainer scripts from starting system services (the
  # Debian docker-registry package would start one on port 5000): nothing uses
  # them, and in a container without an init system starting them can fail.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    made_policy=1
  fi
  log "apt-get install -y $*"
  local rc=0
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$@" >/dev/null || rc=$?
  if [ "$made_policy" -eq 1 ]; then
    "${SUDO[@]}" rm -f "$policy"
  fi
  return "$rc"
}

# --- system packages ---------------------------------------------------------
missing=()
if [ ! -x /usr/bin/docker-registry ] && ! command -v docker-registry >/dev/null 2>&1; then
  missing+=(docker-registry)
fi
# skopeo: the OCI-layout interop tests read our layouts with it, and the
# benchmarks compare against it.
if ! command -v skopeo >/dev/null 2>&1; then
  missing+=(skopeo)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# --- Python virtual environment ----------------------------------------------
python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

if [ ! -x .venv/bin/python ] || ! python_ok .venv/bin/python; then
  PY=""
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      PY="$candidate"
      break
    fi
  done
  if [ -z "$PY" ]; then
    log "no python3.11 (or python3 >= 3.11) found"
    exit 1
  fi
  rm -rf .venv
  log "creating .venv with $PY"
  if ! "$PY" -m venv .venv; then
    # Debian splits venv/ensurepip into its own package.
    rm -rf .venv
    apt_install python3-venv || apt_install python3.11-venv
    "$PY" -m venv .venv
  fi
fi

STAMP=.venv/.replicator-setup-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! .venv/bin/python -c 'import replicator, pytest, mypy, trustme' 2>/dev/null; then
  log "pip install -e '.[test,bench]'"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
  echo "$want" >"$STAMP"
else
  log ".venv is up to date"
fi
log "ready: $(/usr/bin/docker-registry --version 2>/dev/null || docker-registry --version), $(.venv/bin/python --version)"
