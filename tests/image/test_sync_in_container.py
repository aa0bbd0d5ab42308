"""The image runs ``sync`` of a config file mounted from the host, as the
manifests in ``deploy/`` run it: the config at /config/sync/sync.yaml
(read-only, a ConfigMap), credentials from a mounted docker config (a Secret),
the journal on the state volume (a PersistentVolumeClaim).

* a signed graph promoted through a promotion gate, then found up to date,
  writing nothing outside the state volume (a read-only root filesystem will do);
* killed with SIGKILL in the middle of its large layers, a fresh container on
  the same volume resumes the journalled run and completes the destination byte
  for byte, every byte received once;
* two containers with ``--shard-from-env 2`` and ``JOB_COMPLETION_INDEX`` 0
  and 1 at once (the pods of an Indexed Job) on one state volume: each mirrors
  its own repositories in a journal file of its own, together all of them.

The registries are loopback ``docker-registry`` processes with Basic auth; the
containers share the host's network (``buildah run --network host``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.sync.shard import shard_of
from tests.faults.resume_support import MiB, journal_runs, journal_uploads
from tests.image.container import UID, Container
from tests.image.support import (
    JOURNAL,
    SYNC_CONFIG,
    assert_blobs_byte_exact,
    assert_same,
    build_signed,
    docker_config,
    state_dir,
    sync_config,
    volumes,
    wait_until_uploads_answered,
)
from tests.integration.graphs import SIGNATURE_TYPE

pytestmark = pytest.mark.image


def _events(stderr: str, name: str) -> list[dict[str, Any]]:
    """The JSON log events called ``name`` on a ``--log-format json`` stderr."""
    found = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
    return found


def _promote_config(src: str, dst: str) -> str:
    return f"""\
version: 1
jobs:
  - name: promote-app
    source: {src}/app
    destinations: [{dst}/mirror/app]
    tags: {{include: [v1]}}
    require: [{SIGNATURE_TYPE}]
"""


def _sync_args(*extra: str) -> list[str]:
    return ["--log-format", "json", "sync", SYNC_CONFIG, "--chunk-size", "4MiB", *extra]


def test_sync_of_a_mounted_config_promotes_a_signed_graph_and_writes_only_its_volume(
    tmp_path: Path, registry_factory: Callable[..., Any], container: Callable[[], Container]
) -> None:
    src, dst = registry_factory("basic").instance, registry_factory("basic").instance
    snap = build_signed(src, 4096)
    state = state_dir(tmp_path / "state")
    mounts = volumes(
        docker_config(tmp_path / "docker", src, dst),
        state,
        sync_config(tmp_path / "sync", _promote_config(src.host, dst.host)),
    )
    c = container()
    started = time.time()
    first = c.entrypoint(*_sync_args(), volumes=mounts)
    print(first.stdout)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Job promote-app" in first.stdout
    assert (
        f"Copied {src.host}/app:v1 => {dst.host}/mirror/app:v1 (new graph: 4 manifests)"
        in first.stdout
    )
    assert_same(src, dst, "mirror/app")
    assert_blobs_byte_exact(dst, "mirror/app", snap)
    journal = state / JOURNAL
    assert journal.stat().st_uid == UID
    assert [s for _, s in journal_runs(journal)] == ["done"]

    again = c.entrypoint(*_sync_args(), volumes=mounts)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Up to date: {src.host}/app:v1 => {dst.host}/mirror/app:v1" in again.stdout
    for inst in (src, dst):
        assert inst.password not in first.stdout + first.stderr + again.stdout + again.stderr
    # It wrote nothing but the state volume: a read-only root filesystem will do.
    assert c.changed_since(started, mounts) == []


def test_sync_killed_mid_copy_then_a_fresh_container_resumes_from_the_journal(
    tmp_path: Path,
    registry_factory: Callable[..., Any],
    fault_proxy: Callable[..., Any],
    container: Callable[[], Container],
) -> None:
    """SIGKILL while the large layers are half sent (between chunks: the
    destination holds further upload requests back with 503 + Retry-After, so
    distribution 2.8 keeps every session valid); a new container on the same
    state volume, with the same config, resumes the journalled run: each
    acknowledged chunk and confirmed blob is used, the destination receives
    every byte exactly once."""
    src = registry_factory("basic").instance
    dst_registry = registry_factory("basic")
    proxy = fault_proxy(dst_registry.instance)
    snap = build_signed(src, 24 * MiB)
    total = sum(d.size for d in snap.blobs.values())
    state = state_dir(tmp_path / "state")
    mounts = volumes(
        docker_config(tmp_path / "docker", src, proxy),
        state,
        sync_config(tmp_path / "sync", _promote_config(src.host, proxy.host)),
    )

    proc = container().start_entrypoint(*_sync_args(), volumes=mounts)
    deadline = time.monotonic() + 300
    while proxy.stats().bytes_up(kind="upload") < 0.4 * total:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sync did not get going"
        time.sleep(0.005)
    proxy.status(None, r"/blobs/uploads/", 503, retry_after=5, times=None)
    wait_until_uploads_answered(proxy)
    time.sleep(2.0)  # and the answers journalled
    Container.kill(proc)
    journal = state / JOURNAL
    runs = journal_runs(journal)
    assert [s for _, s in runs] == ["running"]  # killed: no chance to record anything else
    half_sent = [offset for _, offset, _ in journal_uploads(journal) if offset > 0]
    assert half_sent, "no chunked upload was under way at the kill"

    proxy.clear()
    second = container().entrypoint(*_sync_args(), volumes=mounts)
    print(second.stdout)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = _events(second.stderr, "run.resumed")
    assert len(resumed) == 1, second.stderr[-3000:]
    assert resumed[0]["run"] == runs[0][0]
    assert resumed[0]["confirmations"] > 0
    print(resumed[0])
    assert [s for _, s in journal_runs(journal)] == ["done"]
    assert_same(src, proxy, "mirror/app")
    assert_blobs_byte_exact(dst_registry.instance, "mirror/app", snap)
    received = sum(
        r.bytes_up
        for r in proxy.stats().log
        if r.kind == "upload" and r.fault is None and r.status in (201, 202, 204)
    )
    assert received == total


def _two_per_shard() -> list[str]:
    """Four repository names, two in each shard of 2 (fixed: the split is the same each run)."""
    names = [f"apps/svc-{i}" for i in range(20)]
    picked = [n for n in names if shard_of(n, 2) == 0][:2] + [
        n for n in names if shard_of(n, 2) == 1
    ][:2]
    assert len(picked) == 4
    return picked


def test_two_containers_of_an_indexed_job_mirror_their_own_shards(
    tmp_path: Path, registry_factory: Callable[..., Any], container: Callable[[], Container]
) -> None:
    src, dst = registry_factory("basic").instance, registry_factory("basic").instance
    repos = _two_per_shard()
    snaps = {repo: build_signed(src, 4096, repo) for repo in repos}
    config = f"""\
version: 1
jobs:
  - name: mirror-apps
    source: {{registry: "{src.host}", repositories: ["apps/*"]}}
    destinations: ["{dst.host}/mirror/{{repository}}"]
    require: [{SIGNATURE_TYPE}]
"""
    state = state_dir(tmp_path / "state")
    mounts = volumes(
        docker_config(tmp_path / "docker", src, dst), state, sync_config(tmp_path / "sync", config)
    )
    pods = [container(), container()]
    started = time.time()
    procs = [
        pod.start_entrypoint(
            *_sync_args("--shard-from-env", "2"),
            volumes=mounts,
            env={"JOB_COMPLETION_INDEX": str(index)},
        )
        for index, pod in enumerate(pods)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for index, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        print(out)
        assert proc.returncode == 0, err[-3000:]
        assert f"Shard {index}/2: 2 source repositories here, 2 in other shards" in out
        for repo in repos:
            copied = f"Copied {src.host}/{repo}:v1 => {dst.host}/mirror/{repo}:v1"
            assert (copied in out) == (shard_of(repo, 2) == index), (repo, out)
    for repo, snap in snaps.items():
        assert_same(src, dst, f"mirror/{repo}", src_repo=repo)
        assert_blobs_byte_exact(dst, f"mirror/{repo}", snap)
    # One journal file per shard on the shared volume, each with its own finished run.
    journals = sorted(p.name for p in (state / "replicator").glob("journal*.sqlite"))
    assert journals == ["journal.shard-0-of-2.sqlite", "journal.shard-1-of-2.sqlite"]
    for name in journals:
        assert [s for _, s in journal_runs(state / "replicator" / name)] == ["done"]
    for pod in pods:
        assert pod.changed_since(started, mounts) == []
    # An index that is not below N (the Job's completions and N disagree): exit 2, one line.
    wrong = pods[0].entrypoint(
        "sync",
        SYNC_CONFIG,
        "--shard-from-env",
        "2",
        volumes=mounts,
        env={"JOB_COMPLETION_INDEX": "2"},
    )
    assert wrong.returncode == 2
    # (buildah adds its own lines about the exit status after replicator's one)
    assert wrong.stderr.splitlines()[0] == (
        "Error: --shard-from-env 2: JOB_COMPLETION_INDEX=2 is not below 2: "
        "the Job's completions must equal the shard count"
    )
    assert "Traceback" not in wrong.stderr
