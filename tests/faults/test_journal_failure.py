"""The journal stops writing in the middle of a copy (here: the file size limit of
the process, as a full disk would): the run ends as a journal failure (exit 8),
not as a destination's, and ``--report`` is still written with the attempt's
figures."""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from replicator.targets.registry import RegistryTarget
from tests.faults.resume_support import MiB, build_big_graph, journal_runs
from tests.integration.cli_helpers import REPLICATOR, CliResult, isolated_env

#: Larger than a new journal with its first run (~90 KiB of WAL), smaller than a copy's.
FILE_SIZE_LIMIT = 128 * 1024


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_journal_failing_mid_run_is_a_journal_failure_with_a_report(
    tmp_path: Path, registry_factory: Callable[..., Any]
) -> None:
    src, dst = registry_factory("open"), registry_factory("open")

    async def build() -> None:
        target = RegistryTarget(src.instance.host, src.instance.options())
        try:
            await build_big_graph(target, "app", layers=2, layer_size=MiB, referrers=24, nested=8)
        finally:
            await target.aclose()

    anyio.run(build)
    journal, report_path = tmp_path / "journal.sqlite", tmp_path / "report.json"
    proc = subprocess.run(
        [
            REPLICATOR,
            "copy",
            "-r",
            "--journal",
            str(journal),
            "--report",
            str(report_path),
            f"{src.instance.host}/app:v1",
            f"{dst.instance.host}/mirror/app:v1",
        ],
        capture_output=True,
        text=True,
        env=isolated_env(tmp_path),
        timeout=300,
        check=False,
        preexec_fn=_limit_file_size,
    )
    result = CliResult(proc.returncode, proc.stdout, proc.stderr)
    assert result.code == 8, result.stderr[-3000:]
    (line,) = result.non_log_stderr_lines()
    assert line.startswith("Error: the journal ") and "failed during the run" in line, line
    assert "destination" not in line and "Traceback" not in result.output
    # The run had begun (its row is there, never marked: the journal could not be written).
    assert [state for _, state in journal_runs(journal)] == ["running"]
    report = json.loads(report_path.read_text())
    assert report["status"] == "failed" and report["exit_code"] == 8
    assert "journal" in report["error"] and "failed during the run" in report["error"]
    assert report["wall_time"] > 0
    assert report["requests"][dst.instance.host]["blob_upload_start"] > 0
    assert report["requests"][src.instance.host]["manifest_get"] > 0
