"""Overwrite policy, backups and promotion gates of ``replicator sync`` on real registries.

Destination tags are set out of band to an old image first; a counting proxy in
front of the destination records every request, in order.

* ``overwrite: never`` leaves a tag pointing elsewhere in place and reports it
  (and still copies the tags that are absent);
* ``if-changed`` moves it, and leaves a tag already right alone (no write);
* ``always`` moves it, and writes it again on a rerun even when it is right;
* ``backup`` tags the old digest before the tag moves, in the same run;
* ``require`` promotes a signed image and refuses an unsigned one in the same
  run (exit 10), naming the missing type, and nothing of the refused graph
  reaches the destination — against a source without and with the referrers API.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.graph.walk import snapshot_graph
from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder
from tests.integration.sync_helpers import (
    WRITING_METHODS,
    digest_at,
    plain_tags,
    run_sync,
    with_target,
    write_config,
)

POLICIES = ("never", "if-changed", "always")


def _seed(reg: RegistryInstance, base: str) -> dict[str, str]:
    """Source v1, v2 (signed); destinations' v1 at an old image."""

    async def work(t: RegistryTarget) -> dict[str, str]:
        src = GraphBuilder(t, f"{base}/src")
        out = {
            "v1": (await src.signed_image("v1", tags=["v1"])).image.digest,
            "v2": (await src.signed_image("v2", tags=["v2"])).image.digest,
        }
        for repo in (*POLICIES, "backup"):
            old = await GraphBuilder(t, f"{base}/{repo}").image("old", tags=["v1"])
            out[f"old {repo}"] = old.digest
        return out

    return with_target(reg, work)


def _policy_config(path: Path, src: str, dst: str, base: str) -> Path:
    jobs = "".join(
        f"""\
  - name: {policy}
    source: {src}/{base}/src
    destinations: [{dst}/{base}/{policy}]
    tags: {{include: [v1, v2]}}
    overwrite: {policy}
"""
        for policy in POLICIES
    )
    return write_config(
        path,
        f"""\
version: 1
jobs:
{jobs}  - name: backup
    source: {src}/{base}/src
    destinations: [{dst}/{base}/backup]
    tags: {{include: [v1]}}
    backup: '{{tag}}-previous'
""",
    )


def _tag_writes(proxy: FaultProxy, repo: str) -> list[str]:
    """The tags written in ``repo``, in order (PUT manifests/<tag>)."""
    prefix = f"/v2/{repo}/manifests/"
    return [
        r.path.removeprefix(prefix)
        for r in proxy.stats().log
        if r.method == "PUT" and r.path.startswith(prefix) and ":" not in r.path[len(prefix) :]
    ]


def test_overwrite_never_if_changed_always_and_backup(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)
    d = _seed(registry_open, base)
    proxy = fault_proxy(registry_open)
    config = _policy_config(tmp_path / "sync.yaml", registry_open.host, proxy.host, base)

    first = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert first.code == 0, first.cli.stderr[-3000:]

    # never: v1 stays at the old image and is reported; v2 (absent) is copied.
    assert digest_at(registry_open, f"{base}/never", "v1") == d["old never"]
    assert digest_at(registry_open, f"{base}/never", "v2") == d["v2"]
    kept = f"{proxy.host}/{base}/never:v1 -> {d['old never']}"
    assert f"Kept {kept} (overwrite: never)" in first.stdout
    assert [r["kept"] for r in first.results("never")] == [[kept], []]
    assert [r["status"] for r in first.results("never")] == ["kept", "copied"]
    # if-changed and always move it.
    for policy in ("if-changed", "always"):
        assert digest_at(registry_open, f"{base}/{policy}", "v1") == d["v1"], policy
    # backup: the old digest kept under v1-previous, written before v1 moved.
    assert digest_at(registry_open, f"{base}/backup", "v1-previous") == d["old backup"]
    assert digest_at(registry_open, f"{base}/backup", "v1") == d["v1"]
    writes = _tag_writes(proxy, f"{base}/backup")
    assert "v1-previous" in writes and "v1" in writes
    assert writes.index("v1-previous") < writes.index("v1"), writes
    assert first.results("backup")[0]["backups"], first.results("backup")
    assert "Backed up" in first.stdout

    # A rerun: if-changed writes nothing, always writes its tags again, never keeps.
    proxy.reset()
    again = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert again.code == 0, again.cli.stderr[-3000:]
    assert _tag_writes(proxy, f"{base}/if-changed") == []
    assert sorted(_tag_writes(proxy, f"{base}/always")) == ["v1", "v2"]
    assert _tag_writes(proxy, f"{base}/never") == []
    assert _tag_writes(proxy, f"{base}/backup") == []
    assert digest_at(registry_open, f"{base}/never", "v1") == d["old never"]
    stats = proxy.stats()
    others = [
        r.path
        for r in stats.log
        if r.method in WRITING_METHODS and f"/{base}/always/" not in r.path
    ]
    assert others == [], others


@pytest.mark.parametrize("variant", ["open", "referrers"])
def test_require_refuses_an_unsigned_image_and_promotes_a_signed_one(
    variant: str,
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)
    source = registry_open if variant == "open" else registry_referrers

    async def seed(t: RegistryTarget) -> dict[str, Any]:
        b = GraphBuilder(t, f"{base}/src")
        signed = await b.signed_image("signed", tags=["signed"])
        unsigned = await b.image("unsigned", tags=["unsigned"])
        # An SBOM is not a signature: the gate needs the signature type.
        sbom_only = await b.image("sbom-only", tags=["sbom-only"])
        await b.referrer(sbom_only, SBOM_TYPE)
        graph = await snapshot_graph(t, f"{base}/src", "unsigned")
        return {
            "signed": signed.image.digest,
            "refused": {unsigned.digest, sbom_only.digest, *graph.blobs},
        }

    seeded = with_target(source, seed)
    proxy = fault_proxy(registry_open)
    config = write_config(
        tmp_path / "sync.yaml",
        f"""\
version: 1
jobs:
  - name: promote
    source: {source.host}/{base}/src
    destinations: [{proxy.host}/{base}/prod]
    tags: {{include: [signed, unsigned, sbom-only]}}
    require: [{SIGNATURE_TYPE}]
""",
    )

    plan = run_sync("sync", config, "--dry-run", home=tmp_path, report_name="plan.json")
    assert plan.code == 10, plan.cli.stderr[-2000:]
    assert f"would refuse unsigned: no referrer of type {SIGNATURE_TYPE}" in plan.stdout
    assert "would copy signed: new graph" in plan.stdout

    run = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert run.code == 10, run.cli.stderr[-2000:]
    states = {r["source"].rsplit(":", 1)[1]: r for r in run.results("promote")}
    assert states["signed"]["status"] == "copied"
    for tag in ("unsigned", "sbom-only"):
        assert states[tag]["status"] == "refused"
        assert states[tag]["refused"] == [SIGNATURE_TYPE]
        assert f"Refused {source.host}/{base}/src:{tag}: no referrer of type" in run.stdout
    assert plain_tags(registry_open, f"{base}/prod") == {"signed"}
    assert digest_at(registry_open, f"{base}/prod", "signed") == seeded["signed"]
    # Nothing of a refused graph was asked about or written at the destination.
    touched = [
        r.path
        for r in proxy.stats().log
        if any(x in r.path for x in seeded["refused"])
        or r.path.endswith(("/manifests/unsigned", "/manifests/sbom-only"))
    ]
    assert touched == [], touched

    # verify does not count a refused tag as a difference.
    audit = run_sync("verify", config, home=tmp_path)
    assert audit.code == 0, audit.stdout + audit.cli.stderr[-2000:]
    assert "not promoted (gate: no referrer of type" in audit.stdout
