"""A sync job whose source cannot be listed fails alone; the others run; ``--report`` is written.

Found by the randomized fault suite (``test_fault_schedules.py``, seeds 1013,
1045 and 1053: sync schedules whose source's tag list came back broken):
``expand()`` caught a job's :class:`~replicator.errors.ReplicatorError` to
record it as that job's error, but the tag listing ran in a nested task group,
which wrapped the error in an ``ExceptionGroup`` that the ``except`` did not
match.  The group left ``run_sync``: no job ran (not even the ones that listed
fine), no ``--report`` was written, and the error line lacked its job's name.
Fixed in ``sync/expand.py`` (each repository's selection catches its own error).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from replicator.errors import EXIT_REGISTRY
from replicator.targets.registry import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import GraphBuilder


def test_one_job_that_cannot_be_listed_fails_alone_and_the_report_is_written(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    good, bad = f"{unique_repo}/good", f"{unique_repo}/bad"

    async def build() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            await GraphBuilder(t, good).image("good", tags=["v1"])
            await GraphBuilder(t, bad).image("bad", tags=["v1"])

    asyncio.run(build())
    proxy = fault_proxy(registry_open)
    proxy.flip("GET", f"/v2/{bad}/tags/list", 0, times=None)  # not JSON any more
    config = tmp_path / "sync.yaml"
    config.write_text(
        "version: 1\njobs:\n"
        f"  - name: good\n    source: {proxy.host}/{good}\n"
        f"    destinations: [{registry_open.host}/{good}-copy]\n"
        f"  - name: bad\n    source: {proxy.host}/{bad}\n"
        f"    destinations: [{registry_open.host}/{bad}-copy]\n"
    )
    report = tmp_path / "report.json"
    result = run_cli(
        "sync", str(config), "--no-journal", "--report", str(report), home=tmp_path / "home"
    )
    assert "Traceback" not in result.output
    assert result.code == EXIT_REGISTRY, result.stderr
    errors = [line for line in result.non_log_stderr_lines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: job bad: "), errors
    assert f"Copied {proxy.host}/{good}:v1" in result.stdout
    written = json.loads(report.read_text())
    assert written["exit_code"] == EXIT_REGISTRY
    assert "tag list is not JSON" in written["jobs"]["bad"]["error"]
