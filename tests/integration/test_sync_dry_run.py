"""``replicator sync --dry-run`` against counting proxies: nothing written, and an honest plan.

The world has one of everything a plan can say: a new graph (a multi-platform
index with a signature), a new referrer attached to an image synced before, a
destination tag pointing elsewhere (moved, with a backup), a tag up to date, an
unsigned image a promotion gate refuses, and a tag kept by ``overwrite: never``.
Source and destination sit behind counting proxies: the dry run sends no PUT,
POST, PATCH or DELETE to either.  Then the real run does exactly what the plan
said: the same tags, the same outcome per tag, the same counts and bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import ATTESTATION_TYPE, SIGNATURE_TYPE, GraphBuilder
from tests.integration.sync_helpers import (
    WRITING_METHODS,
    digest_at,
    run_sync,
    with_target,
    write_config,
)

#: What the plan and the real run must agree on, per result.
OUTCOME_KEYS = (
    "source",
    "destinations",
    "status",
    "digest",
    "root_new",
    "new_manifests",
    "new_referrers",
    "tags_moved",
    "kept",
    "backups",
    "refused",
)
#: Counters of the run's report the plan must predict.
COUNTERS = (
    "manifests_pushed",
    "manifests_skipped",
    "blobs_uploaded",
    "blobs_mounted",
    "tags_set",
    "referrer_indexes_updated",
)


def _config(path: Path, src: str, dst: str, base: str, tags: str) -> Path:
    return write_config(
        path,
        f"""\
version: 1
jobs:
  - name: promote
    source: {src}/{base}/app
    destinations: [{dst}/{base}/prod]
    tags: {tags}
    require: [{SIGNATURE_TYPE}]
    backup: '{{tag}}-previous'
  - name: keep
    source: {src}/{base}/app
    destinations: [{dst}/{base}/frozen]
    tags: {{include: [v2]}}
    overwrite: never
""",
    )


def _seed(reg: RegistryInstance, base: str) -> dict[str, Any]:
    async def work(t: RegistryTarget) -> dict[str, Any]:
        app = GraphBuilder(t, f"{base}/app")
        v1 = await app.signed_image("v1", tags=["v1"])
        v4 = await app.signed_image("v4", tags=["v4", "v0"])
        await app.image("v3", tags=["v3"])
        await app.image("old", tags=["v0-old"])  # not selected (see the rules)
        for repo in ("prod", "frozen"):
            await GraphBuilder(t, f"{base}/{repo}").image(f"{repo}-old", tags=["v0", "v2"])
        return {"v1": v1, "v4": v4}

    return with_target(reg, work)


def _writes(*proxies: FaultProxy) -> list[str]:
    return [
        f"{r.method} {r.path}"
        for p in proxies
        for r in p.stats().log
        if r.method in WRITING_METHODS
    ]


def test_dry_run_writes_nothing_and_its_plan_is_what_the_run_does(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)
    seeded = _seed(registry_open, base)
    src, dst = fault_proxy(registry_open), fault_proxy(registry_open)
    tags = r"{allow: ['v\d'], deny: ['v5']}"

    # v1 and v4 were promoted before; since then v1 got an attestation.
    earlier = _config(tmp_path / "earlier.yaml", src.host, dst.host, base, "{include: [v1, v4]}")
    assert run_sync("sync", earlier, "--job", "promote", "--no-journal", home=tmp_path).code == 0

    async def attach(t: RegistryTarget) -> None:
        app = GraphBuilder(t, f"{base}/app")
        await app.referrer(seeded["v1"].image, ATTESTATION_TYPE)
        index, _ = await app.multiarch("v2", tags=["v2"])
        await app.referrer(index, SIGNATURE_TYPE)

    with_target(registry_open, attach)
    old_v0 = digest_at(registry_open, f"{base}/prod", "v0")
    config = _config(tmp_path / "sync.yaml", src.host, dst.host, base, tags)

    src.reset()
    dst.reset()
    plan = run_sync("sync", config, "--dry-run", home=tmp_path, report_name="plan.json")
    assert plan.code == 10, plan.cli.stderr[-3000:]  # v3 is unsigned
    assert _writes(src, dst) == []
    assert plan.report["dry_run"] is True
    out = plan.stdout
    assert "Plan (dry run: nothing was written)" in out
    assert "tags selected: v0, v1, v2, v3, v4" in out
    assert "v0-old (matches no allow pattern ('v\\d'))" in out
    assert "would copy v2: new graph, 6 manifests" in out
    assert "would copy v1: 1 new referrer on an existing image" in out
    assert f"would move tag v0 to {seeded['v4'].image.digest}; backup first: v0-previous" in out
    assert "up to date: v4" in out
    assert f"would refuse v3: no referrer of type {SIGNATURE_TYPE}" in out
    assert "would keep" in out and f"{base}/frozen:v2" in out
    assert "Total: 7 manifests to push, 12 blobs to upload" in out
    statuses = [r["status"] for r in plan.results("promote")]
    assert statuses == ["copied", "copied", "copied", "refused", "up-to-date"]
    assert plan.report["bytes_to_move"] > 0
    # Nothing moved.
    assert digest_at(registry_open, f"{base}/prod", "v0") == old_v0
    assert digest_at(registry_open, f"{base}/prod", "v0-previous") is None

    real = run_sync("sync", config, "--no-journal", home=tmp_path, report_name="real.json")
    assert real.code == 10, real.cli.stderr[-3000:]
    # A job whose graph was already there is up to date, even when other jobs
    # wrote to the same destination repository.
    assert f"Up to date: {src.host}/{base}/app:v4 => {dst.host}/{base}/prod:v4" in real.stdout
    assert f"Copied {src.host}/{base}/app:v2 => {dst.host}/{base}/prod:v2 (new graph" in real.stdout
    for job in ("promote", "keep"):
        assert plan.selected(job) == real.selected(job), job
        planned = [{k: r[k] for k in OUTCOME_KEYS} for r in plan.results(job)]
        done = [{k: r[k] for k in OUTCOME_KEYS} for r in real.results(job)]
        assert planned == done, job
    for counter in COUNTERS:
        assert plan.report["run"][counter] == real.report["run"][counter], counter
    assert plan.report["bytes_to_move"] == real.report["run"]["bytes_sent"]
    assert digest_at(registry_open, f"{base}/prod", "v0-previous") == old_v0
    assert digest_at(registry_open, f"{base}/prod", "v0") == seeded["v4"].image.digest

    # After the run, a dry run plans nothing but the refusal and the kept tag.
    src.reset()
    dst.reset()
    after = run_sync("sync", config, "--dry-run", home=tmp_path, report_name="after.json")
    assert after.code == 10
    assert _writes(src, dst) == []
    assert after.report["bytes_to_move"] == 0
    assert after.report["run"]["manifests_pushed"] == 0
    assert "would copy" not in after.stdout and "would move" not in after.stdout
