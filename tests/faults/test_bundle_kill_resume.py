"""SIGKILL of ``bundle create`` and of ``bundle import`` mid-way, then the same command again.

The source is a real registry holding a graph of large layers and many small referrers
(:func:`tests.faults.resume_support.build_big_graph`).

* ``create`` is killed once a share of the graph's bytes is in the parts.  The rerun
  resumes (the journal's run and the writer's own log): it reads from the source only the
  blobs the log did not hold at the kill, and the bundle it finishes holds exactly what an
  uninterrupted create of the same source holds, verifies, and imports digest for digest.
* ``import`` is killed once the destination (behind a counting proxy) received a share of
  the bytes.  No receipt exists yet; the rerun verifies again, resumes, and the destination
  then holds the source's graph digest for digest.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from replicator.bundle.documents import load_bundle_document
from replicator.targets.registry import RegistryTarget
from tests.faults.resume_support import MiB, build_big_graph, journal_runs, log_events, run, start
from tests.integration.bundle_helpers import assert_same_tags
from tests.integration.cli_helpers import REPLICATOR

LAYER = 24 * MiB


def _source(registry_factory: Callable[..., Any], fault_proxy: Callable[..., Any]) -> Any:
    src = registry_factory("open")
    proxy = fault_proxy(src.instance)

    async def build() -> Any:
        target = RegistryTarget(src.instance.host, src.instance.options())
        try:
            return await build_big_graph(target, "app", layers=3, layer_size=LAYER)
        finally:
            await target.aclose()

    return src, proxy, anyio.run(build)


def _create_argv(journal: Path, out: Path, src: str) -> list[str]:
    return [
        REPLICATOR, "--log-format", "json", "bundle", "create", "-o", str(out),
        "--max-part-size", "10MiB", "--journal", str(journal), src,
    ]  # fmt: skip


def _parts_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("part-*.tar"))


def _kill_when(proc: Any, reached: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                "the command ended before the kill: " + proc.communicate()[1][-3000:]
            )
            if reached():
                return
            time.sleep(0.005)
        raise AssertionError("the kill point was never reached")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)


def _logged_blob_bytes(out: Path) -> int:
    """Bytes of the blobs the create's log holds (what the parts keep for the rerun)."""
    total = 0
    path = out / ".bundle-create.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            break  # a line being written
        member = record.get("member")
        if member and member["kind"] == "blob":
            total += member["size"]
    return total


@pytest.mark.parametrize("share", [0.5, 0.85])
def test_a_killed_create_resumes_and_ends_with_the_same_bundle(
    registry_factory: Callable[..., Any],
    fault_proxy: Callable[..., Any],
    tmp_path: Path,
    share: float,
) -> None:
    src, proxy, graph = _source(registry_factory, fault_proxy)
    total = graph.total_blob_bytes
    out = tmp_path / "bundle"
    journal = tmp_path / "journal.sqlite"
    argv = _create_argv(journal, out, f"{proxy.host}/app:v1")

    # (the log may trail the parts: wait until it holds a blob too)
    _kill_when(
        start(argv, tmp_path),
        lambda: _parts_bytes(out) >= share * total and _logged_blob_bytes(out) > 0,
    )
    assert not (out / "bundle.json").exists()
    kept = _logged_blob_bytes(out)
    assert 0 < kept < total
    unfinished = run([REPLICATOR, "bundle", "verify", str(out)], tmp_path)
    assert unfinished.returncode == 6 and "an unfinished create" in unfinished.stderr
    proxy.reset()

    second = run(argv, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    # The bundle's own log resumes it; the journal's run says "resumed" only when
    # it had confirmed something before the kill (the log may be ahead of it).
    assert log_events(second.stderr, "bundle.create_resumed")
    # nothing the parts held at the kill was read from the source again
    assert proxy.stats().bytes_down(method="GET", kind="blob") <= total - kept
    assert journal_runs(journal)[0][1] == "done"
    assert (
        sorted(os.listdir(out))[0] == "bundle.json" and not (out / ".bundle-create.jsonl").exists()
    )

    # the same content as an uninterrupted create of the same source
    whole = tmp_path / "whole"
    reference = run(
        _create_argv(tmp_path / "other.sqlite", whole, f"{src.instance.host}/app:v1"), tmp_path
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    resumed_doc, _, _ = load_bundle_document(out)
    whole_doc, _, _ = load_bundle_document(whole)
    assert resumed_doc.content.to_json() == whole_doc.content.to_json()
    verified = run([REPLICATOR, "bundle", "verify", str(out)], tmp_path)
    assert verified.returncode == 0, verified.stderr[-2000:]

    dest = registry_factory("open").instance
    imported = run(
        [REPLICATOR, "bundle", "import", str(out), f"{dest.host}/mirror", "--no-journal"], tmp_path
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert_same_tags(src.instance, [("app", "v1")], dest, prefix="mirror")


def _partial(out: Path) -> dict[str, Any] | None:
    """The last half-written blob the create's log records, unless a member followed it."""
    found = None
    path = out / ".bundle-create.jsonl"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            break  # a line being written
        if "partial" in record:
            found = record["partial"]
        elif "member" in record or "dropped" in record:
            found = None
    return found


@pytest.mark.parametrize("damaged", [False, True])
def test_a_create_killed_mid_blob_continues_that_blob(
    registry_factory: Callable[..., Any],
    fault_proxy: Callable[..., Any],
    tmp_path: Path,
    damaged: bool,
) -> None:
    """Killed while a large layer streams: the rerun keeps its bytes and reads only the rest
    of it from the source; with those bytes damaged, it finds out and reads the layer again."""
    src, proxy, graph = _source(registry_factory, fault_proxy)
    out = tmp_path / "bundle"
    argv = _create_argv(tmp_path / "journal.sqlite", out, f"{proxy.host}/app:v1")
    _kill_when(start(argv, tmp_path), lambda: _partial(out) is not None)
    partial = _partial(out)
    assert partial is not None
    kept = _logged_blob_bytes(out)
    written = sum(length for _, _, length in partial["at"])
    if damaged:
        part, offset, _ = partial["at"][0]
        with open(out / f"part-{part:03d}.tar", "r+b") as fh:
            fh.seek(offset + 100)
            fh.write(b"\0" * 512)
    proxy.reset()

    second = run(argv, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = log_events(second.stderr, "bundle.partial_resumed")
    assert [(r["digest"], r["offset"]) for r in resumed] == [(partial["digest"], written)]
    read_again = proxy.stats().bytes_down(method="GET", kind="blob")
    if damaged:
        assert log_events(second.stderr, "bundle.partial_discarded")
        assert read_again <= graph.total_blob_bytes - kept + partial["size"] - written
    else:
        assert read_again <= graph.total_blob_bytes - kept - written
    verified = run([REPLICATOR, "bundle", "verify", str(out)], tmp_path)
    assert verified.returncode == 0, verified.stderr[-2000:]
    dest = registry_factory("open").instance
    imported = run(
        [REPLICATOR, "bundle", "import", str(out), f"{dest.host}/m", "--no-journal"], tmp_path
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert_same_tags(src.instance, [("app", "v1")], dest, prefix="m")


def test_a_killed_import_resumes_and_ends_with_the_same_graph(
    registry_factory: Callable[..., Any], fault_proxy: Callable[..., Any], tmp_path: Path
) -> None:
    src, _, graph = _source(registry_factory, fault_proxy)
    out = tmp_path / "bundle"
    made = run(
        _create_argv(tmp_path / "create.sqlite", out, f"{src.instance.host}/app:v1"), tmp_path
    )
    assert made.returncode == 0, made.stderr[-3000:]
    dest = registry_factory("open")
    proxy = fault_proxy(dest.instance)
    journal = tmp_path / "import.sqlite"
    argv = [
        REPLICATOR, "--log-format", "json", "bundle", "import", str(out), f"{proxy.host}/mirror",
        "--journal", str(journal),
    ]  # fmt: skip
    receipt = tmp_path / "bundle.receipt.json"

    def one_layer_in() -> bool:
        # Killed once a whole layer is at the destination (and others are under
        # way): the layers go up side by side, so a kill at a byte count alone can
        # find all three mid-body, and distribution then has none of them.
        return any(
            r.kind == "upload" and r.status == 201 and r.bytes_up >= LAYER
            for r in proxy.stats().log
        )

    _kill_when(start(argv, tmp_path), one_layer_in)
    assert not receipt.exists()
    sent_before = proxy.stats().bytes_up(kind="upload")

    second = run(argv, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert log_events(second.stderr, "run.resumed")
    # the rerun did not send everything again
    assert proxy.stats().bytes_up(kind="upload") - sent_before < graph.total_blob_bytes
    assert journal_runs(journal)[0][1] == "done"
    assert receipt.exists()
    assert_same_tags(src.instance, [("app", "v1")], dest.instance, prefix="mirror")
