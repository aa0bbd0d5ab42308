"""Referrers in ``replicator sync``: new ones on old images, depth and type rules.

An image synced once later gets an attestation, and the attestation a
signature (a referrer two levels down).  The next sync picks them up, as far as
each job's ``referrers`` rules reach: everything, direct referrers only
(``depth: 1``), or signatures only (``artifact-types``).  Run against a
destination without and with the referrers API; ``verify`` agrees with each
job's rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from replicator.graph.filters import GraphFilter
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import (
    ATTESTATION_TYPE,
    SIGNATURE_TYPE,
    GraphBuilder,
    SignedImage,
    assert_same_graph,
)
from tests.integration.sync_helpers import run_sync, with_target, write_config

#: Job name -> (referrers rule in the config, the engine filter it means).
RULES: dict[str, tuple[str, GraphFilter]] = {
    "every": ("true", GraphFilter()),
    "direct": ("{depth: 1}", GraphFilter(max_depth=1)),
    "signatures": (
        f"{{artifact-types: ['{SIGNATURE_TYPE}']}}",
        GraphFilter(include_types=(SIGNATURE_TYPE,)),
    ),
}


def _config(path: Path, src: str, dst: str, base: str) -> Path:
    jobs = "".join(
        f"""\
  - name: {name}
    source: {src}/{base}/{name}
    destinations: [{dst}/{base}/copy/{name}]
    tags: {{include: [v1]}}
    referrers: {rule}
"""
        for name, (rule, _) in RULES.items()
    )
    return write_config(path, f"version: 1\njobs:\n{jobs}")


@pytest.mark.parametrize("variant", ["open", "referrers"])
def test_new_referrers_on_an_old_image_are_picked_up_by_the_next_sync(
    variant: str,
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)
    dst = registry_open if variant == "open" else registry_referrers

    async def seed(t: RegistryTarget) -> dict[str, SignedImage]:
        return {
            name: await GraphBuilder(t, f"{base}/{name}").signed_image(name, tags=["v1"])
            for name in RULES
        }

    images = with_target(registry_open, seed)
    config = _config(tmp_path / "sync.yaml", registry_open.host, dst.host, base)
    first = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert first.code == 0, first.cli.stderr[-3000:]
    assert [r["new_referrers"] for r in first.results("every")] == [3]
    assert [r["new_referrers"] for r in first.results("direct")] == [2]
    assert [r["new_referrers"] for r in first.results("signatures")] == [1]

    async def attach(t: RegistryTarget) -> None:
        for name, signed in images.items():
            b = GraphBuilder(t, f"{base}/{name}")
            attestation = await b.referrer(signed.image, ATTESTATION_TYPE)
            await b.referrer(attestation, SIGNATURE_TYPE)

    with_target(registry_open, attach)

    plan = run_sync("sync", config, "--dry-run", home=tmp_path, report_name="plan.json")
    assert plan.code == 0, plan.cli.stderr[-3000:]
    assert "would copy v1: 2 new referrers on an existing image" in plan.stdout
    assert "would copy v1: 1 new referrer on an existing image" in plan.stdout
    assert "up to date: v1" in plan.stdout  # the signatures-only job

    second = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert second.code == 0, second.cli.stderr[-3000:]
    news = {name: [r["new_referrers"] for r in second.results(name)] for name in RULES}
    assert news == {"every": [2], "direct": [1], "signatures": [0]}
    assert f"{base}/copy/every:v1 (2 new referrers on an existing image)" in second.stdout
    assert f"Up to date: {registry_open.host}/{base}/signatures:v1" in second.stdout

    async def compare() -> None:
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as s,
            RegistryTarget(dst.host, dst.options()) as d,
        ):
            for name, (_, flt) in RULES.items():
                snap = await assert_same_graph(
                    s, f"{base}/{name}", "v1", d, f"{base}/copy/{name}", "v1", flt
                )
                everything = await assert_same_graph(
                    s, f"{base}/{name}", "v1", s, f"{base}/{name}", "v1"
                )
                if name != "every":  # the rules left something out, and only that
                    assert set(snap.manifests) < set(everything.manifests)
                    with pytest.raises(AssertionError):
                        await assert_same_graph(
                            s, f"{base}/{name}", "v1", d, f"{base}/copy/{name}", "v1"
                        )

    anyio.run(compare)

    audit = run_sync("verify", config, home=tmp_path)
    assert audit.code == 0, audit.stdout + audit.cli.stderr[-2000:]


def test_jobs_sharing_a_source_each_get_their_own_referrer_rules(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """One run, one source tag, three jobs: no referrers, direct ones, all of them."""
    base = str(unique_repo)

    async def seed(t: RegistryTarget) -> SignedImage:
        return await GraphBuilder(t, f"{base}/app").signed_image("app", tags=["v1"])

    signed = with_target(registry_open, seed)
    host = registry_open.host
    rules = {"bare": "false", "direct": "{depth: 1}", "every": "true"}
    config = write_config(
        tmp_path / "sync.yaml",
        "version: 1\njobs:\n"
        + "".join(
            f"  - name: {name}\n    source: {host}/{base}/app\n"
            f"    destinations: [{host}/{base}/{name}]\n    tags: {{include: [v1]}}\n"
            f"    referrers: {rule}\n"
            for name, rule in rules.items()
        ),
    )
    run = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert run.code == 0, run.cli.stderr[-3000:]
    news = {name: [r["new_referrers"] for r in run.results(name)] for name in rules}
    assert news == {"bare": [0], "direct": [2], "every": [3]}

    async def referrers(t: RegistryTarget) -> dict[str, set[str]]:
        out = {}
        for name in rules:
            direct = await t.referrers(f"{base}/{name}", signed.image)
            deeper = await t.referrers(f"{base}/{name}", signed.sbom)
            out[name] = {d.digest for d in direct} | {d.digest for d in deeper}
        return out

    found = with_target(registry_open, referrers)
    assert found["bare"] == set()
    assert found["direct"] == {signed.signature.digest, signed.sbom.digest}
    assert found["every"] == {
        signed.signature.digest,
        signed.sbom.digest,
        signed.sbom_signature.digest,
    }
    assert run_sync("verify", config, home=tmp_path).code == 0
