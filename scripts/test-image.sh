#!/usr/bin/env bash
# The image tests: build the container image here, then pytest -m image.
#
#   bash scripts/test-image.sh [extra pytest arguments]
#
# Runs scripts/setup.sh and scripts/image.sh (buildah + a local Debian base,
# no Docker daemon, no internet; the base is made once and cached), a smoke
# run of the image, then the tests in tests/image (marker `image`), which run
# the image with `buildah run --isolation chroot --network host` against
# docker-registry processes on loopback ports.  Run as root (or with sudo).
# pytest collecting no test at all (exit 5) counts as a failure.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export REPLICATOR_IMAGE="${REPLICATOR_IMAGE:-localhost/replicator:latest}"
export REPLICATOR_IMAGE_STORE="${REPLICATOR_IMAGE_STORE:-/var/lib/replicator-image}"

bash scripts/setup.sh || {
  echo "[test-image] set-up failed" >&2
  exit 1
}
bash scripts/image.sh || {
  echo "[test-image] image build failed" >&2
  exit 1
}

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo -n --preserve-env=REPLICATOR_IMAGE,REPLICATOR_IMAGE_STORE)
BUILDAH=(buildah --root "$REPLICATOR_IMAGE_STORE/storage" --runroot "$REPLICATOR_IMAGE_STORE/run" --storage-driver vfs)

echo "==> smoke run: replicator --version in a fresh container"
ctr="$("${SUDO[@]}" "${BUILDAH[@]}" from --pull=never "$REPLICATOR_IMAGE")" &&
  "${SUDO[@]}" "${BUILDAH[@]}" run --isolation chroot "$ctr" -- \
    sh -c 'echo "uid=$(id -u) gid=$(id -g) DOCKER_CONFIG=$DOCKER_CONFIG XDG_STATE_HOME=$XDG_STATE_HOME"; replicator --version'
smoke=$?
[ -z "${ctr:-}" ] || "${SUDO[@]}" "${BUILDAH[@]}" rm "$ctr" >/dev/null
if [ "$smoke" -ne 0 ]; then
  echo "==> smoke run FAILED (exit $smoke)"
  exit 1
fi

echo "==> pytest -m image"
"${SUDO[@]}" .venv/bin/python -m pytest -p no:cacheprovider -q -m image tests/image "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "==> pytest -m image collected no tests: that is a failure"
  exit 1
fi
exit "$rc"
