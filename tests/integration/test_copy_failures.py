"""Failures mid-graph never leave a destination tag pointing at an incomplete graph."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from replicator.engine.copier import (
    CopyEngine,
    CopyJob,
    CopyOptions,
    Destination,
    Endpoint,
    raise_for_report,
)
from replicator.errors import IncompleteCopyError, NotFoundError
from replicator.graph.filters import GraphFilter
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import referrers_tag
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RetryPolicy
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder, SignedImage

FAST_RETRY = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)


def _layer_of(raw: bytes) -> str:
    import json

    doc = json.loads(raw)
    digest: str = doc["layers"][-1]["digest"]
    return digest


@pytest.mark.parametrize("failing", ["image-layer", "sbom-signature-layer"])
@pytest.mark.parametrize("keep_going", [False, True])
def test_upload_failure_leaves_new_tag_absent_and_old_tag_unchanged(
    registry_open: RegistryInstance,
    fault_proxy: Any,
    unique_repo: Any,
    failing: str,
    keep_going: bool,
) -> None:
    dst_repo = f"{unique_repo}-dst"

    async def main() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            g = GraphBuilder(reg, unique_repo)
            old = await g.image("old", tags=["old"])
            signed: SignedImage = await g.signed_image("new", tags=["new"])
            # the destination's v1 currently points at the old image
            await GraphBuilder(reg, dst_repo).image("dst-old", tags=["v1"])
            before = (await reg.resolve(dst_repo, "v1")).digest
            assert before != signed.image.digest and old.digest
            victim_manifest: Descriptor = (
                signed.image if failing == "image-layer" else signed.sbom_signature
            )
            _, raw = await reg.fetch_manifest(unique_repo, victim_manifest)
            victim = _layer_of(raw).split(":", 1)[1]

        proxy = fault_proxy(registry_open)
        proxy.status("PUT", rf"/blobs/uploads/.*digest=sha256(:|%3A){victim}", 500, times=None)
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(proxy.host, registry_open.options(retry=FAST_RETRY)) as dst,
        ):
            job = CopyJob(
                Endpoint(src, src.display, unique_repo),
                "new",
                (Destination(Endpoint(dst, dst.display, dst_repo), ("v1", "v2"), display="dst"),),
                display="src",
            )
            engine = CopyEngine(CopyOptions(filter=GraphFilter(), keep_going=keep_going))
            report = await engine.run([job])
            assert not report.ok
            assert report.jobs[0].status == "failed"
            assert report.tags_set == 0
            assert any(victim[:12] in f for f in report.failures)
            with pytest.raises(IncompleteCopyError):
                raise_for_report(report)
            if keep_going:
                # everything that does not depend on the failed blob got through; referrers
                # wait for their subject, so a failed image holds its referrers back too
                assert report.manifests_pushed == (3 if failing != "image-layer" else 0)

        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            assert (await reg.resolve(dst_repo, "v1")).digest == before
            with pytest.raises(NotFoundError):
                await reg.resolve(dst_repo, "v2")

    asyncio.run(main())


@pytest.mark.parametrize("broken", ["blob-upload", "manifest-head"])
def test_fan_out_with_one_failing_destination_completes_and_tags_the_other(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    fault_proxy: Any,
    unique_repo: Any,
    broken: str,
) -> None:
    async def main() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            await GraphBuilder(reg, unique_repo).image(
                "fan", tags=["v1"], layers=1, layer_size=200 * 1024
            )
        bad = fault_proxy(registry_open)
        if broken == "blob-upload":
            bad.status("PUT", r"/blobs/uploads/", 500, times=None)
        else:
            # The new-repository probe fails too, so the engine falls back to
            # asking about each manifest: those questions fail.
            bad.status("GET", r"/tags/list", 503, times=None)
            bad.status("HEAD", r"/manifests/sha256:", 503, times=None)
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(bad.host, registry_open.options(retry=FAST_RETRY)) as dst_bad,
            RegistryTarget(registry_referrers.host, registry_referrers.options()) as dst_ok,
        ):
            job = CopyJob(
                Endpoint(src, src.display, unique_repo),
                "v1",
                (
                    Destination(Endpoint(dst_bad, dst_bad.display, unique_repo + "-bad"), ("v1",)),
                    Destination(Endpoint(dst_ok, dst_ok.display, unique_repo + "-ok"), ("v1",)),
                ),
            )
            report = await asyncio.wait_for(CopyEngine(CopyOptions(keep_going=True)).run([job]), 60)
            assert not report.ok
            assert report.tags_set == 1
            assert (await dst_ok.resolve(unique_repo + "-ok", "v1")).digest == report.jobs[0].digest
            with pytest.raises(NotFoundError):
                await src.resolve(unique_repo + "-bad", "v1")

    asyncio.run(main())


def test_source_cut_mid_blob_during_fan_out_recovers(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    fault_proxy: Any,
    unique_repo: Any,
) -> None:
    async def main() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            img = await GraphBuilder(reg, unique_repo).image(
                "cut", tags=["v1"], layers=1, layer_size=600 * 1024
            )
            layer = _layer_of((await reg.fetch_manifest(unique_repo, img))[1])
        src_proxy = fault_proxy(registry_open)
        src_proxy.cut("GET", rf"/blobs/{layer}", 100 * 1024, times=1)
        async with (
            RegistryTarget(src_proxy.host, registry_open.options(retry=FAST_RETRY)) as src,
            RegistryTarget(registry_open.host, registry_open.options()) as d1,
            RegistryTarget(registry_referrers.host, registry_referrers.options()) as d2,
        ):
            job = CopyJob(
                Endpoint(src, src.display, unique_repo),
                "v1",
                (
                    Destination(Endpoint(d1, d1.display, unique_repo + "-1"), ("v1",)),
                    Destination(Endpoint(d2, d2.display, unique_repo + "-2"), ("v1",)),
                ),
            )
            report = await asyncio.wait_for(CopyEngine(CopyOptions()).run([job]), 60)
            assert report.ok, report.failures
            assert report.tags_set == 2
            # the layer: one cut read, then one resumed (Range) read; nothing read twice more
            layer_gets = src_proxy.stats().paths("GET", "blob")[f"/v2/{unique_repo}/blobs/{layer}"]
            assert layer_gets == 2
            for t, repo in ((d1, unique_repo + "-1"), (d2, unique_repo + "-2")):
                assert (await t.resolve(repo, "v1")).digest == report.jobs[0].digest

    asyncio.run(main())


def test_rerun_lists_referrers_an_earlier_run_pushed_but_could_not_index(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: str
) -> None:
    """The subject's fallback index refused its update after the referrers' manifests
    were stored: the failed run sets no tag, and the rerun — which finds the
    referrers present — adds them to the index instead of calling the copy done
    with a signature nobody can discover.
    """
    dst_repo = unique_repo + "-dst"

    async def main() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            signed = await GraphBuilder(reg, unique_repo).signed_image("app", tags=["v1"])
            # The destination repository exists (another tag): presence is asked there.
            await GraphBuilder(reg, dst_repo).image("other", tags=["old"])
        proxy = fault_proxy(registry_open)
        proxy.status("PUT", "/manifests/" + referrers_tag(signed.image.digest), 400, times=None)

        def job(dst: RegistryTarget) -> CopyJob:
            return CopyJob(
                Endpoint(src, src.display, unique_repo),
                "v1",
                (Destination(Endpoint(dst, dst.display, dst_repo), ("v1",)),),
            )

        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(proxy.host, registry_open.options(retry=FAST_RETRY)) as dst,
        ):
            first = await CopyEngine().run([job(dst)])
            assert not first.ok and first.tags_set == 0
            assert await dst.manifest_exists(dst_repo, signed.signature)
            assert await dst.referrers(dst_repo, signed.image) == []
        fixed = fault_proxy(registry_open)
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(fixed.host, registry_open.options()) as dst,
        ):
            second = await CopyEngine().run([job(dst)])
            assert second.ok, second.failures
            assert second.tags_set == 1
            listed = {d.digest for d in await dst.referrers(dst_repo, signed.image)}
            assert listed == {signed.signature.digest, signed.sbom.digest}
            assert any("not listed" in w for w in second.warnings), second.warnings
            # and a third run finds everything listed: no index write
            fixed.reset()
            third = await CopyEngine().run([job(dst)])
            assert third.ok and third.manifests_pushed == 0
            assert fixed.stats().requests("PUT", "manifest") == 0

    asyncio.run(main())
