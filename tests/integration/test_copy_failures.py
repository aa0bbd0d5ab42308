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
