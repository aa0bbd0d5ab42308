"""``replicator sync`` and ``verify`` of a config file against real registries: the basics.

A config with two jobs (a repository with tag rules, a catalog with globs), run
once, again (up to date), as a dry run (nothing written), and audited.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import SIGNATURE_TYPE, GraphBuilder, assert_same_graph


def _seed(reg: RegistryInstance, base: str) -> dict[str, str]:
    async def main() -> dict[str, str]:
        async with RegistryTarget(reg.host, reg.options()) as t:
            api = GraphBuilder(t, f"{base}/team/api")
            out = {}
            for tag in ("v1.0.0", "v1.2.0", "v1.3.0-rc1", "latest"):
                out[tag] = (await api.signed_image(tag, tags=[tag])).image.digest
            out["unsigned"] = (await api.image("unsigned", tags=["v1.4.0"])).digest
            for repo in ("team/web", "team/legacy-x"):
                await GraphBuilder(t, f"{base}/{repo}").image(repo, tags=["v2"])
            return out

    return asyncio.run(main())


def _config(path: Path, src: str, dst: str, base: str) -> Path:
    path.write_text(
        f"""\
version: 1
defaults:
  referrers: true
jobs:
  - name: promote-api
    source: {src}/{base}/team/api
    destinations: [{dst}/{base}/prod/api]
    tags:
      allow: ['v\\d+\\.\\d+\\.\\d+']
      semver: '>=1.1.0'
    require: [{SIGNATURE_TYPE}]
  - name: mirror-team
    source: {{registry: {src}, repositories: ["{base}/team/*", "!{base}/team/legacy-*", "!{base}/team/api"]}}
    destinations: ["{dst}/mirror/{{repository}}"]
"""
    )
    return path


def test_sync_runs_the_config_then_is_up_to_date_and_verify_agrees(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    base = str(unique_repo).replace("t/", "s-")
    digests = _seed(registry_open, base)
    host = registry_open.host
    config = _config(tmp_path / "sync.yaml", host, host, base)
    journal = tmp_path / "journal.sqlite"

    plan = run_cli(
        "sync", str(config), "--dry-run", "--report", str(tmp_path / "plan.json"), home=tmp_path
    )
    assert plan.code == 10, plan.stderr  # v1.4.0 is unsigned: the gate would refuse it
    assert "Plan (dry run: nothing was written)" in plan.stdout
    assert "would copy v1.2.0: new graph" in plan.stdout
    assert "would refuse v1.4.0" in plan.stdout
    assert "v1.3.0-rc1 (" in plan.stdout and "v1.0.0 (outside" in plan.stdout

    first = run_cli("sync", str(config), "--journal", str(journal), home=tmp_path)
    assert first.code == 10, first.stderr
    assert f"Copied {host}/{base}/team/api:v1.2.0 => {host}/{base}/prod/api:v1.2.0" in first.stdout
    assert "Refused" in first.stdout and "v1.4.0" in first.stdout
    assert f"{base}/team/web:v2" in first.stdout and "legacy" not in first.stdout

    async def check() -> None:
        async with RegistryTarget(host, registry_open.options()) as t:
            await assert_same_graph(
                t, f"{base}/team/api", "v1.2.0", t, f"{base}/prod/api", "v1.2.0"
            )
            tags = await t.tags(f"{base}/prod/api")
            assert "v1.4.0" not in tags and "v1.0.0" not in tags
            assert (await t.resolve(f"{base}/prod/api", "v1.2.0")).digest == digests["v1.2.0"]

    asyncio.run(check())

    again = run_cli(
        "sync",
        str(config),
        "--journal",
        str(journal),
        "--report",
        str(tmp_path / "r.json"),
        home=tmp_path,
    )
    assert again.code == 10, again.stderr
    assert "Up to date:" in again.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["manifests_pushed"] == 0
    assert set(report["jobs"]) == {"promote-api", "mirror-team"}

    audit = run_cli("verify", str(config), "--deep", home=tmp_path)
    assert audit.code == 0, audit.stdout + audit.stderr
    assert "Verified:" in audit.stdout
