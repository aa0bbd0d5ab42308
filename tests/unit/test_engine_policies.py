"""The copy engine's policies, proven fast on in-memory registries through its public API.

Every graph is built in a source :class:`MemoryTarget` and copied with
:class:`CopyEngine`; the destination's log of committed writes shows the order,
its request counts show what was asked and sent.  Locations are remote-like (no
``ocidir://``) and every target answers ``is_local`` False: probing follows the
registry policy whichever way the engine tells a local store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from replicator.engine import (
    CopyEngine,
    CopyJob,
    CopyOptions,
    CopyReport,
    Destination,
    Endpoint,
    MemoryLedger,
    raise_for_report,
)
from replicator.errors import IncompleteCopyError
from replicator.graph.filters import GraphFilter
from replicator.graph.rules import foreign_subject_warning, self_reference_warning
from replicator.graph.walk import GraphSnapshot, snapshot_graph
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor, Platform
from replicator.oci.manifest import build_index, parse_manifest
from replicator.oci.reference import referrers_tag
from replicator.targets.memory import MemoryTarget
from tests.integration.graphs import ATTESTATION_TYPE, SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder

MODES = [pytest.param(False, id="fallback-tags"), pytest.param(True, id="referrers-api")]
WRITE_KINDS = ("blob_upload_start", "blob_patch", "blob_put", "blob_mount", "manifest_put")


def at(t: MemoryTarget, repo: str) -> Endpoint:
    return Endpoint(t, t.display, repo)


def to(t: MemoryTarget, repo: str, *tags: str) -> Destination:
    return Destination(at(t, repo), tags, display=f"{t.display}/{repo}")


def job(src: MemoryTarget, repo: str, ref: str, *dests: Destination) -> CopyJob:
    return CopyJob(at(src, repo), ref, dests, display=f"{src.display}/{repo}:{ref}")


async def copy(
    jobs: Sequence[CopyJob], *, ledger: MemoryLedger | None = None, **options: Any
) -> CopyReport:
    with anyio.fail_after(5):
        return await CopyEngine(CopyOptions(**options), ledger=ledger).run(jobs)


def sent(t: MemoryTarget, *kinds: str) -> int:
    """Requests of these kinds ``t`` received since its counters were reset."""
    return sum(t.stats.as_dict()[k] for k in kinds)


@dataclass
class Rich:
    """An OCI index of two platform images (with attestations, a shared base layer)
    and referrers four levels deep: ``sig`` of the index, ``sbom`` of a child,
    ``sbom_sig`` of the SBOM, ``att`` of that signature."""

    index: Descriptor
    images: list[Descriptor]
    sig: Descriptor
    sbom: Descriptor
    sbom_sig: Descriptor
    att: Descriptor


async def rich_graph(src: MemoryTarget, repo: str, tag: str) -> Rich:
    g = GraphBuilder(src, repo)
    index, images = await g.multiarch(repo, tags=[tag], shared_layers=[b"base layer" * 40])
    sig = await g.referrer(index, SIGNATURE_TYPE)
    sbom = await g.referrer(images[0], SBOM_TYPE)
    sbom_sig = await g.referrer(sbom, SIGNATURE_TYPE)
    att = await g.referrer(sbom_sig, ATTESTATION_TYPE)
    return Rich(index, images, sig, sbom, sbom_sig, att)


async def snapshot(
    t: MemoryTarget, repo: str, ref: str, flt: GraphFilter | None = None
) -> GraphSnapshot:
    """The graph as the plain walker sees it (its requests are not counted)."""
    snap = await snapshot_graph(t, repo, ref, flt)
    t.reset_stats()
    return snap


def assert_landed_in_order(dst: MemoryTarget, repo: str, snap: GraphSnapshot, tag: str) -> None:
    """Blobs and children before the manifest naming them, a referrer after its subject,
    the tag after every node of the graph."""
    first: dict[str, int] = {}
    tag_at = None
    for i, w in enumerate(dst.writes):
        if w.repository != repo:
            continue
        if w.action in ("blob", "mount", "manifest"):
            first.setdefault(w.digest, i)
        elif w.action == "tag" and w.tag == tag and tag_at is None:
            tag_at = i
    assert set(snap.manifests) | set(snap.blobs) <= set(first), "something was not copied"
    for digest, raw in snap.manifests.items():
        m = parse_manifest(raw)
        for needed in [*m.blobs(), *m.children()]:
            assert first[needed.digest] < first[digest], f"{digest} landed before {needed.digest}"
        if m.subject is not None:
            assert first[m.subject.digest] < first[digest], f"referrer {digest} before its subject"
    assert tag_at is not None and tag_at > max(first[d] for d in [*snap.manifests, *snap.blobs])


# ---------------------------------------------------------------------- ordering


@pytest.mark.parametrize("api", MODES)
def test_writes_land_children_and_blobs_first_referrers_after_subjects_and_the_tag_last(
    api: bool,
) -> None:
    async def main() -> None:
        src = MemoryTarget("src.example", referrers_api=api)
        dst = MemoryTarget("dst.example", referrers_api=api)
        rich = await rich_graph(src, "app", "v1")
        snap = await snapshot(src, "app", "v1")
        report = await copy([job(src, "app", "v1", to(dst, "app", "v1"))])
        assert report.ok, report.failures
        assert_landed_in_order(dst, "app", snap, "v1")
        assert dst.view("app").tags["v1"] == rich.index.digest

    anyio.run(main)


def test_a_docker_manifest_list_lands_after_its_images_and_its_referrer_after_it() -> None:
    async def main() -> None:
        src, dst = MemoryTarget("src.example"), MemoryTarget("dst.example")
        g = GraphBuilder(src, "app")
        platforms = [("linux", "amd64"), ("linux", "arm64")]
        images = [await g.image(f"d-{a}", docker=True, platform=(o, a)) for o, a in platforms]
        listing = await g.index(
            [
                (img, {"os": o, "architecture": a}, None)
                for img, (o, a) in zip(images, platforms, strict=True)
            ],
            docker=True,
            tags=["v1"],
        )
        await g.referrer(listing, SIGNATURE_TYPE)
        snap = await snapshot(src, "app", "v1")
        report = await copy([job(src, "app", "v1", to(dst, "app", "v1"))])
        assert report.ok, report.failures
        assert_landed_in_order(dst, "app", snap, "v1")
        assert (await dst.resolve("app", "v1")).media_type == mt.DOCKER_MANIFEST_LIST

    anyio.run(main)


# ---------------------------------------------------------------------- dedup


def test_each_source_blob_and_manifest_is_read_once_however_many_jobs_and_destinations_name_it() -> (
    None
):
    async def main() -> None:
        src = MemoryTarget("src.example")
        d1, d2 = MemoryTarget("one.example"), MemoryTarget("two.example")
        g = GraphBuilder(src, "app")
        base = [b"base" * 300]
        amd, arm, s390 = [
            await g.image(a, shared_layers=base, platform=("linux", a))
            for a in ("amd64", "arm64", "s390x")
        ]
        await g.referrer(arm, SIGNATURE_TYPE)  # a referrer of the shared child
        plat = {"os": "linux", "architecture": "x"}
        v1 = await g.index([(amd, plat, None), (arm, plat, None)], tags=["v1"])
        v2 = await g.index([(arm, plat, None), (s390, plat, None)], tags=["v2"])
        snaps = [await snapshot(src, "app", t) for t in ("v1", "v2")]
        jobs = [job(src, "app", t, to(d1, "app", t), to(d2, "app", t)) for t in ("v1", "v2")]
        report = await copy(jobs)
        assert report.ok, report.failures
        manifests = (set(snaps[0].manifests) | set(snaps[1].manifests)) - {v1.digest, v2.digest}
        blobs = set(snaps[0].blobs) | set(snaps[1].blobs)
        assert {src.count("manifest_get", d) for d in manifests} == {1}
        assert src.count("manifest_get", "v1") == src.count("manifest_get", "v2") == 1
        assert {src.count("blob_get", b) for b in blobs} == {1}
        for d in (d1, d2):
            assert {d.count("blob_put", b) for b in blobs} == {1}
            assert {d.count("manifest_put", m) for m in manifests} == {1}
            tags = d.view("app").tags
            assert (tags["v1"], tags["v2"]) == (v1.digest, v2.digest)

    anyio.run(main)


def test_one_source_read_of_a_blob_is_written_to_every_destination() -> None:
    async def main() -> None:
        src = MemoryTarget("src.example", read_chunk=4096)
        dsts = [MemoryTarget(f"d{i}.example") for i in range(3)]
        await GraphBuilder(src, "app").image("big", layers=2, layer_size=64 * 1024, tags=["v1"])
        snap = await snapshot(src, "app", "v1")
        report = await copy([job(src, "app", "v1", *(to(d, "app", "v1") for d in dsts))])
        assert report.ok, report.failures
        size = sum(b.size for b in snap.blobs.values())
        assert {src.count("blob_get", b) for b in snap.blobs} == {1}
        assert report.bytes_read == size  # each blob byte read once for three destinations
        for d in dsts:
            assert set(snap.blobs) <= d.view("app").blobs and d.stats.bytes_sent >= size

    anyio.run(main)


# ---------------------------------------------------------------------- mounts


def test_a_blob_two_repositories_of_one_destination_need_is_uploaded_once_then_mounted() -> None:
    async def main() -> None:
        src, dst = MemoryTarget("src.example"), MemoryTarget("dst.example")
        base = b"shared base" * 100
        for repo in ("a", "b"):
            await GraphBuilder(src, repo).image(repo, shared_layers=[base], tags=["v1"])
        src.reset_stats()
        report = await copy([job(src, r, "v1", to(dst, r, "v1")) for r in ("a", "b")])
        assert report.ok, report.failures
        digest = parse_manifest((await dst.fetch_manifest("a", "v1"))[1]).layers[0].digest
        assert dst.count("blob_put", digest) == 1 and src.count("blob_get", digest) == 1
        assert [w.action for w in dst.writes if w.digest == digest] == ["blob", "mount"]
        assert report.blobs_mounted == 1

    anyio.run(main)


def test_a_copy_between_repositories_of_one_registry_mounts_instead_of_reading_the_source() -> None:
    async def main() -> None:
        reg = MemoryTarget("reg.example")
        await GraphBuilder(reg, "app").signed_image("x", tags=["v1"])
        snap = await snapshot(reg, "app", "v1")
        report = await copy([job(reg, "app", "v1", to(reg, "mirror", "v1"))])
        assert report.ok, report.failures
        assert sent(reg, "blob_get", "blob_put", "blob_patch", "blob_upload_start") == 0
        assert {w.digest for w in reg.writes if w.action == "mount"} == set(snap.blobs)
        assert set(snap.manifests) <= reg.view("mirror").manifests

    anyio.run(main)


# ---------------------------------------------------------------------- skip


@pytest.mark.parametrize("api", MODES)
def test_a_rerun_against_a_filled_destination_reads_no_blob_and_sends_nothing(api: bool) -> None:
    async def main() -> None:
        src = MemoryTarget("src.example", referrers_api=api)
        dst = MemoryTarget("dst.example", referrers_api=api)
        await rich_graph(src, "app", "v1")
        assert (await copy([job(src, "app", "v1", to(dst, "app", "v1"))])).ok
        for t in (src, dst):  # the re-run is another process
            t.reset_stats()
            t.restart_client()
        report = await copy([job(src, "app", "v1", to(dst, "app", "v1"))])
        assert report.ok, report.failures
        assert report.manifests_pushed == report.blobs_uploaded == report.tags_set == 0
        assert sent(src, "blob_get", "blob_head") == 0
        assert sent(dst, *WRITE_KINDS, "manifest_delete", "blob_head", "blob_get") == 0
        # The tag already on the root vouches for the graph: nothing else is asked by digest.
        assert dst.stats.manifest_head <= 1 and not dst.writes

    anyio.run(main)


# ---------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("flt", "kept"),
    [
        (GraphFilter(include_types=("application/spdx*",)), {"sbom"}),
        (GraphFilter(exclude_types=("*signature*",)), {"sbom"}),
        (GraphFilter(include_types=("application/*",), exclude_types=("*+json",)), set()),
        (GraphFilter(exclude_types=("application/vnd.in-toto*",)), {"sig", "sbom", "sbom_sig"}),
    ],
    ids=["include", "exclude", "include-and-exclude", "exclude-deepest"],
)
def test_artifact_type_globs_select_the_referrers_copied(flt: GraphFilter, kept: set[str]) -> None:
    async def main() -> None:
        src, dst = MemoryTarget("src.example"), MemoryTarget("dst.example")
        rich = await rich_graph(src, "app", "v1")
        report = await copy([job(src, "app", "v1", to(dst, "app", "v1"))], filter=flt)
        assert report.ok, report.failures
        held = dst.view("app").manifests
        names = {"sig": rich.sig, "sbom": rich.sbom, "sbom_sig": rich.sbom_sig, "att": rich.att}
        assert {n for n, d in names.items() if d.digest in held} == kept
        assert {rich.index.digest, *(i.digest for i in rich.images)} <= held

    anyio.run(main)


@pytest.mark.parametrize(
    ("flt", "kept"),
    [
        (GraphFilter(max_depth=1), {"sig", "sbom"}),
        (GraphFilter(max_depth=2), {"sig", "sbom", "sbom_sig"}),
        (GraphFilter(referrers=False), set()),
    ],
    ids=["depth-1", "depth-2", "no-referrers"],
)
def test_referrer_depth_and_referrers_off_bound_the_walk(flt: GraphFilter, kept: set[str]) -> None:
    async def main() -> None:
        src, dst = MemoryTarget("src.example"), MemoryTarget("dst.example")
        rich = await rich_graph(src, "app", "v1")
        src.reset_stats()
        report = await copy([job(src, "app", "v1", to(dst, "app", "v1"))], filter=flt)
        assert report.ok, report.failures
        held = dst.view("app").manifests
        names = {"sig": rich.sig, "sbom": rich.sbom, "sbom_sig": rich.sbom_sig, "att": rich.att}
        assert {n for n, d in names.items() if d.digest in held} == kept
        if not flt.referrers:
            assert src.stats.referrers == 0 and not any(
                r.name and r.name.startswith("sha256-") for r in src.requests
            ), "referrers were listed although not followed"

    anyio.run(main)


def test_a_platform_filter_copies_one_platform_image_itself_or_a_new_index_of_several() -> None:
    async def main() -> None:
        src = MemoryTarget("src.example")
        three = [("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x")]
        index, images = await GraphBuilder(src, "app").multiarch("m", tags=["v1"], platforms=three)
        one, two = MemoryTarget("one.example"), MemoryTarget("two.example")
        arm = GraphFilter(platforms=(Platform("linux", "arm64"),))
        report = await copy([job(src, "app", "v1", to(one, "app", "v1"))], filter=arm)
        assert report.ok, report.failures
        assert one.view("app").tags == {"v1": images[1].digest}
        assert one.view("app").manifests == {images[1].digest}
        both = GraphFilter(platforms=(Platform("linux", "amd64"), Platform("linux", "arm64")))
        report = await copy([job(src, "app", "v1", to(two, "app", "v1"))], filter=both)
        assert report.ok, report.failures
        new = parse_manifest((await two.fetch_manifest("app", "v1"))[1])
        assert new.digest != index.digest and report.jobs[0].digest == new.digest
        kept = {c.digest for c in new.children()}
        assert {images[0].digest, images[1].digest} <= kept and images[2].digest not in kept
        assert images[2].digest not in two.view("app").manifests

    anyio.run(main)


# ---------------------------------------------------------------------- failure isolation


def test_a_failing_destination_does_not_stop_the_other_destination_of_the_job() -> None:
    async def main() -> None:
        src = MemoryTarget("src.example")
        good, bad = MemoryTarget("good.example"), MemoryTarget("bad.example")
        await rich_graph(src, "app", "v1")
        snap = await snapshot(src, "app", "v1")
        bad.fail("manifest_put")
        report = await copy(
            [job(src, "app", "v1", to(good, "app", "v1"), to(bad, "app", "v1"))], keep_going=True
        )
        assert not report.ok and report.jobs[0].status == "failed"
        assert all("bad.example" in f for f in report.failures)
        assert set(snap.manifests) <= good.view("app").manifests and "v1" in good.view("app").tags
        assert not bad.view("app").tags
        with pytest.raises(IncompleteCopyError):
            raise_for_report(report)

    anyio.run(main)


@pytest.mark.parametrize("keep_going", [False, True])
def test_without_keep_going_the_first_failure_stops_the_run(keep_going: bool) -> None:
    async def main() -> None:
        src = MemoryTarget("src.example")
        bad, other = MemoryTarget("bad.example"), MemoryTarget("other.example")
        await GraphBuilder(src, "small").image("s", tags=["v1"])
        await rich_graph(src, "big", "v1")
        big = await snapshot(src, "big", "v1")
        bad.fail("blob_put")
        report = await copy(
            [
                job(src, "small", "v1", to(bad, "small", "v1")),
                job(src, "big", "v1", to(other, "big", "v1")),
            ],
            keep_going=keep_going,
        )
        assert report.jobs[0].status == "failed"
        if keep_going:
            assert report.jobs[1].status == "copied" and "v1" in other.view("big").tags
        else:
            # Uploads already in flight may fail too; nothing new starts, nothing is tagged.
            assert report.jobs[1].status == "failed" and not other.view("big").tags
            assert not set(big.manifests) <= other.view("big").manifests

    anyio.run(main)


@pytest.mark.parametrize("where", ["deepest-referrer-blob", "platform-image", "source-blob"])
def test_a_failed_node_never_gets_a_tag_above_it(where: str) -> None:
    async def main() -> None:
        src, dst = MemoryTarget("src.example"), MemoryTarget("dst.example")
        rich = await rich_graph(src, "app", "v1")
        if where == "deepest-referrer-blob":
            layer = parse_manifest((await src.fetch_manifest("app", rich.att))[1]).layers[0]
            dst.fail("blob_put", name=layer.digest)
        elif where == "platform-image":
            dst.fail("manifest_put", name=rich.images[1].digest)
        else:
            layer = parse_manifest((await src.fetch_manifest("app", rich.images[1]))[1]).layers[-1]
            src.corrupt("app", layer.digest)
        report = await copy([job(src, "app", "v1", to(dst, "app", "v1"))], keep_going=True)
        assert not report.ok and report.jobs[0].status == "failed"
        assert "v1" not in dst.view("app").tags
        assert rich.images[0].digest in dst.view("app").manifests  # the rest was copied
        if where != "deepest-referrer-blob":
            assert rich.index.digest not in dst.view("app").manifests
            assert rich.images[1].digest not in dst.view("app").manifests
        if where == "source-blob":
            assert layer.digest not in dst.view("app").blobs
            assert any("source" in f for f in report.failures)

    anyio.run(main)


def test_a_hostile_referrer_listing_is_skipped_with_a_warning_and_never_copied() -> None:
    async def main() -> None:
        src, dst = MemoryTarget("src.example"), MemoryTarget("dst.example")
        g = GraphBuilder(src, "app")
        image = await g.image("x", tags=["v1"])
        genuine = await g.referrer(image, SIGNATURE_TYPE)
        other = await g.image("y")
        foreign = await g.referrer(other, SIGNATURE_TYPE)  # names another subject
        # The image's listing: its genuine referrer, a foreign one, itself; the
        # genuine referrer's listing names the image back (a cycle).
        for subject, listed in ((image, [genuine, foreign, image]), (genuine, [image])):
            raw = build_index(listed)
            await g.manifest(raw, mt.OCI_INDEX, tags=[referrers_tag(subject.digest)])
        report = await copy([job(src, "app", "v1", to(dst, "app", "v1"))])
        assert report.ok, report.failures
        assert self_reference_warning(image.digest) in report.warnings
        assert foreign_subject_warning(foreign.digest, image.digest) in report.warnings
        assert foreign_subject_warning(image.digest, genuine.digest) in report.warnings
        held = dst.view("app").manifests
        assert {image.digest, genuine.digest} <= held
        assert foreign.digest not in held and other.digest not in held
        assert [d.digest for d in await dst.referrers("app", image)] == [genuine.digest]

    anyio.run(main)


# ---------------------------------------------------------------------- resume


def test_confirmations_in_the_ledger_let_a_second_engine_skip_the_work_they_record() -> None:
    async def main() -> None:
        src = MemoryTarget("src.example")
        # No repository probe: without the ledger the engine must ask about each node.
        dsts = [MemoryTarget(f"d{i}.example", repository_probe=False) for i in range(2)]
        signed = await GraphBuilder(src, "app").signed_image("r", tags=["v1"])
        root_blobs = parse_manifest((await src.fetch_manifest("app", signed.image))[1]).blobs()
        ledgers = [MemoryLedger(), MemoryLedger()]
        for d, ledger in zip(dsts, ledgers, strict=True):
            faults = [d.fail("manifest_put", name=n) for n in ("v1", signed.image.digest)]
            first = await copy(
                [job(src, "app", "v1", to(d, "app", "v1"))], ledger=ledger, keep_going=True
            )
            assert not first.ok and {b.digest for b in root_blobs} <= d.view("app").blobs
            for f in faults:
                d.faults.remove(f)
            d.reset_stats()
            d.restart_client()  # the second engine is another process
        src.reset_stats()
        src.restart_client()
        resumed = await copy([job(src, "app", "v1", to(dsts[0], "app", "v1"))], ledger=ledgers[0])
        assert resumed.ok, resumed.failures
        assert (
            sum(
                dsts[0].count(k, b.digest)
                for b in root_blobs
                for k in ("blob_head", "blob_put", "blob_upload_start")
            )
            == 0
        )
        assert src.count("blob_get") == 0 and resumed.blobs_uploaded == 0
        assert dsts[0].view("app").tags["v1"] == signed.image.digest
        # The same state without its ledger: the engine has to ask again.
        fresh = await copy([job(src, "app", "v1", to(dsts[1], "app", "v1"))], ledger=MemoryLedger())
        assert fresh.ok, fresh.failures
        assert (
            sum(
                dsts[1].count(k, b.digest)
                for b in root_blobs
                for k in ("blob_head", "blob_put", "blob_upload_start")
            )
            > 0
        )

    anyio.run(main)
