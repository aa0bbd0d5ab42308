#!/usr/bin/env bash
# Build the replicator container image here: no Docker daemon, no internet.
#
#   bash scripts/image.sh [--tag NAME] [--rebuild-base] [--archive FILE]
#
# Builds ./Dockerfile -- the same file `docker build .` uses against the default
# python:3.11-slim base -- with Debian's buildah (rootful, --isolation chroot,
# vfs storage) over a base image made here from Debian packages:
#
# - installs buildah and debootstrap with apt-get where missing;
# - base image (cached: made only when missing, or with --rebuild-base):
#   debootstrap of bookworm from the Debian mirror apt already uses, with
#   python3, python3-venv and ca-certificates, security updates applied,
#   imported as localhost/replicator-base:bookworm;
# - wheels of replicator and its dependencies built on this machine with
#   `pip wheel` into ./wheels (ignored by git), which the Dockerfile installs
#   with --no-index;
# - `buildah bud --build-arg BASE_IMAGE=localhost/replicator-base:bookworm`.
#
# --tag NAME       image name (default localhost/replicator:latest, also $REPLICATOR_IMAGE)
# --rebuild-base   make the base image again even if it exists
# --archive FILE   also write the image as a docker-archive (docker load, kind load)
#
# The image store is $REPLICATOR_IMAGE_STORE (default /var/lib/replicator-image),
# kept apart from any other containers/storage on the machine; to look at it:
#   buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs images
# Prints the image size and the build times at the end.  Run as root (or with sudo).
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

IMAGE="${REPLICATOR_IMAGE:-localhost/replicator:latest}"
BASE="localhost/replicator-base:bookworm"
STORE="${REPLICATOR_IMAGE_STORE:-/var/lib/replicator-image}"
SUITE=bookworm
REBUILD_BASE=0
ARCHIVE=""

while [ "$#" -gt 0 ]; do
  case "$1" in
    --tag)
      IMAGE="${2:?--tag needs a name}"
      shift
      ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    --archive)
      ARCHIVE="${2:?--archive needs a file name}"
      shift
      ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$SELF"
      exit 0
      ;;
    *)
      echo "image.sh: unknown argument: $1" >&2
      exit 2
      ;;
  esac
  shift
done
[ -z "$ARCHIVE" ] || ARCHIVE="$(realpath -m "$ARCHIVE")"
cd "$(dirname "$SELF")/.."

log() { printf '[image] %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# seconds with one decimal between two now_ms readings
secs() { printf '%d.%d' $((($2 - $1) / 1000)) $(((($2 - $1) % 1000) / 100)); }
CLEANUP=()
cleanup() { [ "${#CLEANUP[@]}" -eq 0 ] || rm -rf "${CLEANUP[@]}"; }
trap cleanup EXIT

if [ "$(id -u)" -ne 0 ]; then
  # buildah runs rootful here (chroot isolation needs root); re-run under sudo.
  command -v sudo >/dev/null 2>&1 || die "run as root (buildah is used rootful)"
  exec sudo -n --preserve-env=REPLICATOR_IMAGE,REPLICATOR_IMAGE_STORE bash "$SELF" "$@"
fi

# --- tools ---------------------------------------------------------------------
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${missing[*]} by hand"
  export DEBIAN_FRONTEND=noninteractive
  log "apt-get install ${missing[*]}"
  apt-get update -qq -o DPkg::Lock::Timeout=300
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
fi

mkdir -p "$STORE"
BUILDAH=(buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs)
export BUILDAH_ISOLATION=chroot

image_exists() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# The URI of the first apt source (one-line or deb822 format) that carries
# suite $1 with the main component, e.g. http://deb.debian.org/debian.
apt_mirror() {
  local suite="$1" files=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ "${#files[@]}" -gt 0 ] || return 1
  awk -v suite="$suite" '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "" && comps ~ /main/) {
        split(uris, u, " "); print u[1]; found = 1; exit
      }
      types = ""; uris = ""; suites = ""; comps = ""
    }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      if ($0 ~ /^[ \t]*#/) next
      key = tolower($1); sub(/^[^:]*:[ \t]*/, "")
      if (key == "types:") types = $0
      else if (key == "uris:") uris = $0
      else if (key == "suites:") suites = $0
      else if (key == "components:") comps = $0
      next
    }
    FNR == 1 { flush() }
    /^[ \t]*deb[ \t]/ {
      line = $0; sub(/\[[^]]*\]/, "", line); n = split(line, w, /[ \t]+/)
      if (w[1] == "") { for (i = 1; i < n; i++) w[i] = w[i + 1]; n-- }
      if (w[3] == suite) { for (i = 4; i <= n; i++) if (w[i] == "main") { print w[2]; found = 1; exit } }
    }
    END { if (!found) flush() }
  ' "${files[@]}" | head -n 1
}

# --- base image ----------------------------------------------------------------
make_base() {
  local mirror security rootfs ctr mnt
  mirror="$(apt_mirror "$SUITE")" || true
  [ -n "$mirror" ] || die "no apt source for $SUITE main in /etc/apt/sources.list*"
  security="$(apt_mirror "$SUITE-security")" || true
  rootfs="$(mktemp -d "$STORE/rootfs.XXXXXX")"
  CLEANUP+=("$rootfs")
  log "debootstrap $SUITE from $mirror (minbase + python3, python3-venv, ca-certificates)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$mirror" >"$STORE/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $STORE/debootstrap.log"
  {
    echo "deb $mirror $SUITE main"
    echo "deb $mirror $SUITE-updates main"
    [ -n "$security" ] && echo "deb $security $SUITE-security main"
  } >"$rootfs/etc/apt/sources.list"
  log "applying $SUITE-updates and $SUITE-security"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get upgrade -y -qq && apt-get clean' \
    >>"$STORE/debootstrap.log" 2>&1 || die "apt-get upgrade in the base failed; see $STORE/debootstrap.log"
  : >"$rootfs/etc/resolv.conf"
  # What an image does not need: package lists, docs, man pages, message
  # translations, caches.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/*/LC_MESSAGES \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/root/.cache
  ctr="$("${BUILDAH[@]}" from scratch)"
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf -
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    --label "org.opencontainers.image.title=Debian $SUITE with python3 (replicator's local base)" \
    --label "org.opencontainers.image.base.name=debootstrap:$SUITE" \
    "$ctr"
  "${BUILDAH[@]}" commit --rm --quiet "$ctr" "$BASE" >/dev/null
}

t0=$(now_ms)
base_note=cached
if [ "$REBUILD_BASE" -eq 1 ] || ! image_exists "$BASE"; then
  "${BUILDAH[@]}" rmi "$BASE" >/dev/null 2>&1 || true
  make_base
  base_note="made in $(secs "$t0" "$(now_ms)")s"
  log "base image $BASE $base_note"
else
  log "base image $BASE: cached"
fi

# --- wheels --------------------------------------------------------------------
t1=$(now_ms)
PY=""
for candidate in .venv/bin/python python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
    "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    PY="$candidate"
    break
  fi
done
[ -n "$PY" ] || die "no python3 >= 3.11 to build the wheels with"
# A fresh wheelhouse each build (an old replicator wheel of the same version
# would otherwise be installed); the directory ignores itself in git.
rm -rf wheels
mkdir wheels
printf '*\n' >wheels/.gitignore
# From a copy of the package's sources: a setuptools build/ directory left in
# the checkout would carry modules deleted since into the wheel.
src="$(mktemp -d)"
CLEANUP+=("$src")
cp -r pyproject.toml README.md replicator "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
log "pip wheel . -> wheels/"
"$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir wheels "$src" >"$STORE/wheels.log" 2>&1 ||
  die "pip wheel failed; see $STORE/wheels.log"

# --- image ---------------------------------------------------------------------
t2=$(now_ms)
VERSION="$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
old_id="$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)"
log "buildah bud -> $IMAGE"
"${BUILDAH[@]}" bud \
  --isolation chroot \
  --pull=never \
  --network host \
  --build-arg "BASE_IMAGE=$BASE" \
  --build-arg "VERSION=$VERSION" \
  --build-arg "REVISION=$REVISION" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --tag "$IMAGE" \
  --file Dockerfile \
  . >"$STORE/bud.log" 2>&1 || {
  tail -n 40 "$STORE/bud.log" >&2
  die "buildah bud failed; see $STORE/bud.log"
}
t3=$(now_ms)

if [ -n "$ARCHIVE" ]; then
  rm -f "$ARCHIVE"
  "${BUILDAH[@]}" push --quiet "$IMAGE" "docker-archive:$ARCHIVE:${IMAGE#localhost/}"
  log "wrote $ARCHIVE"
fi

# The image this build replaced under the same name (vfs keeps full copies).
new_id="$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE")"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  "${BUILDAH[@]}" rmi "$old_id" >/dev/null 2>&1 || true
fi

size="$("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)"
base_size="$("${BUILDAH[@]}" images --format '{{.Size}}' "$BASE" | head -n 1)"
printf 'image      %s\n' "$IMAGE"
printf 'size       %s (base %s: %s)\n' "$size" "$BASE" "$base_size"
printf 'base       %s\n' "$base_note"
printf 'wheels     %ss\n' "$(secs "$t1" "$t2")"
printf 'bud        %ss\n' "$(secs "$t2" "$t3")"
printf 'total      %ss\n' "$(secs "$t0" "$t3")"
printf 'store      %s (buildah --root %s --runroot %s --storage-driver vfs)\n' \
  "$STORE" "$STORE/storage" "$STORE/run"
