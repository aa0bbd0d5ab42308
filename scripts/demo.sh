#!/usr/bin/env bash
# The replicator demo: starts two local registries (Debian's docker-registry),
# builds the seed walkthrough's supply-chain graph in the first (an image with a
# signature, a readme artifact and an SBOM that is itself signed), then promotes
# the whole graph to the second with `replicator copy -r` and shows it there;
# then a sync config promotes every signed release (a second, unsigned one is
# refused by the config's signature gate): its dry-run plan, the run, an audit.
# Set-up (apt, venv, package) is done by scripts/setup.sh on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2

work=$(mktemp -d -t replicator-demo.XXXXXX)
cleanup() {
  # start_registry runs in $(...), a subshell: its pids are kept in a file, not a variable.
  if [ -f "$work/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/pids"
    sleep 0.5
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_registry() {  # name -> prints host:port
  local name=$1 port
  port=$(free_port)
  mkdir -p "$work/$name/data"
  cat >"$work/$name/config.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $work/$name/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
YML
  /usr/bin/docker-registry serve "$work/$name/config.yml" >"$work/$name/log" 2>&1 &
  echo $! >>"$work/pids"
  for _ in $(seq 1 100); do
    if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/')" 2>/dev/null; then
      echo "127.0.0.1:$port"; return 0
    fi
    sleep 0.1
  done
  echo "registry $name did not start; log:" >&2; cat "$work/$name/log" >&2; return 1
}

R=.venv/bin/replicator
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

DEV=$(start_registry dev)
PROD=$(start_registry prod)
echo "dev registry:  $DEV"
echo "prod registry: $PROD"
IMAGE=$DEV/net-monitor:v1

cd "$work"
echo 'Readme Content' > readme.md
mkdir -p details
echo 'Detailed Content' > details/readme-details.md
echo 'More detailed Content' > details/readme-more-details.md
echo '{"artifact": "'"$IMAGE"'", "signature": "jayden hancock"}' > signature.json
echo '{"version": "0.0.0.0", "artifact": "'"$IMAGE"'", "contents": "good"}' > sbom.json
cd - >/dev/null

printf '\n\033[1m# an image to start from\033[0m\n'
.venv/bin/python scripts/demo_image.py "$IMAGE"
cd "$work"
step "$OLDPWD/$R" attach "$IMAGE" --artifact-type signature/example ./signature.json:application/json
step "$OLDPWD/$R" attach "$IMAGE" --artifact-type readme/example ./readme.md:application/markdown ./details
step "$OLDPWD/$R" attach "$IMAGE" --artifact-type sbom/example ./sbom.json:application/json
SBOM_DIGEST=$("$OLDPWD/$R" discover -o json --artifact-type sbom/example "$IMAGE" \
  | "$OLDPWD/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
echo '{"artifact": "'"$IMAGE@$SBOM_DIGEST"'", "signature": "jayden hancock"}' > sbom-signature.json
step "$OLDPWD/$R" attach "$IMAGE@$SBOM_DIGEST" --artifact-type signature/example ./sbom-signature.json:application/json
step "$OLDPWD/$R" discover -o tree "$IMAGE"
step "$OLDPWD/$R" copy -r "$IMAGE" "$PROD/sample-staging/net-monitor:v1"
step "$OLDPWD/$R" discover -o tree "$PROD/sample-staging/net-monitor:v1"
printf '\n\033[1m# a second run finds everything present and moves no blob bytes\033[0m\n'
step "$OLDPWD/$R" copy -r "$IMAGE" "$PROD/sample-staging/net-monitor:v1"
step "$OLDPWD/$R" repo tags "$PROD/sample-staging/net-monitor"
DOC_DIGEST=$("$OLDPWD/$R" discover -o json --artifact-type readme/example "$PROD/sample-staging/net-monitor:v1" \
  | "$OLDPWD/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
step "$OLDPWD/$R" pull -o ./download "$PROD/sample-staging/net-monitor@$DOC_DIGEST"
step find ./download -type f

printf '\n\033[1m# a sync config: promote every v* release that is signed; v2 is not signed\033[0m\n'
"$OLDPWD/.venv/bin/python" "$OLDPWD/scripts/demo_image.py" "$DEV/net-monitor:v2" >/dev/null
cat >"$work/promote.yaml" <<YML
version: 1
jobs:
  - name: net-monitor
    source: $DEV/net-monitor
    destinations: [$PROD/prod/net-monitor]
    tags: {allow: ['^v[0-9]+\$']}
    require: [signature/example]      # promote only what carries a signature
YML
step cat promote.yaml
step "$OLDPWD/$R" sync "$work/promote.yaml" --dry-run || echo "(exit $?: a gate would refuse v2)"
step "$OLDPWD/$R" sync "$work/promote.yaml" || echo "(exit $?: the gate refused v2; v1 was promoted)"
step "$OLDPWD/$R" verify "$work/promote.yaml" || echo "(exit $?)"
printf '\n\033[1mdemo finished: the whole graph was promoted from %s to %s\033[0m\n' "$DEV" "$PROD"
