"""The copy engine against real registries: exact graphs, least work, tags last."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from replicator.engine.copier import CopyEngine, CopyJob, CopyOptions, Destination, Endpoint
from replicator.engine.ledger import Confirmation, MemoryLedger
from replicator.engine.report import CopyReport
from replicator.errors import NotFoundError
from replicator.graph.filters import GraphFilter
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Platform
from replicator.oci.reference import referrers_tag
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import (
    SBOM_TYPE,
    GraphBuilder,
    assert_same_graph,
    build_world,
)

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def target(reg: Any) -> RegistryTarget:
    return RegistryTarget(reg.host, reg.options())


def job(
    src: RegistryTarget,
    src_repo: str,
    ref: str,
    *dests: tuple[RegistryTarget, str, tuple[str, ...]],
) -> CopyJob:
    return CopyJob(
        source=Endpoint(src, src.display, src_repo),
        reference=ref,
        destinations=tuple(
            Destination(Endpoint(t, t.display, repo), tags, display=f"{t.display}/{repo}")
            for t, repo, tags in dests
        ),
        display=f"{src.display}/{src_repo}:{ref}",
    )


async def copy(jobs: list[CopyJob], **opts: Any) -> CopyReport:
    flt = opts.pop("flt", GraphFilter())
    return await CopyEngine(CopyOptions(filter=flt, **opts)).run(jobs)


def test_signed_image_copies_exactly_and_second_run_moves_nothing(
    registry_open: RegistryInstance, registry_referrers: RegistryInstance, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as src, target(registry_referrers) as dst:
            g = GraphBuilder(src, unique_repo)
            signed = await g.signed_image("app", tags=["v1"])
            first = await copy([job(src, unique_repo, "v1", (dst, unique_repo, ("v1",)))])
            assert first.ok, first.failures
            assert first.manifests_pushed == 4
            assert first.blobs_uploaded >= 4
            assert first.tags_set == 1
            snap = await assert_same_graph(src, unique_repo, "v1", dst, unique_repo, "v1")
            assert snap.referrers[signed.image.digest] == {
                signed.signature.digest,
                signed.sbom.digest,
            }
            assert snap.referrers[signed.sbom.digest] == {signed.sbom_signature.digest}
            sent_before = dst.stats.bytes_sent
            second = await copy([job(src, unique_repo, "v1", (dst, unique_repo, ("v1",)))])
            assert second.ok
            assert second.blobs_uploaded == 0 and second.bytes_sent == 0
            assert second.manifests_pushed == 0 and second.tags_set == 0
            assert dst.stats.bytes_sent == sent_before

    run(main)


def test_missing_source_tag_is_not_found(registry_open: RegistryInstance, unique_repo: Any) -> None:
    async def main() -> CopyReport:
        async with target(registry_open) as src:
            return await copy([job(src, unique_repo, "nope", (src, unique_repo + "-dst", ("x",)))])

    report = run(main)
    assert not report.ok
    assert report.jobs[0].status == "failed"
    assert "nope" in (report.jobs[0].error or "") or report.failures


def test_platform_filter_single_platform_becomes_root(
    registry_open: RegistryInstance, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            g = GraphBuilder(reg, unique_repo)
            index, images = await g.multiarch("mp", tags=["v1"])
            dst_repo = unique_repo + "-amd"
            report = await copy(
                [job(reg, unique_repo, "v1", (reg, dst_repo, ("v1",)))],
                flt=GraphFilter(platforms=(Platform.parse("linux/amd64"),)),
            )
            assert report.ok, report.failures
            assert report.jobs[0].digest == images[0].digest
            got = await reg.resolve(dst_repo, "v1")
            assert got.digest == images[0].digest
            try:
                await reg.resolve(dst_repo, index.digest)
                raise AssertionError("the index must not be copied")
            except NotFoundError:
                pass

    run(main)


def test_world_copy_request_budget(
    registry_open: RegistryInstance, registry_referrers: RegistryInstance, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as src, target(registry_referrers) as dst:
            world = await build_world(src, unique_repo, repositories=3, tags=2)
            jobs = [job(src, repo, tag, (dst, repo, (tag,))) for repo, tag, _ in world.roots]
            before = dict(dst.stats.as_dict())
            report = await copy(jobs)
            assert report.ok, report.failures
            after = dst.stats.as_dict()
            blob_requests = sum(
                after[k] - before[k]
                for k in ("blob_head", "blob_upload_start", "blob_patch", "blob_put", "blob_mount")
            )
            per_blob = blob_requests / report.new_blobs
            dst_delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
            # the report counts this run's requests only (the world was built before)
            assert {k: v for k, v in report.requests[dst.display].items() if v} == dst_delta
            print(f"new blobs {report.new_blobs} ({report.blobs_mounted} mounted)")
            print(f"blob requests {blob_requests}, per new blob {per_blob:.2f}")
            print(f"destination requests {dst_delta}")
            print(f"source requests {report.requests.get(src.display)}")
            assert per_blob <= 2.1
            # the base layer and the empty config, shared by the three repositories,
            # are uploaded once and mounted into the two others, however the jobs race
            assert report.blobs_mounted == 4
            for repo, tag, _ in world.roots:
                await assert_same_graph(src, repo, tag, dst, repo, tag)

    run(main)


def test_throttling_registry_gets_fewer_concurrent_uploads_and_the_copy_completes(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as src:
            await GraphBuilder(src, unique_repo).signed_image("thr", tags=["v1"])
        proxy = fault_proxy(registry_open)
        proxy.status("POST", r"/blobs/uploads/", 429, retry_after=0, times=3)
        async with target(registry_open) as src, target(proxy) as dst:
            report = await copy([job(src, unique_repo, "v1", (dst, unique_repo + "-t", ("v1",)))])
            assert report.ok, report.failures
            assert report.retries >= 3
            assert report.limits[f"{dst.display}/blob"] < 8
            await assert_same_graph(src, unique_repo, "v1", dst, unique_repo + "-t", "v1")

    run(main)


def test_stale_ledger_entry_is_repaired_when_the_registry_reports_a_missing_blob(
    registry_open: RegistryInstance, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            img = await GraphBuilder(reg, unique_repo).image("stale", tags=["v1"])
            _, raw = await reg.fetch_manifest(unique_repo, img)
            layer = json.loads(raw)["layers"][0]
            ledger = MemoryLedger()
            dst_repo = unique_repo + "-s"
            # a journal from an earlier run claims the layer is already at the destination
            await ledger.record(
                Confirmation(
                    "blob", "uploaded", reg.display, dst_repo, layer["digest"], layer["size"]
                )
            )
            engine = CopyEngine(CopyOptions(), ledger=ledger)
            report = await engine.run([job(reg, unique_repo, "v1", (reg, dst_repo, ("v1",)))])
            assert report.ok, report.failures
            assert any("lost blob" in w for w in report.warnings)
            await assert_same_graph(reg, unique_repo, "v1", reg, dst_repo, "v1")

    run(main)


def test_chunk_size_chunks_only_blobs_larger_than_it(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as src:
            await GraphBuilder(src, unique_repo).image(
                "big", tags=["v1"], layers=1, layer_size=300 * 1024
            )
        proxy = fault_proxy(registry_open)
        async with target(registry_open) as src, target(proxy) as dst:
            report = await copy(
                [job(src, unique_repo, "v1", (dst, unique_repo + "-c", ("v1",)))],
                chunk_size=64 * 1024,
            )
            assert report.ok, report.failures
            assert report.blobs_uploaded == 2
            stats = proxy.stats()
            assert stats.requests("PATCH", "upload") == 5  # ceil(300 KiB / 64 KiB)
            assert stats.bytes_up("PATCH", "upload") == 300 * 1024
            await assert_same_graph(src, unique_repo, "v1", dst, unique_repo + "-c", "v1")

    run(main)


def test_type_filter_reads_the_manifest_when_the_listing_omits_artifact_type(
    registry_open: RegistryInstance, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            g = GraphBuilder(reg, unique_repo)
            signed = await g.signed_image("bare", tags=["v1"])
            # rewrite the image's fallback index without artifactType in its entries
            entries = [
                {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                for d in (signed.signature, signed.sbom)
            ]
            raw = json.dumps(
                {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
            ).encode()
            await g.manifest(raw, mt.OCI_INDEX, tags=[referrers_tag(signed.image.digest)])
            listed = await reg.referrers(unique_repo, signed.image)
            assert {d.artifact_type for d in listed} == {None}
            report = await copy(
                [job(reg, unique_repo, "v1", (reg, unique_repo + "-f", ("v1",)))],
                flt=GraphFilter(include_types=(SBOM_TYPE,), max_depth=1),
            )
            assert report.ok, report.failures
            assert report.manifests_pushed == 2
            assert await reg.manifest_exists(unique_repo + "-f", signed.sbom)
            assert not await reg.manifest_exists(unique_repo + "-f", signed.signature)

    run(main)


def test_memory_stays_flat_while_a_large_blob_fans_out(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    """A 64 MiB layer to two registries: the peak of Python allocations stays far below it."""
    size = 64 * 1024 * 1024

    async def main() -> None:
        lay = OCILayoutTarget(tmp_path / "lay", create=True)
        await GraphBuilder(lay, "").image("big", tags=["v1"], layers=1, layer_size=size)
        async with target(registry_open) as a, target(registry_referrers) as b:
            tracemalloc.start()
            try:
                report = await CopyEngine(CopyOptions(chunk_size=4 * 1024 * 1024)).run(
                    [
                        CopyJob(
                            Endpoint(lay, lay.display, ""),
                            "v1",
                            (
                                Destination(Endpoint(a, a.display, unique_repo), ("v1",)),
                                Destination(Endpoint(b, b.display, unique_repo), ("v1",)),
                            ),
                        )
                    ]
                )
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert report.ok, report.failures
            assert report.bytes_read < size * 1.01  # read once for both destinations
            assert report.bytes_sent > 2 * size
            assert peak < size / 2, f"peak {peak / 2**20:.1f} MiB"
        await lay.aclose()

    run(main)


def test_rerun_after_a_new_signature_copies_only_the_signature(
    registry_open: RegistryInstance, registry_referrers: RegistryInstance, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as src, target(registry_referrers) as dst:
            g = GraphBuilder(src, unique_repo)
            signed = await g.signed_image("inc", tags=["v1"])
            the_job = job(src, unique_repo, "v1", (dst, unique_repo, ("v1",)))
            assert (await copy([the_job])).ok
            late = await g.referrer(signed.sbom, "application/vnd.example.vex", b'{"vex":1}')
            again = await copy([the_job])
            assert again.ok, again.failures
            assert again.manifests_pushed == 1
            # its payload, plus the 2-byte empty config: small blobs of an absent
            # manifest are sent without a HEAD first (POST+PUT beats HEAD+POST+PUT)
            assert again.bytes_sent == len(b'{"vex":1}') + 2
            assert again.tags_set == 0
            found = await dst.referrers(unique_repo, signed.sbom)
            assert late.digest in {d.digest for d in found}

    run(main)


def _referrer_manifest_gets(stats: Any, repo: str, digests: list[str]) -> int:
    paths = stats.paths("GET", "manifest")
    return sum(paths[f"/v2/{repo}/manifests/{d}"] for d in digests)


def test_rerun_reads_no_referrer_manifest_the_destination_has(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            signed = await GraphBuilder(reg, unique_repo).signed_image("rr", tags=["v1"])
        referrers = [signed.signature.digest, signed.sbom.digest, signed.sbom_signature.digest]
        proxy = fault_proxy(registry_open)  # the source, without the referrers API
        dst_repo = unique_repo + "-rr"
        async with target(proxy) as src, target(registry_open) as dst:
            first = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            assert first.ok, first.failures
            assert first.manifests_pushed == 4
            # copied referrers were read (to copy them, and to check their subject)
            assert _referrer_manifest_gets(proxy.stats(), unique_repo, referrers) == 3
        proxy.reset()
        async with target(proxy) as src, target(registry_open) as dst:
            second = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            assert second.ok, second.failures
            assert second.manifests_pushed == 0 and second.bytes_sent == 0
            assert second.referrers_found == 3
        stats = proxy.stats()
        assert _referrer_manifest_gets(stats, unique_repo, referrers) == 0
        # the root (by tag) and the two fallback tags that exist (the image's and the
        # SBOM's), known from one tag listing: nothing else read at the source
        assert stats.requests("GET", "manifest") == 3, stats.paths("GET", "manifest")
        assert stats.requests("GET", "tags") == 1

    run(main)


def test_a_refused_tag_listing_falls_back_to_reading_each_fallback_tag(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            await GraphBuilder(reg, unique_repo).signed_image("rf", tags=["v1"])
        proxy = fault_proxy(registry_open)  # the source, without the referrers API
        proxy.status("GET", r"/tags/list", 403, times=None)
        dst_repo = unique_repo + "-rf"
        async with target(proxy) as src, target(registry_open) as dst:
            report = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
        assert report.ok, report.failures
        assert report.manifests_pushed == 4 and report.referrers_found == 3
        stats = proxy.stats()
        assert stats.requests("GET", "tags") == 1  # asked once, refused, not asked again
        fallback = [p for p in stats.paths("GET", "manifest") if "/manifests/sha256-" in p]
        assert len(fallback) == 4  # every node's fallback tag read, found or not

    run(main)


def test_rerun_takes_the_referrers_the_destination_lists_as_present(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            signed = await GraphBuilder(reg, unique_repo).signed_image("tl", tags=["v1"])
        referrers = [signed.signature.digest, signed.sbom.digest, signed.sbom_signature.digest]
        proxy = fault_proxy(registry_open)  # the destination, without the referrers API
        dst_repo = unique_repo + "-tl"
        async with target(registry_open) as src, target(proxy) as dst:
            first = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            assert first.ok, first.failures
        proxy.reset()
        async with target(registry_open) as src, target(proxy) as dst:  # a new run
            second = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            assert second.ok, second.failures
            assert second.manifests_pushed == 0 and second.manifests_skipped == 4
        stats = proxy.stats()
        heads = stats.paths("HEAD", "manifest")
        # the tag is asked about; the referrers are not: the image's and the SBOM's
        # fallback indexes name them (one read each, which also checks their listing)
        assert heads == {f"/v2/{dst_repo}/manifests/v1": 1}, heads
        assert not any(d in p for p in stats.paths("GET", "manifest") for d in referrers)
        fallback = [p for p in stats.paths("GET", "manifest") if "/manifests/sha256-" in p]
        assert sorted(fallback) == sorted(
            f"/v2/{dst_repo}/manifests/{referrers_tag(d)}"
            for d in (signed.image.digest, signed.sbom.digest)
        )
        assert stats.requests("PUT") == 0

    run(main)


def test_deep_check_finds_a_referrer_lost_under_its_listing_and_copies_only_that_one(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            signed = await GraphBuilder(reg, unique_repo).signed_image("lr", tags=["v1"])
        proxy = fault_proxy(registry_open)
        dst_repo = unique_repo + "-lr"
        async with target(proxy) as src, target(registry_open) as dst:
            first = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            assert first.ok, first.failures
        # the destination loses the SBOM's signature (and its fallback entry stays)
        async with target(registry_open) as reg:
            await reg.delete_manifest_digest(dst_repo, signed.sbom_signature.digest)
        async with target(proxy) as src, target(registry_open) as dst:
            # by default the listing vouches for it: the loss is not seen
            trusting = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            assert trusting.ok and trusting.manifests_pushed == 0
            proxy.reset()
            deep = await copy(
                [job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))], deep_check=True
            )
            assert deep.ok, deep.failures
            assert deep.manifests_pushed == 1
            assert await dst.manifest_exists(dst_repo, signed.sbom_signature)
        paths = proxy.stats().paths("GET", "manifest")
        assert paths[f"/v2/{unique_repo}/manifests/{signed.sbom_signature.digest}"] == 1
        assert paths[f"/v2/{unique_repo}/manifests/{signed.signature.digest}"] == 0
        assert paths[f"/v2/{unique_repo}/manifests/{signed.sbom.digest}"] == 0

    run(main)


def test_deep_check_finds_an_index_child_lost_under_its_index(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            _, images = await GraphBuilder(reg, unique_repo).multiarch("ic", tags=["v1"])
        dst_repo = unique_repo + "-ic"
        proxy = fault_proxy(registry_open)  # the destination
        async with target(registry_open) as src, target(proxy) as dst:
            first = await copy(
                [job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))],
                flt=GraphFilter(referrers=False),
            )
            assert first.ok, first.failures
            await dst.delete_manifest_digest(dst_repo, images[1].digest)
            proxy.reset()
            trusting = await copy(
                [job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))],
                flt=GraphFilter(referrers=False),
            )
            assert trusting.ok and trusting.manifests_pushed == 0
            assert proxy.stats().requests("HEAD", "manifest") == 1  # the tag only
            proxy.reset()
            deep = await copy(
                [job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))],
                flt=GraphFilter(referrers=False),
                deep_check=True,
            )
            assert deep.ok, deep.failures
            assert deep.manifests_pushed == 1
            # the tag, then each of the 4 children (2 images, 2 attestations)
            assert proxy.stats().requests("HEAD", "manifest") == 5
            assert await dst.manifest_exists(dst_repo, images[1])
            await assert_same_graph(src, unique_repo, "v1", dst, dst_repo, "v1")

    run(main)


def test_referrers_are_listed_at_the_source_while_the_destination_is_asked(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            signed = await GraphBuilder(reg, unique_repo).signed_image("ov", tags=["v1"])
        listing = referrers_tag(signed.image.digest)
        src_proxy = fault_proxy(registry_open)
        dst_proxy = fault_proxy(registry_open)
        # every manifest request at the destination answers slowly
        dst_proxy.delay(None, r"/manifests/", 1.0, times=None)
        dst_repo = unique_repo + "-ov"
        async with target(src_proxy) as src, target(dst_proxy) as dst:
            task = asyncio.ensure_future(
                copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            )
            deadline = asyncio.get_running_loop().time() + 30
            listed = False
            answered: list[int] = []
            while not task.done() and asyncio.get_running_loop().time() < deadline:
                if any(listing in r.path for r in src_proxy.stats().log):
                    listed = True
                    answered = [r.status for r in dst_proxy.stats().log if r.kind == "manifest"]
                    break
                await asyncio.sleep(0.01)
            report = await task
            assert report.ok, report.failures
            assert listed
            # the root's referrers were listed before the destination answered anything
            # about the root (its tag, its presence): each takes a second there
            assert all(status == 0 for status in answered), answered
            await assert_same_graph(src, unique_repo, "v1", dst, dst_repo, "v1")

    run(main)


def test_cold_copy_pushes_a_complete_root_under_its_tag_in_one_request(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            img = await GraphBuilder(reg, unique_repo).image("one", tags=["v1"])
            idx, kids = await GraphBuilder(reg, unique_repo).multiarch("multi", tags=["m1"])
        proxy = fault_proxy(registry_open)
        no_referrers = GraphFilter(referrers=False)
        dst_repo = unique_repo + "-one"
        async with target(registry_open) as src, target(proxy) as dst:
            ledger = MemoryLedger()
            report = await CopyEngine(CopyOptions(filter=no_referrers), ledger=ledger).run(
                [job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))]
            )
            assert report.ok, report.failures
            stats = proxy.stats()
            # the root goes straight under its tag: no push by digest, then a tag
            assert stats.requests("PUT", "manifest") == 1
            assert list(stats.paths("PUT", "manifest")) == [f"/v2/{dst_repo}/manifests/v1"]
            # the repository is new (one tag-list probe: 404 NAME_UNKNOWN): neither
            # the tag nor the root's digest is asked about
            assert stats.requests("GET", "tags") == 1
            assert stats.requests("HEAD", "manifest") == 0
            assert report.tags_set == 1 and report.manifests_pushed == 1
            assert await ledger.tagged(dst.display, dst_repo, "v1") == img.digest
            assert await ledger.lookup(dst.display, dst_repo, img.digest) is not None
            await assert_same_graph(src, unique_repo, "v1", dst, dst_repo, "v1")

            # a second tag still costs one request; a re-run none
            proxy.reset()
            report = await copy(
                [job(src, unique_repo, "v1", (dst, dst_repo + "b", ("a", "b")))], flt=no_referrers
            )
            assert report.ok, report.failures
            assert proxy.stats().requests("PUT", "manifest") == 2
            proxy.reset()
            report = await copy(
                [job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))], flt=no_referrers
            )
            assert report.ok, report.failures
            assert proxy.stats().requests("PUT", "manifest") == 0
            assert proxy.stats().requests("HEAD", "manifest") == 1  # the tag: no digest HEAD

            # an index: its children by digest, then the index under its tag
            proxy.reset()
            report = await copy(
                [job(src, unique_repo, "m1", (dst, dst_repo + "m", ("m1",)))], flt=no_referrers
            )
            assert report.ok, report.failures
            puts = proxy.stats().paths("PUT", "manifest")
            assert sum(puts.values()) == report.manifests_pushed == 1 + len(kids) + 2
            assert puts[f"/v2/{dst_repo}m/manifests/m1"] == 1
            assert f"/v2/{dst_repo}m/manifests/{idx.digest}" not in puts
            await assert_same_graph(src, unique_repo, "m1", dst, dst_repo + "m", "m1")

    run(main)


def test_a_root_with_referrers_is_still_tagged_last(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    async def main() -> None:
        async with target(registry_open) as reg:
            signed = await GraphBuilder(reg, unique_repo).signed_image("s", tags=["v1"])
        proxy = fault_proxy(registry_open)
        dst_repo = unique_repo + "-s"
        async with target(registry_open) as src, target(proxy) as dst:
            report = await copy([job(src, unique_repo, "v1", (dst, dst_repo, ("v1",)))])
            assert report.ok, report.failures
            # the root's referrers wait for it: pushed by digest, tagged at the end
            puts = [
                r.path.split("?", 1)[0]
                for r in proxy.stats().log
                if r.method == "PUT" and r.kind == "manifest"
            ]
            assert puts[-1] == f"/v2/{dst_repo}/manifests/v1"
            assert puts.count(f"/v2/{dst_repo}/manifests/{signed.image.digest}") == 1
            await assert_same_graph(src, unique_repo, "v1", dst, dst_repo, "v1")

    run(main)


def test_a_new_destination_repository_is_filled_without_presence_questions(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    """A repository the registry does not know: one tag-list probe, no manifest HEAD.

    A repository that exists (it has a tag) is asked about as before; one that
    holds untagged manifests (what a failed ``--no-journal`` run leaves) is
    reported new by the registry: its manifests are pushed again, same bytes,
    and the graph comes out the same.
    """

    async def main() -> None:
        async with target(registry_open) as reg:
            img = await GraphBuilder(reg, unique_repo).image("one", tags=["v1"])
            await GraphBuilder(reg, unique_repo + "-old").image("other", tags=["old"])
            assert await reg.repository_is_new(unique_repo + "-nothing")
            assert not await reg.repository_is_new(unique_repo)
        proxy = fault_proxy(registry_open)
        async with target(registry_open) as src, target(proxy) as dst:
            # new: one probe, no HEAD, the root straight under its tag
            report = await copy([job(src, unique_repo, "v1", (dst, unique_repo + "-new", ("v1",)))])
            assert report.ok, report.failures
            stats = proxy.stats()
            assert stats.requests("GET", "tags") == 1
            assert stats.requests("HEAD", "manifest") == 0
            await assert_same_graph(src, unique_repo, "v1", dst, unique_repo + "-new", "v1")

            # existing (another tag there): the tag and the root are asked about
            proxy.reset()
            report = await copy([job(src, unique_repo, "v1", (dst, unique_repo + "-old", ("v1",)))])
            assert report.ok, report.failures
            assert proxy.stats().requests("GET", "tags") == 1
            assert proxy.stats().requests("HEAD", "manifest") == 2
            await assert_same_graph(src, unique_repo, "v1", dst, unique_repo + "-old", "v1")

            # untagged content only: the registry calls it new; pushed again, same graph
            report = await copy([job(src, unique_repo, "v1", (dst, unique_repo + "-untagged", ()))])
            assert report.ok, report.failures
            assert await dst.manifest_exists(unique_repo + "-untagged", img)
            assert await dst.repository_is_new(unique_repo + "-untagged")
            report = await copy(
                [job(src, unique_repo, "v1", (dst, unique_repo + "-untagged", ("v1",)))]
            )
            assert report.ok, report.failures
            await assert_same_graph(src, unique_repo, "v1", dst, unique_repo + "-untagged", "v1")

    run(main)


def test_fallback_referrers_indexes_in_a_new_repository_are_written_without_reads(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    """A new repository on a registry without the referrers API: no index is read back.

    Every fallback index ends up listing exactly the source's referrers (the
    engine's own later writes merge into what it wrote before), and the same
    copy into a repository that exists reads the indexes as before.
    """

    async def main() -> None:
        async with target(registry_open) as reg:
            signed = await GraphBuilder(reg, unique_repo).signed_image("app", tags=["v1"])
            await GraphBuilder(reg, unique_repo + "-old").image("other", tags=["old"])
        proxy = fault_proxy(registry_open)
        index_tag = referrers_tag(signed.image.digest)
        async with target(registry_open) as src, target(proxy) as dst:
            report = await copy([job(src, unique_repo, "v1", (dst, unique_repo + "-new", ("v1",)))])
            assert report.ok, report.failures
            reads = [p for p in proxy.stats().paths("GET", "manifest") if "/sha256-" in p]
            assert reads == [], reads
            # one index write per subject (the image, the SBOM), none superseded
            writes = {
                p: n for p, n in proxy.stats().paths("PUT", "manifest").items() if "/sha256-" in p
            }
            assert sorted(writes.values()) == [1, 1], writes
            assert proxy.stats().requests("DELETE", "manifest") == 0
            snap = await assert_same_graph(src, unique_repo, "v1", dst, unique_repo + "-new", "v1")
            assert snap.referrers[signed.image.digest] == {
                signed.signature.digest,
                signed.sbom.digest,
            }
            assert snap.referrers[signed.sbom.digest] == {signed.sbom_signature.digest}
            listed = await dst.referrers(unique_repo + "-new", signed.image)
            assert {d.digest for d in listed} == {signed.signature.digest, signed.sbom.digest}

            proxy.reset()
            report = await copy([job(src, unique_repo, "v1", (dst, unique_repo + "-old", ("v1",)))])
            assert report.ok, report.failures
            reads = proxy.stats().paths("GET", "manifest")
            assert any(p.endswith(f"/manifests/{index_tag}") for p in reads), reads
            await assert_same_graph(src, unique_repo, "v1", dst, unique_repo + "-old", "v1")

    run(main)


def test_a_new_repositorys_fallback_index_merges_later_referrers_without_reading(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any
) -> None:
    proxy = fault_proxy(registry_open)

    async def main() -> None:
        async with target(proxy) as dst:
            assert await dst.repository_is_new(unique_repo)
            g = GraphBuilder(dst, unique_repo)
            image = await g.image("app", tags=["v1"])
            first = await g.referrer(image, "application/vnd.example.signature")
            second = await g.referrer(image, "application/vnd.example.sbom")
            tag = referrers_tag(image.digest)
            assert not [p for p in proxy.stats().paths("GET", "manifest") if tag in p]
            # the second write carried the first referrer, and replaced the first index
            assert proxy.stats().requests("DELETE", "manifest") == 1
        async with target(registry_open) as fresh:  # a reader that knows nothing
            listed = await fresh.referrers(unique_repo, image)
            assert {d.digest for d in listed} == {first.digest, second.digest}

    run(main)
