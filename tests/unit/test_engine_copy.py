"""The copy engine over OCI layouts on disk (real targets, no registry needed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from replicator.engine.copier import CopyEngine, CopyJob, CopyOptions, Destination, Endpoint
from replicator.engine.ledger import MemoryLedger
from replicator.engine.limits import Limits, LimitSettings
from replicator.graph.filters import GraphFilter
from replicator.oci import mediatype as mt
from replicator.oci.reference import referrers_tag
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import GraphBuilder, assert_same_graph

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def layout(path: Path) -> OCILayoutTarget:
    return OCILayoutTarget(path, create=True)


def ep(t: OCILayoutTarget, repo: str = "") -> Endpoint:
    return Endpoint(t, t.display, repo)


def dest(t: OCILayoutTarget, repo: str = "", *tags: str) -> Destination:
    return Destination(ep(t, repo), tuple(tags), display=f"{t.display}:{repo}")


def test_fan_out_reads_each_blob_once_and_every_destination_gets_the_graph(tmp_path: Path) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        dsts = [layout(tmp_path / f"d{i}") for i in range(3)]
        signed = await GraphBuilder(src, "app").signed_image("app", tags=["v1"])
        ledger = MemoryLedger()
        engine = CopyEngine(CopyOptions(), ledger=ledger)
        report = await engine.run(
            [CopyJob(ep(src, "app"), "v1", tuple(dest(d, "app", "v1") for d in dsts))]
        )
        assert report.ok, report.failures
        snap = await assert_same_graph(src, "app", "v1", dsts[0], "app", "v1")
        for d in dsts[1:]:
            await assert_same_graph(src, "app", "v1", d, "app", "v1")
        unique_bytes = sum(b.size for b in snap.blobs.values())
        assert report.bytes_read == unique_bytes  # one source read for three destinations
        assert report.blobs_uploaded == 3 * len(snap.blobs)
        assert report.manifests_pushed == 12
        assert report.tags_set == 3
        assert report.jobs[0].tags == ["v1"] and report.jobs[0].status == "copied"
        assert snap.referrers[signed.image.digest] == {signed.signature.digest, signed.sbom.digest}
        # every confirmation went through the ledger, each blob once per destination
        blob_confirms = [(c.location, c.digest) for c in ledger.history if c.kind == "blob"]
        assert len(blob_confirms) == len(set(blob_confirms)) == 3 * len(snap.blobs)
        for t in (src, *dsts):
            await t.aclose()

    run(main)


def test_jobs_sharing_blobs_read_each_digest_once(tmp_path: Path) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        dst = layout(tmp_path / "dst")
        base = b"shared base layer" * 100
        g1, g2 = GraphBuilder(src, "one"), GraphBuilder(src, "two")
        await g1.image("one", tags=["v1"], shared_layers=[base])
        await g2.image("two", tags=["v1"], shared_layers=[base])
        report = await CopyEngine().run(
            [
                CopyJob(ep(src, "one"), "v1", (dest(dst, "one", "v1"),)),
                CopyJob(ep(src, "two"), "v1", (dest(dst, "two", "v1"),)),
            ]
        )
        assert report.ok, report.failures
        # the shared layer's bytes were read once (mounted or found for the second repo)
        assert report.bytes_read < 2 * len(base)
        await assert_same_graph(src, "two", "v1", dst, "two", "v1")
        await src.aclose()
        await dst.aclose()

    run(main)


def test_second_run_is_a_no_op(tmp_path: Path) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        dst = layout(tmp_path / "dst")
        await GraphBuilder(src, "").signed_image("x", tags=["v1"])
        job = CopyJob(ep(src), "v1", (dest(dst, "", "v1"),))
        first = await CopyEngine().run([job])
        assert first.ok and first.manifests_pushed == 4
        second = await CopyEngine().run([job])
        assert second.ok
        assert second.manifests_pushed == 0 and second.blobs_uploaded == 0
        assert second.bytes_read == 0 and second.tags_set == 0 and second.tags_unchanged == 1
        await src.aclose()
        await dst.aclose()

    run(main)


def test_self_referencing_and_cyclic_fallback_tags_terminate_with_warnings(tmp_path: Path) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        dst = layout(tmp_path / "dst")
        g = GraphBuilder(src, "")
        signed = await g.signed_image("cyc", tags=["v1"])
        bogus = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_INDEX,
                "manifests": [signed.image.to_json(), signed.signature.to_json()],
            }
        ).encode()
        await g.manifest(bogus, mt.OCI_INDEX, tags=[referrers_tag(signed.signature.digest)])
        report = await asyncio.wait_for(
            CopyEngine().run([CopyJob(ep(src), "v1", (dest(dst, "", "v1"),))]), 30
        )
        assert report.ok, report.failures
        assert report.manifests_pushed == 4
        assert report.warnings
        await src.aclose()
        await dst.aclose()

    run(main)


def test_referrer_filters_and_disabled_referrers(tmp_path: Path) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        signed = await GraphBuilder(src, "").signed_image("f", tags=["v1"])
        only_sboms = layout(tmp_path / "sboms")
        report = await CopyEngine(
            CopyOptions(filter=GraphFilter(include_types=("application/spdx+json",)))
        ).run([CopyJob(ep(src), "v1", (dest(only_sboms, "", "v1"),))])
        assert report.ok and report.manifests_pushed == 2
        assert await only_sboms.manifest_exists("", signed.sbom)
        assert not await only_sboms.manifest_exists("", signed.signature)
        bare = layout(tmp_path / "bare")
        report = await CopyEngine(CopyOptions(filter=GraphFilter(referrers=False))).run(
            [CopyJob(ep(src), "v1", (dest(bare, "", "v1"),))]
        )
        assert report.ok and report.manifests_pushed == 1
        for t in (src, only_sboms, bare):
            await t.aclose()

    run(main)


def test_concurrency_of_one_still_completes_a_fan_out(tmp_path: Path) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        dsts = [layout(tmp_path / f"d{i}") for i in range(2)]
        await GraphBuilder(src, "").signed_image("one", tags=["v1"])
        limits = Limits(LimitSettings(concurrency=1, meta_per_location=1, blob_per_location=1))
        report = await asyncio.wait_for(
            CopyEngine(CopyOptions(), limits=limits).run(
                [CopyJob(ep(src), "v1", tuple(dest(d, "", "v1") for d in (*dsts, dsts[0])))]
            ),
            30,
        )
        assert report.ok, report.failures
        for d in dsts:
            await assert_same_graph(src, "", "v1", d, "", "v1")
        for t in (src, *dsts):
            await t.aclose()

    run(main)


def test_referrer_listed_under_a_wrong_subject_is_still_copied_under_its_real_one(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        dst = layout(tmp_path / "dst")
        g = GraphBuilder(src, "")
        _index, images = await g.multiarch("w", tags=["v1"], attestations=False)
        x = await g.referrer(images[1], "application/vnd.example.sig")
        bogus = json.dumps(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [x.to_json()]}
        ).encode()
        await g.manifest(bogus, mt.OCI_INDEX, tags=[referrers_tag(images[0].digest)])
        report = await CopyEngine().run([CopyJob(ep(src), "v1", (dest(dst, "", "v1"),))])
        assert report.ok, report.failures
        assert any("does not name it" in w for w in report.warnings)
        assert await dst.manifest_exists("", x)
        assert [r.digest for r in await dst.referrers("", images[1])] == [x.digest]
        await src.aclose()
        await dst.aclose()

    run(main)


def test_a_wrong_listing_is_still_checked_when_one_destination_lacks_the_referrer(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        src = layout(tmp_path / "src")
        full = layout(tmp_path / "full")
        empty = layout(tmp_path / "empty")
        g = GraphBuilder(src, "")
        _index, images = await g.multiarch("w", tags=["v1"], attestations=False)
        x = await g.referrer(images[1], "application/vnd.example.sig")
        first = await CopyEngine().run([CopyJob(ep(src), "v1", (dest(full, "", "v1"),))])
        assert first.ok, first.failures
        # now the source also lists x under images[0], whose manifest it does not name
        bogus = json.dumps(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [x.to_json()]}
        ).encode()
        await g.manifest(bogus, mt.OCI_INDEX, tags=[referrers_tag(images[0].digest)])
        report = await CopyEngine().run(
            [CopyJob(ep(src), "v1", (dest(full, "", "v1"), dest(empty, "", "v1")))]
        )
        assert report.ok, report.failures
        assert any("does not name it" in w for w in report.warnings)
        for d in (full, empty):
            assert [r.digest for r in await d.referrers("", images[1])] == [x.digest]
            assert await d.referrers("", images[0]) == []
        for t in (src, full, empty):
            await t.aclose()

    run(main)
