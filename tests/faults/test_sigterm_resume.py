"""SIGTERM during a copy: a graceful stop, exit 75, the run ``interrupted``; the
same command again completes it without sending an acknowledged byte twice."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from replicator.targets.registry import RegistryTarget
from tests.faults.resume_support import (
    MiB,
    build_big_graph,
    copy_argv,
    journal_runs,
    leftover_sessions,
    log_events,
    run,
    start,
)
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import assert_same_graph

MESSAGE = re.compile(
    r"^Interrupted: rerun the same command to resume \(run (\S+), journal (.+)\)$", re.M
)


def test_sigterm_stops_gracefully_and_the_rerun_finishes(
    tmp_path: Path, registry_factory: Callable[..., Any], fault_proxy: Callable[..., Any]
) -> None:
    src = registry_factory("open")
    dst = registry_factory("open")
    proxy = fault_proxy(dst.instance)

    async def build() -> Any:
        target = RegistryTarget(src.instance.host, src.instance.options())
        try:
            return await build_big_graph(target, "app", layers=3, layer_size=40 * MiB)
        finally:
            await target.aclose()

    graph = anyio.run(build)
    journal = tmp_path / "state" / "journal.sqlite"
    argv = copy_argv(journal, f"{src.instance.host}/app:v1", f"{proxy.host}/mirror/app:v1")
    proc = start(argv, tmp_path)
    deadline = time.monotonic() + 300
    while proxy.stats().bytes_up(kind="upload") < 0.4 * graph.total_blob_bytes:
        assert proc.poll() is None, "the copy ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    match = MESSAGE.search(stderr)
    assert match, stderr[-2000:]
    run_id, where = match.groups()
    assert Path(where) == journal
    assert journal_runs(journal) == [(run_id, "interrupted")]
    first_bytes = proxy.stats().bytes_up(kind="upload")
    assert first_bytes < graph.total_blob_bytes

    second = run(argv, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resuming run {run_id}" in second.stderr
    resumed = log_events(second.stderr, "registry.upload.resume")
    assert resumed and all(int(r["offset"]) > 0 for r in resumed), second.stderr[-3000:]
    assert not log_events(second.stderr, "registry.upload.resume_gone")
    # Uploads paused at acknowledged chunks: nothing the destination had was sent again.
    assert proxy.stats().bytes_up(kind="upload") == graph.total_blob_bytes
    assert journal_runs(journal) == [(run_id, "done")]
    assert leftover_sessions(dst, "mirror/app") == []

    async def check() -> None:
        a = RegistryTarget(src.instance.host, src.instance.options())
        b = RegistryTarget(dst.instance.host, dst.instance.options())
        try:
            await assert_same_graph(a, "app", "v1", b, "mirror/app", "v1")
        finally:
            await a.aclose()
            await b.aclose()

    anyio.run(check)
    listed = run_cli("journal", "--journal", str(journal), "list", home=tmp_path)
    assert listed.code == 0 and run_id in listed.stdout and "done" in listed.stdout
    shown = run_cli("journal", "--journal", str(journal), "show", run_id, home=tmp_path)
    assert shown.code == 0 and '"state": "done"' in shown.stdout
    assert '"blobs_uploaded"' in shown.stdout
