"""The journal's run key of ``replicator sync``: the config's content, not its text.

A sync fails part-way (the destination refuses one tag).  A rerun of the same
config resumes that run — also after an edit that changes nothing a run does
(comments, key order, quoting) — and a config whose job changes starts a new run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder
from tests.integration.sync_helpers import digest_at, run_sync, with_target, write_config


def _config(src: str, dst: str, base: str, *, edit: str = "", rules: str = "") -> str:
    if edit == "cosmetic":
        return f"""\
# the same job, written differently
jobs:
  - destinations: ["{dst}/{base}/prod"]   # key order, quoting, comments
    source: '{src}/{base}/app'
    name: "promote"
version: 1
"""
    return f"""\
version: 1
jobs:
  - name: promote
    source: {src}/{base}/app
    destinations: [{dst}/{base}/prod]
{rules}"""


def test_rerun_resumes_and_an_edited_job_starts_a_new_run(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)

    async def seed(t: RegistryTarget) -> None:
        b = GraphBuilder(t, f"{base}/app")
        for tag in ("v1", "v2"):
            await b.signed_image(tag, tags=[tag])

    with_target(registry_open, seed)
    proxy = fault_proxy(registry_open)
    refuse = proxy.status("PUT", r"/prod/manifests/v2$", 403, times=None)
    journal = tmp_path / "journal.sqlite"
    config = tmp_path / "sync.yaml"

    def attempt(text: str) -> dict[str, Any]:
        write_config(config, text)
        run = run_sync("sync", config, "--journal", str(journal), home=tmp_path)
        return {"code": run.code, **run.report["run"]["run"], "stderr": run.cli.stderr}

    first = attempt(_config(registry_open.host, proxy.host, base))
    assert first["code"] == 4, first["stderr"][-2000:]
    assert first["resumed"] is False and refuse.fired >= 1
    assert digest_at(registry_open, f"{base}/prod", "v1") is not None

    # Same content, other text: the same run, resumed.
    cosmetic = attempt(_config(registry_open.host, proxy.host, base, edit="cosmetic"))
    assert cosmetic["code"] == 4
    assert cosmetic["id"] == first["id"] and cosmetic["resumed"] is True
    assert "Resuming run" in cosmetic["stderr"]

    # An edited job is another run, even with the same tags selected.
    proxy.clear()
    edited = attempt(
        _config(registry_open.host, proxy.host, base, rules="    tags: {deny: ['nothing']}\n")
    )
    assert edited["code"] == 0, edited["stderr"][-2000:]
    assert edited["id"] != first["id"] and edited["resumed"] is False
    assert "Resuming run" not in edited["stderr"]
    assert digest_at(registry_open, f"{base}/prod", "v2") is not None

    # The first config again: its unfinished run is resumed and completes.
    again = attempt(_config(registry_open.host, proxy.host, base))
    assert again["code"] == 0, again["stderr"][-2000:]
    assert again["id"] == first["id"] and again["resumed"] is True
