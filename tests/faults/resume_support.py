"""Shared pieces of the resume tests: a source graph with large layers and many
small referrers, the CLI as a child process, and what the destination kept."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.graph.walk import snapshot_graph
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.targets.registry import RegistryTarget
from tests.infra.registry import RunningRegistry
from tests.integration.cli_helpers import REPLICATOR, isolated_env
from tests.integration.graphs import GraphBuilder, _compact, _desc_json

MiB = 1024 * 1024


@dataclass
class SourceGraph:
    """The root of the source graph and the distinct blobs it holds."""

    root: Descriptor
    blob_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total_blob_bytes(self) -> int:
        """Bytes every blob of the graph adds up to (each distinct blob once)."""
        return sum(self.blob_sizes.values())


async def build_big_graph(
    target: RegistryTarget,
    repository: str,
    *,
    layers: int = 4,
    layer_size: int = 64 * MiB,
    referrers: int = 24,
    nested: int = 8,
    tag: str = "v1",
) -> SourceGraph:
    """An image of ``layers`` random layers, ``referrers`` small referrers on it and
    ``nested`` referrers on the first ones (two levels)."""
    b = GraphBuilder(target, repository)
    config = await b.blob(_compact({"os": "linux", "architecture": "amd64"}), mt.OCI_CONFIG)
    layer_descs = []
    for _ in range(layers):
        data = os.urandom(layer_size)
        d = await b.blob(data, mt.OCI_LAYER_GZIP)
        del data
        layer_descs.append(d)
    raw = _compact(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": _desc_json(config),
            "layers": [_desc_json(d) for d in layer_descs],
        }
    )
    root = await b.manifest(raw, mt.OCI_MANIFEST, [tag])
    firsts = []
    for i in range(referrers):
        payload = os.urandom(2048 + 97 * i)
        r = await b.referrer(root, f"application/vnd.test.kind{i % 3}", payload)
        firsts.append((r, payload))
    for i in range(nested):
        payload = os.urandom(1024 + i)
        await b.referrer(firsts[i % len(firsts)][0], "application/vnd.test.signature", payload)
    snap = await snapshot_graph(target, repository, tag)
    sizes = {d: desc.size for d, desc in snap.blobs.items()}
    return SourceGraph(root, sizes)


def uploads_dir(running: RunningRegistry, repository: str) -> Path:
    """The registry's directory of upload sessions for ``repository``."""
    return (
        running.workdir
        / "data"
        / "docker"
        / "registry"
        / "v2"
        / "repositories"
        / repository
        / "_uploads"
    )


def leftover_sessions(running: RunningRegistry, repository: str) -> list[str]:
    """UUIDs of upload sessions the registry still holds for ``repository``."""
    where = uploads_dir(running, repository)
    return sorted(p.name for p in where.iterdir()) if where.exists() else []


def copy_argv(journal: Path, src: str, dst: str, *extra: str) -> list[str]:
    """The copy command line used by the resume tests."""
    return [
        REPLICATOR,
        "--log-format",
        "json",
        "copy",
        "-r",
        "--chunk-size",
        "8MiB",
        "--journal",
        str(journal),
        *extra,
        src,
        dst,
    ]


def start(argv: list[str], home: Path) -> subprocess.Popen[str]:
    """Start the CLI in the background (stdout/stderr captured)."""
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=isolated_env(home),
    )


def run(argv: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        argv, capture_output=True, text=True, env=isolated_env(home), timeout=timeout, check=False
    )


def log_events(stderr: str, name: str) -> list[dict[str, Any]]:
    """The JSON log records of event ``name`` in a run's stderr."""
    found = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def journal_runs(journal: Path) -> list[tuple[str, str]]:
    """``(id, state)`` of every run in the journal file, newest first."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return [
            (str(r[0]), str(r[1]))
            for r in conn.execute("SELECT id, state FROM runs ORDER BY started DESC")
        ]
    finally:
        conn.close()


def journal_uploads(journal: Path) -> list[tuple[str, int, str]]:
    """``(upload_url, offset, digest)`` of every upload session the journal holds."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT upload_url, offset, digest FROM uploads")
        return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]
    finally:
        conn.close()


def session_id(upload_url: str) -> str:
    """The session UUID in an upload URL (``.../blobs/uploads/<uuid>?...``)."""
    return upload_url.split("/blobs/uploads/", 1)[1].split("?", 1)[0]
