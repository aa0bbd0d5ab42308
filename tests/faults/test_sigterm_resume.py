"""SIGTERM during a copy: a graceful stop, exit 75, the run ``interrupted``; the
same command again completes it without sending an acknowledged byte twice.

Both runs write ``--report``: the interrupted one with the attempt's true figures
(its wall time, its requests, the bytes the destination acknowledged, half-sent
layers included), and the journal's byte count is the sum of both attempts.
With ``--log-format json`` every line either run writes on stderr is a JSON event,
the last one ``cli.exited`` with the exit code.
"""

from __future__ import annotations

import json
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


def json_events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object (fails on a line that is not one)."""
    events = []
    for line in stderr.splitlines():
        event = json.loads(line)
        assert isinstance(event, dict) and "event" in event, line
        events.append(event)
    return events


def acknowledged_upload_bytes(proxy: Any) -> int:
    """Upload bytes the destination answered with success (chunks and whole blobs)."""
    return sum(
        r.bytes_up
        for r in proxy.stats().log
        if r.kind == "upload" and r.fault is None and r.status in (201, 202, 204)
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
    first_report, second_report = tmp_path / "first.json", tmp_path / "second.json"
    src_ref, dst_ref = f"{src.instance.host}/app:v1", f"{proxy.host}/mirror/app:v1"
    argv = copy_argv(journal, src_ref, dst_ref, "--report", str(first_report))
    proc = start(argv, tmp_path)
    deadline = time.monotonic() + 300
    while proxy.stats().bytes_up(kind="upload") < 0.4 * graph.total_blob_bytes:
        assert proc.poll() is None, "the copy ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    events = json_events(stderr)
    assert events[-1]["event"] == "cli.exited" and events[-1]["exit_code"] == 75
    (stopped,) = [e for e in events if e["event"] == "run.interrupted"]
    assert stopped["message"].startswith("Interrupted: rerun the same command to resume (run ")
    run_id = stopped["message"].split("(run ", 1)[1].split(",", 1)[0]
    assert stopped["message"].endswith(f", journal {journal})")
    assert journal_runs(journal) == [(run_id, "interrupted")]
    first_bytes = proxy.stats().bytes_up(kind="upload")
    assert first_bytes < graph.total_blob_bytes

    # The report of the interrupted attempt tells what it did.
    acknowledged = acknowledged_upload_bytes(proxy)
    report = json.loads(first_report.read_text())
    assert report["status"] == "interrupted" and report["exit_code"] == 75
    assert report["run"] == {"id": run_id, "resumed": False, "journal": str(journal)}
    assert report["wall_time"] > 0.5
    assert report["requests"][proxy.host]["blob_patch"] > 0
    assert report["requests"][src.instance.host]["blob_get"] > 0
    assert acknowledged > 0.3 * graph.total_blob_bytes
    assert acknowledged <= report["bytes_sent"] <= first_bytes, (report["bytes_sent"], acknowledged)
    assert report["unfinished_upload_bytes"] > 0
    shown = run_cli("journal", "--journal", str(journal), "show", run_id, home=tmp_path)
    assert json.loads(shown.stdout)["bytes"] == report["bytes_sent"]

    second = run([*argv[:-2], "--report", str(second_report), *argv[-2:]], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    events = json_events(second.stderr)
    assert events[-1]["event"] == "cli.exited" and events[-1]["exit_code"] == 0
    (resuming,) = [e for e in events if e["event"] == "run.resumed"]
    assert resuming["run"] == run_id and resuming["message"].startswith(f"Resuming run {run_id}")
    resumed = log_events(second.stderr, "registry.upload.resume")
    assert resumed and all(int(r["offset"]) > 0 for r in resumed), second.stderr[-3000:]
    assert not log_events(second.stderr, "registry.upload.resume_gone")
    # Uploads paused at acknowledged chunks: nothing the destination had was sent again.
    assert proxy.stats().bytes_up(kind="upload") == graph.total_blob_bytes
    assert journal_runs(journal) == [(run_id, "done")]
    assert leftover_sessions(dst, "mirror/app") == []
    rerun = json.loads(second_report.read_text())
    assert rerun["status"] == "copied" and rerun["run"]["resumed"] is True
    # The journal sums the attempts' bytes.
    shown = run_cli("journal", "--journal", str(journal), "show", run_id, home=tmp_path)
    assert json.loads(shown.stdout)["bytes"] == report["bytes_sent"] + rerun["bytes_sent"]
    # Every blob byte was sent once, by one attempt or the other, and counted once.
    assert report["bytes_sent"] + rerun["bytes_sent"] == graph.total_blob_bytes

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
