"""The in-memory target keeps the Target protocol's guarantees (the engine's test bench)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
import pytest

from replicator.errors import (
    IntegrityError,
    NotFoundError,
    ReferenceError,
    RegistryError,
    ServerError,
)
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_image_manifest, build_index
from replicator.oci.reference import referrers_tag
from replicator.targets.base import (
    BlobOpener,
    CatalogLister,
    ReferrersIndexKeeper,
    Target,
    UploadProgress,
    abilities_of,
)
from replicator.targets.memory import MemoryTarget, Write

T = TypeVar("T")
SIG = "application/vnd.example.signature.v1+json"


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


def opener(data: bytes, opened: list[int] | None = None, piece: int = 7) -> BlobOpener:
    """Streams ``data`` from an offset in ``piece``-byte pieces, noting each offset opened."""

    async def open_(offset: int) -> AsyncIterator[bytes]:
        if opened is not None:
            opened.append(offset)
        for i in range(offset, len(data), piece):
            yield data[i : i + piece]

    return open_


async def put_blob(
    t: MemoryTarget, repo: str, data: bytes, media_type: str = mt.OCI_LAYER
) -> Descriptor:
    desc = descriptor_for(data, media_type)
    await t.push_blob(repo, desc, opener(data))
    return desc


async def put_image(
    t: MemoryTarget,
    repo: str,
    payload: bytes,
    *,
    subject: Descriptor | None = None,
    tags: tuple[str, ...] = (),
    artifact_type: str | None = None,
) -> Descriptor:
    """An image (config and one layer of ``payload``), pushed with its blobs."""
    config = await put_blob(t, repo, b"{}", mt.OCI_EMPTY if artifact_type else mt.OCI_CONFIG)
    layer = await put_blob(t, repo, payload)
    raw = build_image_manifest(
        config=config,
        layers=[layer],
        artifact_type=artifact_type,
        subject=subject,
        annotations=None,
    )
    desc = descriptor_for(raw, mt.OCI_MANIFEST)
    await t.push_manifest(repo, desc, raw, tags)
    return desc


async def read(stream: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in stream:
        into.append(chunk)


def test_it_is_a_target_with_exactly_the_abilities_asked_for() -> None:
    full = abilities_of(MemoryTarget())
    assert isinstance(MemoryTarget(), Target)
    assert all(getattr(full, f) is not None for f in full.__dataclass_fields__)
    api = MemoryTarget(referrers_api=True)
    assert isinstance(api, MemoryTarget) and not isinstance(api, ReferrersIndexKeeper)
    assert (
        abilities_of(api).referrers_api_probe is api and abilities_of(api).referrers_listing is api
    )
    bare = abilities_of(MemoryTarget(repository_probe=False, catalog=False, upload_cancel=False))
    assert bare.repository_probe is None and bare.catalog is None and bare.upload_canceller is None
    assert bare.request_counter is not None and bare.referrers_index is not None
    assert MemoryTarget().is_local is False and MemoryTarget(is_local=True).is_local is True


def test_a_blob_round_trip_is_one_post_one_put_and_one_get() -> None:
    async def main() -> None:
        t = MemoryTarget("reg.example")
        data = b"layer bytes" * 100
        desc = await put_blob(t, "app", data)
        assert await t.blob_exists("app", desc) and not await t.blob_exists("other", desc)
        got: list[bytes] = []
        await read(t.fetch_blob("app", desc), got)
        assert b"".join(got) == data
        s = t.stats
        assert (s.blob_upload_start, s.blob_put, s.blob_head, s.blob_get) == (1, 1, 2, 1)
        assert s.bytes_sent == s.bytes_received == len(data)
        assert t.writes == [Write("blob", "app", desc.digest)]

    run(main)


def test_a_corrupted_blob_read_from_zero_raises_instead_of_yielding_its_last_chunk() -> None:
    async def main() -> None:
        t = MemoryTarget(read_chunk=4)
        data = b"0123456789"
        desc = await put_blob(t, "app", data)
        t.corrupt("app", desc.digest)
        got: list[bytes] = []
        with pytest.raises(IntegrityError):
            await read(t.fetch_blob("app", desc), got)
        assert got == [b"0123", b"4567"]  # the last chunk was held back
        tail: list[bytes] = []
        await read(t.fetch_blob("app", desc, 4), tail)  # from an offset: size checked only
        assert b"".join(tail) == b"45678" + bytes([ord("9") ^ 0xFF])

    run(main)


@pytest.mark.parametrize("verify", [True, False])
def test_push_blob_never_stores_bytes_that_do_not_verify(verify: bool) -> None:
    async def main() -> None:
        t = MemoryTarget()
        desc = descriptor_for(b"the real content", mt.OCI_LAYER)
        for wrong in (b"the fake content", b"the real content!", b"the real"):
            with pytest.raises(IntegrityError):
                await t.push_blob("app", desc, opener(wrong), verify=verify)
            with pytest.raises(IntegrityError):
                await t.push_blob("app", desc, opener(wrong), chunk_size=5, verify=verify)
        assert desc.digest not in t.view("app").blobs and not t.open_uploads
        # Hashed on the way (verify=True) a mismatch sends no closing PUT; otherwise
        # the store's own check at the PUT refuses it.  Too long is refused before either.
        assert t.stats.blob_put == (0 if verify else 4)

    run(main)


def test_a_chunked_upload_sends_a_patch_per_chunk_and_reports_each_offset() -> None:
    async def main() -> None:
        t = MemoryTarget()
        data = bytes(range(25))
        desc = descriptor_for(data, mt.OCI_LAYER)
        offsets: list[int] = []

        async def progress(p: UploadProgress) -> None:
            offsets.append(p.offset)

        res = await t.push_blob("app", desc, opener(data), on_progress=progress, chunk_size=10)
        assert (res.how, res.bytes_sent) == ("uploaded", 25) and offsets == [0, 10, 20, 25]
        assert (t.stats.blob_upload_start, t.stats.blob_patch, t.stats.blob_put) == (1, 3, 1)
        big = MemoryTarget(monolithic_max=8, chunk_size=10)
        await big.push_blob("app", desc, opener(data))  # over monolithic_max: chunked anyway
        assert big.stats.blob_patch == 3 and desc.digest in big.view("app").blobs

    run(main)


def test_an_interrupted_chunked_upload_resumes_from_the_offset_the_store_holds() -> None:
    async def main() -> None:
        t = MemoryTarget()
        data = bytes(range(25))
        desc = descriptor_for(data, mt.OCI_LAYER)
        seen: list[UploadProgress] = []
        with anyio.CancelScope() as scope:

            async def progress(p: UploadProgress) -> None:
                seen.append(p)
                if p.offset == 10:
                    scope.cancel()  # the process is killed after one acknowledged chunk

            await t.push_blob("app", desc, opener(data), on_progress=progress, chunk_size=10)
        assert scope.cancelled_caught and desc.digest not in t.view("app").blobs
        assert t.open_uploads == [seen[-1]]
        t.reset_stats()
        opened: list[int] = []
        res = await t.push_blob("app", desc, opener(data, opened), resume=seen[-1], chunk_size=10)
        assert opened == [10] and res.bytes_sent == 15 and not t.open_uploads
        s = t.stats
        assert (s.blob_upload_status, s.blob_upload_start, s.blob_patch, s.blob_put) == (1, 0, 2, 1)
        got: list[bytes] = []
        await read(t.fetch_blob("app", desc), got)
        assert b"".join(got) == data

    run(main)


def test_a_failed_upload_is_cancelled_and_a_cancelled_session_cannot_be_resumed() -> None:
    async def main() -> None:
        t = MemoryTarget()
        data = bytes(range(25))
        desc = descriptor_for(data, mt.OCI_LAYER)
        t.fail("blob_patch", after=1, times=1)
        with pytest.raises(ServerError):
            await t.push_blob("app", desc, opener(data), chunk_size=10)
        assert not t.open_uploads and t.stats.blob_upload_cancel == 1
        assert desc.digest not in t.view("app").blobs
        seen: list[UploadProgress] = []
        with anyio.CancelScope() as scope:

            async def progress(p: UploadProgress) -> None:
                seen.append(p)
                scope.cancel()

            await t.push_blob("app", desc, opener(data), on_progress=progress, chunk_size=10)
        assert isinstance(t, MemoryTarget) and len(t.open_uploads) == 1
        await abilities_of(t).upload_canceller.cancel_upload(seen[-1].location)  # type: ignore[union-attr]
        assert not t.open_uploads
        starts = t.stats.blob_upload_start
        await t.push_blob("app", desc, opener(data), resume=seen[-1], chunk_size=10)
        assert t.stats.blob_upload_start == starts + 1  # the session was gone: started over

    run(main)


def test_a_mount_links_the_blob_or_leaves_a_session_for_the_next_push() -> None:
    async def main() -> None:
        t = MemoryTarget()
        desc = await put_blob(t, "a", b"shared")
        assert await t.mount_blob("b", desc, "a")
        assert t.writes[-1] == Write("mount", "b", desc.digest) and await t.blob_exists("b", desc)
        other = descriptor_for(b"elsewhere", mt.OCI_LAYER)
        assert not await t.mount_blob("b", other, "a")
        starts = t.stats.blob_upload_start
        await t.push_blob("b", other, opener(b"elsewhere"))
        assert t.stats.blob_upload_start == starts  # the failed mount's session was used
        assert t.stats.blob_mount == 2
        refusing = MemoryTarget(mounts=False)
        await put_blob(refusing, "a", b"shared")
        assert not await refusing.mount_blob("b", desc, "a")

    run(main)


def test_a_manifest_naming_a_missing_blob_or_child_is_refused_but_a_missing_subject_is_not() -> (
    None
):
    async def main() -> None:
        t = MemoryTarget()
        config = await put_blob(t, "app", b"{}", mt.OCI_CONFIG)
        ghost = descriptor_for(b"never pushed", mt.OCI_LAYER)
        raw = build_image_manifest(
            config=config, layers=[ghost], artifact_type=None, subject=None, annotations=None
        )
        with pytest.raises(RegistryError) as info:
            await t.push_manifest("app", descriptor_for(raw, mt.OCI_MANIFEST), raw, ("v1",))
        assert info.value.code == "MANIFEST_BLOB_UNKNOWN"
        absent = descriptor_for(b'{"not":"pushed"}', mt.OCI_MANIFEST)
        index = build_index([absent])
        with pytest.raises(RegistryError) as info:
            await t.push_manifest("app", descriptor_for(index, mt.OCI_INDEX), index)
        assert info.value.code == "MANIFEST_BLOB_UNKNOWN"
        assert not t.view("app").manifests and not t.view("app").tags
        sig = await put_image(t, "app", b"sig", subject=absent, artifact_type=SIG)
        assert sig.digest in t.view("app").manifests

    run(main)


def test_manifests_travel_as_exact_verified_bytes_under_valid_tags() -> None:
    async def main() -> None:
        t = MemoryTarget()
        config = await put_blob(t, "app", b"{}", mt.OCI_CONFIG)
        raw = (
            '{ "schemaVersion": 2,\n "config": '
            f'{{"mediaType":"{mt.OCI_CONFIG}","digest":"{config.digest}","size":2}},'
            f'\n "layers": [], "mediaType": "{mt.OCI_MANIFEST}" }}\n'
        ).encode()
        desc = descriptor_for(raw, mt.OCI_MANIFEST)
        with pytest.raises(ReferenceError):
            await t.push_manifest("app", desc, raw, ("-bad",))
        with pytest.raises(IntegrityError):
            await t.push_manifest("app", descriptor_for(raw + b" ", mt.OCI_MANIFEST), raw)
        assert t.stats.manifest_put == 0 and not t.view("app").manifests
        await t.push_manifest("app", desc, raw, ("v1", "latest"))
        assert t.stats.manifest_put == 2 and t.view("app").tags == {
            "v1": desc.digest,
            "latest": desc.digest,
        }
        got, body = await t.fetch_manifest("app", "v1")
        assert body == raw and (got.digest, got.media_type, got.size) == (
            desc.digest,
            desc.media_type,
            len(raw),
        )
        assert await t.resolve("app", "latest") == Descriptor(
            mt.OCI_MANIFEST, desc.digest, len(raw)
        )
        t.corrupt("app", desc.digest)
        with pytest.raises(IntegrityError):
            await t.fetch_manifest("app", desc)
        await t.delete_manifest("app", desc, update_referrers=False)  # no read of bad bytes
        assert not t.view("app").tags  # a deleted manifest loses its tags
        with pytest.raises(NotFoundError):
            await t.resolve("app", "v1")

    run(main)


def test_without_the_api_the_fallback_index_follows_pushes_deferrals_and_deletes() -> None:
    async def main() -> None:
        t = MemoryTarget()
        keeper = abilities_of(t).referrers_index
        assert keeper is not None
        image = await put_image(t, "app", b"image", tags=("v1",))
        sig = await put_image(t, "app", b"sig", subject=image, artifact_type=SIG)
        tag = referrers_tag(image.digest)
        assert tag in t.view("app").tags
        listed = await t.referrers("app", image)
        assert [(d.digest, d.artifact_type) for d in listed] == [(sig.digest, SIG)]
        assert await t.referrers("app", image, "other/type") == []
        config = await put_blob(t, "app", b"{}", mt.OCI_EMPTY)
        layer = await put_blob(t, "app", b"sbom")
        raw = build_image_manifest(
            config=config, layers=[layer], artifact_type="sbom", subject=image, annotations=None
        )
        sbom = descriptor_for(raw, mt.OCI_MANIFEST)
        res = await t.push_manifest("app", sbom, raw, defer_referrers=True)
        assert not res.referrers_updated
        assert await t.listed_referrers("app", image) == {sig.digest}
        assert await keeper.ensure_referrers_listed("app", image, [sbom]) == [sbom.digest]
        assert await keeper.ensure_referrers_listed("app", image, [sbom, sig]) == []
        assert await t.listed_referrers("app", image) == {sig.digest, sbom.digest}
        await t.delete_manifest("app", sig)
        assert await t.listed_referrers("app", image) == {sbom.digest}
        assert await keeper.unlist_referrers("app", image, [sbom.digest, "sha256:" + "0" * 64]) == 1
        assert tag not in t.view("app").tags
        # Every replaced index was deleted: no orphan index is left behind.
        assert t.view("app").manifests == {image.digest, sbom.digest}

    run(main)


def test_fallback_reads_cost_the_requests_they_cost_the_registry_target() -> None:
    async def main() -> None:
        t = MemoryTarget()
        image = await put_image(t, "app", b"image", tags=("v1",))
        bare = await put_image(t, "app", b"bare")
        await put_image(t, "app", b"sig", subject=image, artifact_type=SIG)
        t.reset_stats()
        assert await t.referrers("app", bare) == [] and len(await t.referrers("app", image)) == 1
        # One API probe, one tag listing, one read: of the one fallback tag that exists.
        assert (t.stats.referrers, t.stats.tags, t.stats.manifest_get) == (1, 1, 1)
        fresh = MemoryTarget()
        probe = abilities_of(fresh).repository_probe
        assert probe is not None and await probe.repository_is_new("app")
        subject = await put_image(fresh, "app", b"image")
        fresh.reset_stats()
        await put_image(fresh, "app", b"sig", subject=subject, artifact_type=SIG)
        assert fresh.stats.manifest_get == 0  # found new: the client knows its own index
        fresh.restart_client()
        await put_image(fresh, "app", b"sig2", subject=subject, artifact_type=SIG)
        assert fresh.stats.manifest_get == 1  # a new client reads it first
        assert len(await fresh.listed_referrers("app", subject)) == 2

    run(main)


def test_with_the_api_referrers_are_listed_by_subject_and_no_fallback_tag_is_kept() -> None:
    async def main() -> None:
        t = MemoryTarget(referrers_api=True)
        image = await put_image(t, "app", b"image")
        res_sig = await put_image(t, "app", b"sig", subject=image, artifact_type=SIG)
        assert [d.digest for d in await t.referrers("app", image)] == [res_sig.digest]
        assert await t.referrers("app", image, "other/type") == []
        assert not t.view("app").tags
        assert await t.referrers_api_supported("app") and t.stats.referrers == 2

    run(main)


def test_a_repository_is_new_until_its_first_tag() -> None:
    async def main() -> None:
        t = MemoryTarget()
        probe = abilities_of(t).repository_probe
        assert probe is not None and await probe.repository_is_new("app")
        with pytest.raises(NotFoundError) as info:
            await t.tags("app")
        assert info.value.code == "NAME_UNKNOWN"
        image = await put_image(t, "app", b"image")
        assert await probe.repository_is_new("app")  # untagged content: still unknown by name
        raw = (await t.fetch_manifest("app", image))[1]
        await t.tag("app", image, raw, "v1")
        assert not await probe.repository_is_new("app") and await t.tags("app") == ["v1"]
        assert t.stats.tags == 5
        assert isinstance(t, CatalogLister) and await t.catalog() == ["app"]

    run(main)


def test_faults_fire_by_kind_name_and_repository_after_and_times() -> None:
    async def main() -> None:
        t = MemoryTarget()
        image = await put_image(t, "app", b"image", tags=("v1",))
        t.fail("manifest_get", lambda: NotFoundError("gone"), name=image.digest, after=1, times=1)
        t.fail("manifest_get", repository="elsewhere")
        await t.fetch_manifest("app", image)
        with pytest.raises(NotFoundError, match="gone"):
            await t.fetch_manifest("app", image)
        await t.fetch_manifest("app", image)
        await t.fetch_manifest("app", "v1")  # another name: never matched
        assert t.count("manifest_get", image.digest) == 3 and t.count("manifest_get") == 4

    run(main)
