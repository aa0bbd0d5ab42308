"""The image copies a signed graph between two real registries, credentials
from a mounted docker config, journal on a mounted volume; killed mid-copy,
a fresh container with the same volume resumes the run.

The registries are loopback ``docker-registry`` processes with Basic auth
(``registry_factory("basic")``: random passwords per registry); the container
shares the host's network (``buildah run --network host``), so it reaches them
on 127.0.0.1.  ``sync`` does not exist yet: these tests run ``copy``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from replicator.graph.walk import GraphSnapshot, snapshot_graph
from replicator.targets.registry import RegistryTarget
from tests.faults.resume_support import MiB, journal_runs, journal_uploads
from tests.image.container import CONFIG_DIR, GID, STATE_DIR, UID, Container, Volume
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder, assert_same_graph

pytestmark = pytest.mark.image

#: Where the default journal lands inside the container ($XDG_STATE_HOME/replicator/).
JOURNAL = Path("replicator") / "journal.sqlite"
RESUMING = re.compile(r"^Resuming run (\S+) \((\d+) confirmation\(s\) journalled\)$", re.M)


def _docker_config(where: Path, *instances: Any) -> Path:
    """A docker config dir whose config.json has Basic credentials for each instance.

    The file is root's, readable by the image's group only (as a Kubernetes
    Secret with ``defaultMode: 0440`` and ``fsGroup: 10001`` gives it).
    """
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


def _state_dir(where: Path) -> Path:
    """An empty state volume owned by the image's user."""
    where.mkdir(mode=0o700)
    os.chown(where, UID, GID)
    return where


def _volumes(config: Path, state: Path) -> list[Volume]:
    return [Volume(config, CONFIG_DIR, read_only=True), Volume(state, STATE_DIR)]


def _target(instance: Any) -> RegistryTarget:
    return RegistryTarget(instance.host, instance.options())


def _build(instance: RegistryInstance, layer_size: int) -> GraphSnapshot:
    """A signed image (signature, SBOM, SBOM signature) at ``app:v1``; its snapshot."""

    async def build() -> GraphSnapshot:
        t = _target(instance)
        try:
            await GraphBuilder(t, "app").signed_image(
                "app:v1", tags=["v1"], layers=2, layer_size=layer_size
            )
            return await snapshot_graph(t, "app", "v1")
        finally:
            await t.aclose()

    return anyio.run(build)


def _assert_same(src: Any, dst: Any, dst_repo: str) -> None:
    async def check() -> None:
        a, b = _target(src), _target(dst)
        try:
            await assert_same_graph(a, "app", "v1", b, dst_repo, "v1")
        finally:
            await a.aclose()
            await b.aclose()

    anyio.run(check)


def _assert_blobs_byte_exact(instance: RegistryInstance, repo: str, snap: GraphSnapshot) -> None:
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


def _wait_until_uploads_answered(proxy: Any, timeout: float = 60) -> None:
    """Until every upload request the proxy has seen got its answer."""
    deadline = time.monotonic() + timeout
    while any(r.kind == "upload" and r.status == 0 for r in proxy.stats().log):
        assert time.monotonic() < deadline, "uploads still in flight"
        time.sleep(0.05)


def _copy_args(src: str, dst: str) -> list[str]:
    return ["--log-format", "json", "copy", "-r", "--chunk-size", "4MiB", src, dst]


def test_copy_signed_graph_with_mounted_credentials_and_journal(
    tmp_path: Path, registry_factory: Callable[..., Any], container: Callable[[], Container]
) -> None:
    src, dst = registry_factory("basic").instance, registry_factory("basic").instance
    snap = _build(src, 4096)
    config = _docker_config(tmp_path / "docker", src, dst)
    state = _state_dir(tmp_path / "state")
    c = container()
    started = time.time()
    result = c.entrypoint(
        *_copy_args(f"{src.host}/app:v1", f"{dst.host}/mirror/app:v1"),
        volumes=_volumes(config, state),
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Copied {src.host}/app:v1 => {dst.host}/mirror/app:v1" in result.stdout
    assert "Summary: 4 manifests copied" in result.stdout
    _assert_same(src, dst, "mirror/app")
    _assert_blobs_byte_exact(dst, "mirror/app", snap)
    # The default journal is on the volume, written by the image's user.
    journal = state / JOURNAL
    assert journal.stat().st_uid == UID
    assert [s for _, s in journal_runs(journal)] == ["done"]
    for inst in (src, dst):
        assert inst.password not in result.stdout + result.stderr
    # It wrote nothing but the volume: a read-only root filesystem will do.
    assert c.changed_since(started) == []


def test_killed_mid_copy_then_a_fresh_container_resumes_from_the_journal(
    tmp_path: Path,
    registry_factory: Callable[..., Any],
    fault_proxy: Callable[..., Any],
    container: Callable[[], Container],
) -> None:
    """SIGKILL while the large layers are half sent (between chunks: the
    destination holds further upload requests back with 503 + Retry-After, so
    distribution 2.8 keeps every session valid); a new container on the same
    state volume resumes the journalled run: each acknowledged chunk and
    confirmed blob is used, the destination receives every byte exactly once."""
    src = registry_factory("basic").instance
    dst_registry = registry_factory("basic")
    proxy = fault_proxy(dst_registry.instance)
    snap = _build(src, 24 * MiB)
    total = sum(d.size for d in snap.blobs.values())
    config = _docker_config(tmp_path / "docker", src, proxy)
    state = _state_dir(tmp_path / "state")
    args = _copy_args(f"{src.host}/app:v1", f"{proxy.host}/mirror/app:v1")

    first = container()
    proc = first.start_entrypoint(*args, volumes=_volumes(config, state))
    deadline = time.monotonic() + 300
    while proxy.stats().bytes_up(kind="upload") < 0.4 * total:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the copy did not get going"
        time.sleep(0.005)
    proxy.status(None, r"/blobs/uploads/", 503, retry_after=5, times=None)
    _wait_until_uploads_answered(proxy)
    time.sleep(2.0)  # and the answers journalled
    Container.kill(proc)
    journal = state / JOURNAL
    runs = journal_runs(journal)
    assert [s for _, s in runs] == ["running"]  # killed: no chance to record anything else
    half_sent = [offset for _, offset, _ in journal_uploads(journal) if offset > 0]
    assert half_sent, "no chunked upload was under way at the kill"

    proxy.clear()
    second = container().entrypoint(*args, volumes=_volumes(config, state))
    print(second.stdout)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = RESUMING.search(second.stderr)
    assert resumed is not None, second.stderr[-3000:]
    assert resumed.group(1) == runs[0][0]
    assert int(resumed.group(2)) > 0
    print(resumed.group(0))
    assert [s for _, s in journal_runs(journal)] == ["done"]
    _assert_same(src, proxy, "mirror/app")
    _assert_blobs_byte_exact(dst_registry.instance, "mirror/app", snap)
    received = sum(
        r.bytes_up
        for r in proxy.stats().log
        if r.kind == "upload" and r.fault is None and r.status in (201, 202, 204)
    )
    assert received == total
