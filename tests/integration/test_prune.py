"""Deletion propagation (``prune``) of ``replicator sync`` against real registries.

The destination sits behind the counting proxy, so what a run sends there is
known exactly (a dry run sends no ``DELETE``, no ``PUT``).  Each test changes
the source between runs the way people do — a tag deleted, a signed image
deleted with its graph, a tag renamed — and checks that the destination loses
exactly what left the source inside the job's selection, keeps everything
else, and is left without a referrer graph or fallback-index entry pointing at
a deleted manifest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from replicator.artifacts.delete import delete_graph, remove_tag
from replicator.errors import NotFoundError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import parse_manifest
from replicator.oci.reference import is_referrers_tag
from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, run_cli
from tests.integration.graphs import SIGNATURE_TYPE, GraphBuilder, SignedImage

T = TypeVar("T")

WRITES = ("DELETE", "PUT", "POST", "PATCH")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def target(reg: Any) -> RegistryTarget:
    return RegistryTarget(reg.host, reg.options())


def tags_of(reg: Any, repo: str) -> dict[str, str]:
    """Every tag of ``repo`` (fallback tags included) and the digest it points at."""

    async def main() -> dict[str, str]:
        async with target(reg) as t:
            try:
                names = await t.tags(repo)
            except NotFoundError:
                return {}
            return {n: (await t.resolve(repo, n)).digest for n in names}

    return run(main)


def present(reg: Any, repo: str, digests: list[str]) -> set[str]:
    """The digests of ``digests`` still in ``repo``."""

    async def main() -> set[str]:
        async with target(reg) as t:
            return {
                d
                for d in digests
                if await t.manifest_exists(repo, Descriptor(mt.OCI_MANIFEST, d, 0))
            }

    return run(main)


def dangling_listings(reg: Any, repo: str) -> list[str]:
    """Fallback-index entries of ``repo`` that name a manifest the registry lacks."""

    async def main() -> list[str]:
        out = []
        async with target(reg) as t:
            for name in await t.tags(repo):
                if not is_referrers_tag(name):
                    continue
                desc, raw = await t.fetch_manifest(repo, name)
                for entry in parse_manifest(raw, desc.media_type).children():
                    if not await t.manifest_exists(repo, entry):
                        out.append(f"{name} -> {entry.digest}")
        return out

    return run(main)


def write_config(path: Path, source: str, dest: str, *, max_: int = 5, extra: str = "") -> Path:
    path.write_text(
        f"""\
version: 1
jobs:
  - name: releases
    source: {source}
    destinations: [{dest}]
    tags:
      allow: ['v\\d+\\.\\d+\\.\\d+']{extra}
    prune: {{enabled: true, max: {max_}}}
"""
    )
    return path


def sync(config: Path, tmp: Path, *args: str) -> tuple[CliResult, dict[str, Any]]:
    report = tmp / f"report-{len(list(tmp.glob('report-*')))}.json"
    result = run_cli("sync", str(config), "--no-journal", "--report", str(report), *args, home=tmp)
    data = json.loads(report.read_text()) if report.exists() else {}
    return result, data


def writes(proxy: FaultProxy) -> dict[str, int]:
    stats = proxy.stats()
    return {m: stats.requests(method=m) for m in WRITES if stats.requests(method=m)}


@pytest.fixture(params=["registry_open", "registry_referrers"])
def registry(request: pytest.FixtureRequest) -> RegistryInstance:
    """Fallback tags (distribution 2.8) and the referrers API (shim)."""
    instance: RegistryInstance = request.getfixturevalue(request.param)
    return instance


def test_prune_deletes_what_left_the_source_inside_the_selection_and_nothing_else(
    registry: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    src_repo, dst_repo = f"{unique_repo}/src", f"{unique_repo}/dst"
    proxy = fault_proxy(registry)
    config = write_config(
        tmp_path / "sync.yaml", f"{registry.host}/{src_repo}", f"{proxy.host}/{dst_repo}"
    )

    async def seed() -> dict[str, SignedImage]:
        async with target(registry) as t:
            src = GraphBuilder(t, src_repo)
            out = {
                tag: await src.signed_image(tag, tags=[tag])
                for tag in ("v1.0.0", "v1.1.0", "v1.2.0")
            }
            await src.image("dev", tags=["dev-1"])
            return out

    graphs = run(seed)
    first, _ = sync(config, tmp_path)
    assert first.code == 0, first.output
    assert "Prune" not in first.stdout  # nothing left the source yet

    async def change() -> SignedImage:
        async with target(registry) as t:
            dst = GraphBuilder(t, dst_repo)
            # At the destination: a tag outside the selection on a pruned tag's manifest,
            # tags outside the selection, and one inside it the source never had.
            v100 = graphs["v1.0.0"].image
            _, raw = await t.fetch_manifest(dst_repo, v100)
            await t.tag(dst_repo, v100, raw, "hotfix")
            await dst.image("mine", tags=["keep-me", "dev-2"])
            stray = await dst.signed_image("stray", tags=["v9.9.9"])
            # At the source: a tag deleted, a signed image deleted with its graph, a rename.
            await remove_tag(t, src_repo, "v1.0.0")
            await delete_graph(t, src_repo, graphs["v1.1.0"].image)
            v120 = graphs["v1.2.0"].image
            _, raw = await t.fetch_manifest(src_repo, v120)
            await t.tag(src_repo, v120, raw, "v1.3.0")
            await remove_tag(t, src_repo, "v1.2.0")
            return stray

    stray = run(change)
    before = tags_of(registry, dst_repo)

    proxy.reset()
    plan, plan_report = sync(config, tmp_path, "--dry-run")
    assert plan.code == 0, plan.output
    assert writes(proxy) == {}, "a dry run writes nothing"
    assert tags_of(registry, dst_repo) == before
    dest = f"{proxy.host}/{dst_repo}"
    assert f"would prune tag v1.1.0 at {dest} ({graphs['v1.1.0'].image.digest})" in plan.stdout
    assert (
        f"would prune tag v1.2.0 at {dest} (its manifest is still needed by tag v1.3.0)"
        in plan.stdout
    )
    assert "(its manifest is still needed by tag hotfix)" in plan.stdout
    assert (
        f"would delete manifest {graphs['v1.1.0'].sbom_signature.digest} at {dest}" in plan.stdout
    )
    planned = plan_report["jobs"]["releases"]["prune"]
    assert planned["dry_run"] and planned["tags_pruned"] == 4
    assert planned["manifests_deleted"] == 8  # v1.1.0's and v9.9.9's graphs, 4 manifests each

    done, report = sync(config, tmp_path)
    assert done.code == 0, done.output
    section = report["jobs"]["releases"]["prune"]
    (where,) = section["destinations"]
    assert {t["tag"] for t in where["tags"]} == {"v1.0.0", "v1.1.0", "v1.2.0", "v9.9.9"}
    assert section["tags_pruned"] == 4 and section["manifests_deleted"] == 8
    assert "Prune: 4 tags pruned, 8 manifests deleted (prune.max 5)" in done.stdout

    after = tags_of(registry, dst_repo)
    ordinary = {t for t in after if not is_referrers_tag(t)}
    assert ordinary == {"v1.3.0", "hotfix", "keep-me", "dev-2"}
    assert after["hotfix"] == graphs["v1.0.0"].image.digest
    assert after["v1.3.0"] == graphs["v1.2.0"].image.digest
    gone = [*_digests(graphs["v1.1.0"]), *_digests(stray)]
    assert present(registry, dst_repo, gone) == set()
    kept = [*_digests(graphs["v1.0.0"]), *_digests(graphs["v1.2.0"])]
    assert present(registry, dst_repo, kept) == set(kept)  # their referrers stay with them
    assert dangling_listings(registry, dst_repo) == []

    again, report = sync(config, tmp_path)
    assert again.code == 0, again.output
    assert report["jobs"]["releases"]["prune"]["tags_pruned"] == 0
    assert tags_of(registry, dst_repo) == after


def _digests(graph: SignedImage) -> list[str]:
    return [
        graph.image.digest,
        graph.signature.digest,
        graph.sbom.digest,
        graph.sbom_signature.digest,
    ]


def test_prune_above_max_is_refused_whole_and_deletes_nothing(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    src_repo, dst_repo = f"{unique_repo}/src", f"{unique_repo}/dst"
    proxy = fault_proxy(registry_open)
    config = write_config(
        tmp_path / "sync.yaml",
        f"{registry_open.host}/{src_repo}",
        f"{proxy.host}/{dst_repo}",
        max_=2,
    )

    async def seed() -> None:
        async with target(registry_open) as t:
            src = GraphBuilder(t, src_repo)
            for tag in ("v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0"):
                await src.signed_image(tag, tags=[tag])

    run(seed)
    first, _ = sync(config, tmp_path)
    assert first.code == 0, first.output

    async def drop() -> None:
        async with target(registry_open) as t:
            for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
                await remove_tag(t, src_repo, tag)

    run(drop)
    before = tags_of(registry_open, dst_repo)
    proxy.reset()
    refused, report = sync(config, tmp_path)
    assert refused.code == 10, refused.output
    assert "Prune refused: 3 tags to prune, more than prune.max 2: nothing pruned" in refused.stdout
    assert "v1.0.0, v1.1.0, v1.2.0" in refused.stdout
    assert writes(proxy) == {}
    assert tags_of(registry_open, dst_repo) == before
    section = report["jobs"]["releases"]["prune"]
    assert section["refused"] and section["tags_pruned"] == 0
    assert report["exit_code"] == 10


def test_a_pruned_index_goes_before_its_children_and_a_child_another_tag_needs_stays(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    src_repo, dst_repo = f"{unique_repo}/src", f"{unique_repo}/dst"
    proxy = fault_proxy(registry_open)
    config = write_config(
        tmp_path / "sync.yaml", f"{registry_open.host}/{src_repo}", f"{proxy.host}/{dst_repo}"
    )

    async def seed() -> tuple[Descriptor, list[Descriptor], Descriptor]:
        async with target(registry_open) as t:
            src = GraphBuilder(t, src_repo)
            index, images = await src.multiarch("app", tags=["v2.0.0"], attestations=False)
            signature = await src.referrer(images[0], SIGNATURE_TYPE)
            await src.image("other", tags=["v3.0.0"])
            return index, images, signature

    index, (amd64, arm64), signature = run(seed)
    first, _ = sync(config, tmp_path)
    assert first.code == 0, first.output

    async def change() -> None:
        async with target(registry_open) as t:
            _, raw = await t.fetch_manifest(dst_repo, arm64)
            await t.tag(dst_repo, arm64, raw, "arm64-pinned")  # outside the selection
            await remove_tag(t, src_repo, "v2.0.0")

    run(change)
    proxy.reset()
    done, report = sync(config, tmp_path)
    assert done.code == 0, done.output
    deleted = [
        r.path.rsplit("/", 1)[-1] for r in proxy.stats().records(method="DELETE", kind="manifest")
    ]
    # The index first, then its amd64 child after that child's signature; arm64 stays.
    assert deleted.index(index.digest) < deleted.index(amd64.digest)
    assert deleted.index(signature.digest) < deleted.index(amd64.digest)
    assert arm64.digest not in deleted
    assert present(registry_open, dst_repo, [index.digest, amd64.digest, signature.digest]) == set()
    assert present(registry_open, dst_repo, [arm64.digest]) == {arm64.digest}
    tags = {t for t in tags_of(registry_open, dst_repo) if not is_referrers_tag(t)}
    assert tags == {"v3.0.0", "arm64-pinned"}
    assert dangling_listings(registry_open, dst_repo) == []
    assert report["jobs"]["releases"]["prune"]["manifests_deleted"] == 3


def test_latest_n_prunes_only_what_is_gone_at_the_source_and_a_failed_copy_prunes_nothing(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    src_repo, dst_repo = f"{unique_repo}/src", f"{unique_repo}/dst"
    host = registry_open.host
    config = write_config(
        tmp_path / "sync.yaml",
        f"{host}/{src_repo}",
        f"{host}/{dst_repo}",
        extra="\n      latest: 2",
    )

    async def push(*tags: str) -> None:
        async with target(registry_open) as t:
            for tag in tags:
                await GraphBuilder(t, src_repo).image(tag, tags=[tag])

    run(lambda: push("v1.0.0", "v2.0.0", "v3.0.0"))
    assert sync(config, tmp_path)[0].code == 0
    run(lambda: push("v4.0.0"))  # v2.0.0 drops out of the newest two but is still there
    result, report = sync(config, tmp_path)
    assert result.code == 0, result.output
    assert report["jobs"]["releases"]["prune"]["tags_pruned"] == 0
    assert {"v2.0.0", "v3.0.0", "v4.0.0"} <= set(tags_of(registry_open, dst_repo))

    async def drop() -> None:
        async with target(registry_open) as t:
            await remove_tag(t, src_repo, "v2.0.0")

    run(drop)
    # A literal tag the source lacks makes that copy fail: nothing is pruned there.
    broken = write_config(
        tmp_path / "broken.yaml",
        f"{host}/{src_repo}",
        f"{host}/{dst_repo}",
        extra="\n      latest: 2\n      include: [v0.0.1]",
    )
    failed, report = sync(broken, tmp_path)
    assert failed.code == 3, failed.output
    assert "Prune skipped:" in failed.stdout and "v0.0.1 failed" in failed.stdout
    assert "v2.0.0" in tags_of(registry_open, dst_repo)

    result, report = sync(config, tmp_path)
    assert result.code == 0, result.output
    (where,) = report["jobs"]["releases"]["prune"]["destinations"]
    assert [t["tag"] for t in where["tags"]] == ["v2.0.0"]
    assert "v2.0.0" not in tags_of(registry_open, dst_repo)
