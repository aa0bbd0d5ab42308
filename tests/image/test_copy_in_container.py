"""The image runs a one-off ``copy -r`` of a signed graph between two real
registries, credentials from a mounted docker config, journal on a mounted volume.

The registries are loopback ``docker-registry`` processes with Basic auth
(``registry_factory("basic")``: random passwords per registry); the container
shares the host's network (``buildah run --network host``), so it reaches them
on 127.0.0.1.  ``sync`` of a config file, its resume after SIGKILL and its
shards are in ``test_sync_in_container.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.resume_support import journal_runs
from tests.image.container import UID, Container
from tests.image.support import (
    JOURNAL,
    assert_blobs_byte_exact,
    assert_same,
    build_signed,
    docker_config,
    state_dir,
    volumes,
)

pytestmark = pytest.mark.image


def test_copy_signed_graph_with_mounted_credentials_and_journal(
    tmp_path: Path, registry_factory: Callable[..., Any], container: Callable[[], Container]
) -> None:
    src, dst = registry_factory("basic").instance, registry_factory("basic").instance
    snap = build_signed(src, 4096)
    config = docker_config(tmp_path / "docker", src, dst)
    state = state_dir(tmp_path / "state")
    c = container()
    started = time.time()
    result = c.entrypoint(
        "--log-format",
        "json",
        "copy",
        "-r",
        f"{src.host}/app:v1",
        f"{dst.host}/mirror/app:v1",
        volumes=volumes(config, state),
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Copied {src.host}/app:v1 => {dst.host}/mirror/app:v1" in result.stdout
    assert "Summary: 4 manifests copied" in result.stdout
    assert_same(src, dst, "mirror/app")
    assert_blobs_byte_exact(dst, "mirror/app", snap)
    # The default journal is on the volume, written by the image's user.
    journal = state / JOURNAL
    assert journal.stat().st_uid == UID
    assert [s for _, s in journal_runs(journal)] == ["done"]
    for inst in (src, dst):
        assert inst.password not in result.stdout + result.stderr
    # It wrote nothing but the volume: a read-only root filesystem will do.
    assert c.changed_since(started) == []
