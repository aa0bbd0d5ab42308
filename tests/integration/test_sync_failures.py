"""One job's failure is that job's: the other jobs of a ``sync`` still run.

Against the token registry as a user who may pull ``lim/`` repositories but
not list the catalog: a catalog job is refused (authentication, exit 4), a job
whose repository does not exist cannot be listed (not found), a job including
a tag the source lacks fails that tag — and a good job in the same config is
copied.  The exit code is the most severe failure's; ``sync --dry-run`` and
``verify`` report the same failures and still plan or check the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder
from tests.integration.sync_helpers import digest_at, run_sync, with_target, write_config


def test_a_failing_job_does_not_stop_the_others(
    registry_token: RegistryInstance,
    registry_open: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lim = str(unique_repo("lim"))
    dst = str(unique_repo)

    async def seed(t: RegistryTarget) -> str:
        return (await GraphBuilder(t, f"{lim}/app").signed_image("app", tags=["v1"])).image.digest

    digest = with_target(registry_token, seed)
    monkeypatch.setenv("LIMITED_PASSWORD", registry_token.users["limited"])
    src, out = registry_token.host, registry_open.host
    config = write_config(
        tmp_path / "sync.yaml",
        f"""\
version: 1
registries:
  {src}:
    credentials: {{username: limited, password-env: LIMITED_PASSWORD}}
jobs:
  - name: catalog
    source: {{registry: {src}, repositories: ["{lim}/**"]}}
    destinations: ["{out}/{dst}/mirror/{{repository}}"]
  - name: no-such-repository
    source: {src}/{lim}/nothere
    destinations: [{out}/{dst}/nothere]
  - name: good
    source: {src}/{lim}/app
    destinations: [{out}/{dst}/app]
  - name: missing-tag
    source: {src}/{lim}/app
    destinations: [{out}/{dst}/other]
    tags: {{include: [v1, v9]}}
""",
    )

    plan = run_sync("sync", config, "--dry-run", home=tmp_path, report_name="plan.json")
    run = run_sync("sync", config, "--no-journal", home=tmp_path)
    for result in (plan, run):
        assert result.code == 4, result.cli.output[-3000:]
        jobs = result.report["jobs"]
        assert jobs["catalog"]["error"] is not None
        assert "not found" in jobs["no-such-repository"]["error"]
        assert [r["status"] for r in jobs["good"]["results"]] == ["copied"]
        assert [r["status"] for r in jobs["missing-tag"]["results"]] == ["copied", "failed"]
        stderr = "\n".join(result.cli.non_log_stderr_lines())
        assert "Error: job catalog:" in stderr and "Error: job no-such-repository:" in stderr
    assert "would copy v1: new graph" in plan.stdout
    assert "cannot copy v9:" in plan.stdout
    assert "Job no-such-repository\n  Failed: " in run.stdout
    assert f"Failed {src}/{lim}/app:v9:" in run.stdout
    assert digest_at(registry_open, f"{dst}/app", "v1") == digest
    assert digest_at(registry_open, f"{dst}/other", "v1") == digest

    audit = run_sync("verify", config, home=tmp_path)
    assert audit.code == 4, audit.cli.output[-3000:]
    assert f"cannot check {src}/{lim}/app:v9:" in audit.stdout
    assert "cannot check job catalog:" in audit.stdout
    assert "Verify incomplete: 3 tags or jobs could not be checked" in audit.stdout
    assert "difference" not in audit.stdout  # what could be checked is complete
