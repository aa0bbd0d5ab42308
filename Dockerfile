# replicator as a container image: slim, non-root (uid/gid 10001), uvloop.
#
#   docker build -t replicator .                       # default base, wheels from PyPI
#   bash scripts/image.sh                              # here: buildah, local Debian base, no internet
#
# Paths (docs/CONTAINER.md):
#   /config/docker        DOCKER_CONFIG: mount a docker config.json here, read-only
#   /var/lib/replicator   XDG_STATE_HOME: the journal, $XDG_STATE_HOME/replicator/journal.sqlite;
#                         mount a volume writable by uid 10001 to resume across containers
#
#   docker run --rm -v ~/.docker/config.json:/config/docker/config.json:ro \
#     -v replicator-state:/var/lib/replicator replicator copy -r SRC DST
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module, useradd and
# groupadd.  When the build context holds ./wheels/*.whl (a wheelhouse made
# with `pip wheel --wheel-dir wheels .`), replicator and its dependencies are
# installed from there only (--no-index); otherwise from the package index.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . .
RUN set -eu; \
    python3 -m venv /opt/replicator; \
    if ls wheels/*.whl >/dev/null 2>&1; then \
      /opt/replicator/bin/python -m pip install --no-index --find-links wheels replicator; \
    else \
      /opt/replicator/bin/python -m pip install .; \
    fi; \
    /opt/replicator/bin/python -m pip uninstall -y -q pip setuptools; \
    /opt/replicator/bin/replicator --version; \
    /opt/replicator/bin/python -c 'import uvloop'

FROM ${BASE_IMAGE}
RUN set -eu; \
    groupadd --gid 10001 replicator; \
    useradd --no-log-init --uid 10001 --gid 10001 --create-home \
      --home-dir /home/replicator --shell /usr/sbin/nologin replicator; \
    mkdir -p /config/docker /var/lib/replicator; \
    chown 10001:10001 /var/lib/replicator; \
    chmod 0700 /var/lib/replicator
COPY --from=build /opt/replicator /opt/replicator
ENV PATH=/opt/replicator/bin:${PATH} \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/replicator \
    DOCKER_CONFIG=/config/docker \
    XDG_STATE_HOME=/var/lib/replicator
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /home/replicator
# No HEALTHCHECK: Kubernetes probes the long-running mode.
ENTRYPOINT ["replicator"]
CMD ["--help"]
# Last, so that a new revision or date does not invalidate the cached layers above.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="replicator" \
      org.opencontainers.image.description="Asynchronous, high-throughput replicator of OCI artifact graphs (images, indexes, referrers)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
