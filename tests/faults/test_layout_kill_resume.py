"""SIGKILL of a copy into an OCI layout in the middle of a blob, then the same
command again: the rerun reads only the rest of that blob from the source.

The source is a real registry behind a counting FaultProxy; the proxy stalls
the large layer's download a third of the way in, the CLI writes what it
received into the layout's temporary file for that digest, and is killed
there.  The rerun must continue the temporary file (its bytes hashed, the
source asked from that offset with a Range request), so the source sends
exactly the missing tail; the layout must then hold the source's graph byte
for byte, verify, read with skopeo, and keep no temporary file.  When the
leftover is damaged after the kill, the rerun finds out at the digest check,
discards it, reads the blob again from 0, and the result is still exact.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry import RegistryTarget
from tests.faults.resume_support import MiB, copy_argv, journal_runs, log_events, run, start
from tests.integration.graphs import GraphBuilder, _compact, _desc_json, assert_same_graph

LAYER = 40 * MiB


def _build_source(registry_factory: Callable[..., Any], fault_proxy: Callable[..., Any]) -> Any:
    src = registry_factory("open")
    proxy = fault_proxy(src.instance)

    async def build() -> Descriptor:
        target = RegistryTarget(src.instance.host, src.instance.options())
        try:
            b = GraphBuilder(target, "app")
            config = await b.blob(_compact({"os": "linux", "architecture": "amd64"}), mt.OCI_CONFIG)
            big = await b.blob(os.urandom(LAYER), mt.OCI_LAYER_GZIP)
            small = await b.blob(os.urandom(4096), mt.OCI_LAYER_GZIP)
            raw = _compact(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "config": _desc_json(config),
                    "layers": [_desc_json(big), _desc_json(small)],
                }
            )
            await b.manifest(raw, mt.OCI_MANIFEST, ["v1"])
            return big
        finally:
            await target.aclose()

    return src, proxy, anyio.run(build)


def _temp_files(layout: Path) -> list[Path]:
    return sorted((layout / "blobs" / "sha256").glob(".tmp-*"))


def _kill_mid_blob(
    proxy: Any, big: Descriptor, argv: list[str], home: Path, layout: Path
) -> tuple[Path, int]:
    """Start the copy, let the big layer stall a third of the way, SIGKILL; the
    temporary file left behind and its size."""
    proxy.delay("GET", big.digest, 120.0, after_bytes=LAYER // 3)
    proc = start(argv, home)
    deadline = time.monotonic() + 120
    last, stable_since = -1, time.monotonic()
    try:
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the copy never stalled mid-blob"
            sizes = [p.stat().st_size for p in _temp_files(layout)]
            size = max(sizes, default=-1)
            if size != last:
                last, stable_since = size, time.monotonic()
            elif size > MiB and time.monotonic() - stable_since > 0.5:
                break
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    proxy.clear()
    proxy.reset()
    [tmp] = _temp_files(layout)
    left = tmp.stat().st_size
    assert 0 < left < LAYER
    return tmp, left


def _source_bytes_of(proxy: Any, desc: Descriptor) -> int:
    return sum(
        r.bytes_down for r in proxy.stats().log if r.method == "GET" and desc.digest in r.path
    )


def _check_layout(src: Any, layout: Path) -> None:
    assert [p for p in layout.rglob("*") if ".tmp-" in p.name] == []

    async def check() -> None:
        a = RegistryTarget(src.instance.host, src.instance.options())
        b = OCILayoutTarget(layout)
        try:
            # manifests byte for byte; every blob read back from 0 (hence verified)
            await assert_same_graph(a, "app", "v1", b, "", "v1")
        finally:
            await a.aclose()
            await b.aclose()

    anyio.run(check)
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is required for the interop checks (apt-get install skopeo)"
    proc = subprocess.run(
        [skopeo, "inspect", f"oci:{layout}:v1"], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


@pytest.fixture
def source(registry_factory: Callable[..., Any], fault_proxy: Callable[..., Any]) -> Any:
    return _build_source(registry_factory, fault_proxy)


def test_sigkill_mid_blob_then_rerun_reads_only_the_rest(tmp_path: Path, source: Any) -> None:
    src, proxy, big = source
    layout = tmp_path / "layout"
    journal = tmp_path / "journal.sqlite"
    argv = copy_argv(journal, f"{proxy.host}/app:v1", f"ocidir://{layout}:v1")
    _, left = _kill_mid_blob(proxy, big, argv, tmp_path, layout)

    second = run(argv, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _source_bytes_of(proxy, big) == LAYER - left
    resumed = log_events(second.stderr, "layout.blob_resumed")
    assert [(r["digest"], int(r["offset"])) for r in resumed] == [(big.digest, left)]
    assert journal_runs(journal)[0][1] == "done"
    _check_layout(src, layout)


def test_sigkill_mid_blob_with_a_damaged_leftover_still_ends_byte_exact(
    tmp_path: Path, source: Any
) -> None:
    src, proxy, big = source
    layout = tmp_path / "layout"
    journal = tmp_path / "journal.sqlite"
    argv = copy_argv(journal, f"{proxy.host}/app:v1", f"ocidir://{layout}:v1")
    tmp, left = _kill_mid_blob(proxy, big, argv, tmp_path, layout)
    with open(tmp, "r+b") as fh:  # a sector gone bad on disk
        fh.seek(left // 2)
        fh.write(b"\0" * 512)

    second = run(argv, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert log_events(second.stderr, "layout.leftover_discarded")
    # the rest, then the whole blob again once the digest check failed
    assert _source_bytes_of(proxy, big) == (LAYER - left) + LAYER
    _check_layout(src, layout)
