"""What the image tests share: volumes as Kubernetes mounts them, graphs, checks.

The host directories handed to a container look like their Kubernetes
counterparts: the docker config is root's and readable by the image's group
only (a Secret with ``defaultMode: 0440`` under ``fsGroup: 10001``); the sync
config is root's and world-readable (a ConfigMap); the state volume is owned
by the image's user (a PersistentVolumeClaim under ``fsGroup``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio

from replicator.graph.walk import GraphSnapshot, snapshot_graph
from replicator.targets.registry import RegistryTarget
from tests.image.container import CONFIG_DIR, GID, STATE_DIR, UID, Volume
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder, assert_same_graph

#: Where the default journal lands inside the state volume ($XDG_STATE_HOME/replicator/).
JOURNAL = Path("replicator") / "journal.sqlite"
#: Where the sync config is mounted (deploy/: the replicator-sync ConfigMap).
SYNC_DIR = "/config/sync"
SYNC_CONFIG = f"{SYNC_DIR}/sync.yaml"


def docker_config(where: Path, *instances: Any) -> Path:
    """A docker config dir whose config.json has Basic credentials for each instance."""
    where.mkdir(mode=0o755)
    auths = {}
    for inst in instances:
        creds = inst.credentials()
        raw = f"{creds.username}:{creds.password}".encode()
        auths[inst.host] = {"auth": base64.b64encode(raw).decode()}
    path = where / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    os.chown(path, 0, GID)
    path.chmod(0o440)
    return where


def state_dir(where: Path) -> Path:
    """An empty state volume owned by the image's user."""
    where.mkdir(mode=0o700)
    os.chown(where, UID, GID)
    return where


def sync_config(where: Path, text: str) -> Path:
    """A config dir holding ``sync.yaml``: root's, readable by all (as a ConfigMap)."""
    where.mkdir(mode=0o755)
    path = where / "sync.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return where


def volumes(config: Path, state: Path, sync: Path | None = None) -> list[Volume]:
    """The docker config (read-only), the state volume, and the sync config (read-only)."""
    out = [Volume(config, CONFIG_DIR, read_only=True), Volume(state, STATE_DIR)]
    if sync is not None:
        out.append(Volume(sync, SYNC_DIR, read_only=True))
    return out


def target(instance: Any) -> RegistryTarget:
    """A client of ``instance`` (a registry or a fault proxy)."""
    return RegistryTarget(instance.host, instance.options())


def build_signed(instance: RegistryInstance, layer_size: int, repo: str = "app") -> GraphSnapshot:
    """A signed image (signature, SBOM, SBOM signature) at ``repo:v1``; its snapshot."""

    async def build() -> GraphSnapshot:
        t = target(instance)
        try:
            await GraphBuilder(t, repo).signed_image(
                f"{repo}:v1", tags=["v1"], layers=2, layer_size=layer_size
            )
            return await snapshot_graph(t, repo, "v1")
        finally:
            await t.aclose()

    return anyio.run(build)


def assert_same(src: Any, dst: Any, dst_repo: str, src_repo: str = "app") -> None:
    """The graph at ``dst_repo:v1`` equals the source's ``src_repo:v1`` (bytes, edges, blobs)."""

    async def check() -> None:
        a, b = target(src), target(dst)
        try:
            await assert_same_graph(a, src_repo, "v1", b, dst_repo, "v1")
        finally:
            await a.aclose()
            await b.aclose()

    anyio.run(check)


def assert_blobs_byte_exact(instance: RegistryInstance, repo: str, snap: GraphSnapshot) -> None:
    """Download every blob of the graph from ``instance`` and hash it here."""
    for digest, desc in snap.blobs.items():
        req = urllib.request.Request(
            f"{instance.url}/v2/{repo}/blobs/{digest}", headers=instance.basic_auth_header()
        )
        h, size = hashlib.sha256(), 0
        with urllib.request.urlopen(req, timeout=60) as resp:
            while chunk := resp.read(1024 * 1024):
                h.update(chunk)
                size += len(chunk)
        assert (f"sha256:{h.hexdigest()}", size) == (digest, desc.size)


def wait_until_uploads_answered(proxy: Any, timeout: float = 60) -> None:
    """Until every upload request the proxy has seen got its answer."""
    deadline = time.monotonic() + timeout
    while any(r.kind == "upload" and r.status == 0 for r in proxy.stats().log):
        assert time.monotonic() < deadline, "uploads still in flight"
        time.sleep(0.05)
