"""RegistryTarget against real docker-registry processes (all five variants).

Blobs (empty, small, 100 MiB; monolithic and chunked; resumed), manifests of
all four media types byte for byte, mounts, referrers through the API (shim)
and through the fallback tag (plain distribution), tag pagination, and the
errors a user meets first (missing tag, bad TLS, refused connection, wrong
password).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import random
import socket
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from replicator.errors import (
    AuthenticationError,
    ConnectionFailedError,
    IntegrityError,
    NotFoundError,
    ProtocolError,
    ReferenceError,
    TLSError,
)
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for, digest_bytes
from replicator.oci.manifest import EMPTY_CONFIG, build_image_manifest
from replicator.oci.reference import referrers_tag
from replicator.targets.base import BlobPushResult, Target, UploadProgress
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import Credentials, RegistryOptions, RetryPolicy
from tests.infra.process import ManagedProcess, free_port
from tests.infra.registry import RegistryInstance, registry_binary

T = TypeVar("T")
MiB = 1024 * 1024


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine on a fresh event loop (sync tests, like the rest of the suite)."""

    async def main() -> T:
        return await factory()

    return asyncio.run(main())


def target_for(instance: Any, **overrides: Any) -> RegistryTarget:
    """A RegistryTarget configured for a registry instance (or a fault proxy)."""
    return RegistryTarget(instance.host, instance.options(**overrides))


# -- deterministic data without holding it twice ------------------------------------------


class Pattern:
    """Deterministic pseudo-random content of ``size`` bytes, streamed in 1 MiB pieces."""

    BLOCK = MiB

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self._block = random.Random(seed).randbytes(self.BLOCK)
        h = hashlib.sha256()
        for piece in self._pieces(0):
            h.update(piece)
        self.digest = f"sha256:{h.hexdigest()}"

    def _piece(self, index: int) -> bytes:
        k = (index * 7919) % self.BLOCK
        return self._block[k:] + self._block[:k]

    def _pieces(self, offset: int) -> Any:
        index, skip = divmod(offset, self.BLOCK)
        pos = index * self.BLOCK
        while pos < self.size:
            piece = self._piece(index)[: self.size - pos]
            yield piece[skip:] if skip else piece
            pos += len(piece)
            index += 1
            skip = 0

    def descriptor(self, media_type: str = mt.OCI_LAYER) -> Descriptor:
        """The blob's descriptor."""
        return Descriptor(media_type=media_type, digest=self.digest, size=self.size)

    def opener(self) -> Callable[[int], AsyncIterator[bytes]]:
        """A BlobOpener over this content; ``opened`` records the offsets asked for."""
        self.opened: list[int] = []

        async def open_at(offset: int) -> AsyncIterator[bytes]:
            self.opened.append(offset)
            for piece in self._pieces(offset):
                yield piece

        return open_at


def bytes_opener(data: bytes) -> Callable[[int], AsyncIterator[bytes]]:
    """A BlobOpener over in-memory bytes, in 1000-byte pieces."""

    async def open_at(offset: int) -> AsyncIterator[bytes]:
        for i in range(offset, len(data), 1000):
            yield data[i : i + 1000]

    return open_at


async def read_all(target: RegistryTarget, repo: str, desc: Descriptor) -> bytes:
    return b"".join([chunk async for chunk in target.fetch_blob(repo, desc)])


async def digest_of_download(target: RegistryTarget, repo: str, desc: Descriptor) -> str:
    h = hashlib.sha256()
    async for chunk in target.fetch_blob(repo, desc):
        h.update(chunk)
    return f"sha256:{h.hexdigest()}"


async def push_bytes(target: RegistryTarget, repo: str, data: bytes, media_type: str) -> Descriptor:
    desc = descriptor_for(data, media_type)
    await target.push_blob(repo, desc, bytes_opener(data))
    return desc


# -- blobs --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 3 * 1024 + 7])
@pytest.mark.parametrize("chunk_size", [None, 1024])
def test_blob_round_trip(
    registry_variant: RegistryInstance, unique_repo: str, size: int, chunk_size: int | None
) -> None:
    data = random.Random(size).randbytes(size)
    desc = descriptor_for(data, mt.OCI_LAYER)

    async def scenario() -> None:
        async with target_for(registry_variant) as target:
            assert isinstance(target, Target)
            assert not await target.blob_exists(unique_repo, desc)
            progress: list[UploadProgress] = []

            async def note(p: UploadProgress) -> None:
                progress.append(p)

            result = await target.push_blob(
                unique_repo, desc, bytes_opener(data), chunk_size=chunk_size, on_progress=note
            )
            assert result == BlobPushResult("uploaded", size)
            assert await target.blob_exists(unique_repo, desc)
            assert await read_all(target, unique_repo, desc) == data
            if chunk_size is not None and size:
                # The new session (offset 0), then 4 chunks of at most 1 KiB, each
                # acknowledged and reported.
                assert target.stats.blob_patch == 4
                assert [p.offset for p in progress] == [0, 1024, 2048, 3072, size]
                assert all(p.digest == desc.digest for p in progress)
            else:
                assert target.stats.blob_patch == 0
                assert target.stats.blob_put == 1

    run(scenario)


def test_blob_read_from_an_offset(registry_open: RegistryInstance, unique_repo: str) -> None:
    data = random.Random(5).randbytes(10_000)

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            desc = await push_bytes(target, unique_repo, data, mt.OCI_LAYER)
            tail = b"".join([c async for c in target.fetch_blob(unique_repo, desc, 6000)])
            assert tail == data[6000:]

    run(scenario)


def test_source_not_matching_the_descriptor_is_not_committed(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    data = b"the real content" * 100
    lie = Descriptor(mt.OCI_LAYER, digest_bytes(b"something else"), len(data))

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            for chunk_size in (None, 500):
                with pytest.raises(IntegrityError):
                    await target.push_blob(
                        unique_repo, lie, bytes_opener(data), chunk_size=chunk_size
                    )
                assert not await target.blob_exists(unique_repo, lie)
            # Streamed monolithic (above the in-memory size) and chunked: the last
            # piece is held back until the digest checked, so nothing is committed.
            big = Pattern(5 * MiB, seed=21)
            big_lie = Descriptor(mt.OCI_LAYER, digest_bytes(b"other"), big.size)
            for chunk_size in (None, MiB):
                with pytest.raises(IntegrityError):
                    await target.push_blob(
                        unique_repo, big_lie, big.opener(), chunk_size=chunk_size
                    )
                assert not await target.blob_exists(unique_repo, big_lie)
            # Content longer than declared is refused too.
            short = Descriptor(mt.OCI_LAYER, digest_bytes(data), len(data) - 1)
            with pytest.raises(IntegrityError):
                await target.push_blob(unique_repo, short, bytes_opener(data))

    run(scenario)


@pytest.mark.timeout(120)
def test_100_mib_blob_streams_monolithic_in_bounded_memory(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    blob = Pattern(100 * MiB, seed=1)
    desc = blob.descriptor()

    async def scenario() -> None:
        async with target_for(registry_open, monolithic_max=128 * MiB) as target:
            tracemalloc.start()
            try:
                result = await target.push_blob(unique_repo, desc, blob.opener())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert result.how == "uploaded" and result.bytes_sent == desc.size
            assert target.stats.blob_put == 1 and target.stats.blob_patch == 0
            assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB"
            assert await digest_of_download(target, unique_repo, desc) == desc.digest
            assert target.stats.bytes_received >= desc.size

    run(scenario)


@pytest.mark.timeout(120)
def test_100_mib_blob_chunked_in_bounded_memory(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    blob = Pattern(100 * MiB, seed=2)
    desc = blob.descriptor()

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            tracemalloc.start()
            try:
                result = await target.push_blob(
                    unique_repo, desc, blob.opener(), chunk_size=16 * MiB
                )
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert result.bytes_sent == desc.size
            assert target.stats.blob_patch == 7  # ceil(100 / 16)
            assert peak < 56 * MiB, f"peak {peak / MiB:.1f} MiB"
            assert await digest_of_download(target, unique_repo, desc) == desc.digest

    run(scenario)


def test_interrupted_chunked_upload_resumes_from_the_acknowledged_offset(
    registry_variant: RegistryInstance, unique_repo: str
) -> None:
    blob = Pattern(5 * 64 * 1024 + 123, seed=3)
    desc = blob.descriptor()

    class Killed(Exception):
        pass

    async def scenario() -> None:
        saved: list[UploadProgress] = []

        # Progress is reported when the session opens (offset 0) and after every
        # acknowledged chunk: stop once two chunks were acknowledged.
        async def kill_after_two(p: UploadProgress) -> None:
            saved.append(p)
            if p.offset == 2 * 64 * 1024:
                raise Killed

        first = target_for(registry_variant)
        opener = blob.opener()
        with pytest.raises(Killed):
            await first.push_blob(
                unique_repo, desc, opener, chunk_size=64 * 1024, on_progress=kill_after_two
            )
        await first.aclose()

        # The cancelled session is gone: a resume from it restarts cleanly.
        async with target_for(registry_variant) as again:
            gone = saved[-1]
            with pytest.raises(NotFoundError):
                await again.upload_status(gone.location)

        # A run interrupted (task cancelled) leaves its session open; the next run
        # continues it from the offset the registry acknowledged.
        recorded: list[UploadProgress] = []
        parked = asyncio.Event()

        async def park_after_two(p: UploadProgress) -> None:
            recorded.append(p)
            if p.offset == 2 * 64 * 1024:
                parked.set()
                await asyncio.sleep(3600)

        async with target_for(registry_variant) as interrupted:
            task = asyncio.create_task(
                interrupted.push_blob(
                    unique_repo, desc, opener, chunk_size=64 * 1024, on_progress=park_after_two
                )
            )
            await parked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        saved_progress = recorded[-1]
        assert saved_progress.offset == 2 * 64 * 1024

        leftover: list[UploadProgress] = []

        async def note(p: UploadProgress) -> None:
            leftover.append(p)

        async with target_for(registry_variant) as second:
            confirmed = await second.upload_status(saved_progress.location)
            assert confirmed == saved_progress.offset
            result = await second.push_blob(
                unique_repo,
                desc,
                opener,
                resume=saved_progress,
                on_progress=note,
                chunk_size=64 * 1024,
            )
            assert result.bytes_sent == desc.size - confirmed
            assert blob.opened[-1] == confirmed
            assert leftover[-1].offset == desc.size
            assert await digest_of_download(second, unique_repo, desc) == desc.digest

        # Resuming a session that no longer exists starts a fresh upload.
        async with target_for(registry_variant) as third:
            other = Pattern(70_000, seed=4)
            stale = UploadProgress(unique_repo, other.digest, gone.location, 65536)
            result = await third.push_blob(
                unique_repo, other.descriptor(), other.opener(), resume=stale
            )
            assert result.bytes_sent == other.size
            assert await third.blob_exists(unique_repo, other.descriptor())

    run(scenario)


def test_mount_between_repositories(registry_variant: RegistryInstance, unique_repo: Any) -> None:
    source, dest = str(unique_repo), str(unique_repo())
    data = random.Random(9).randbytes(50_000)

    async def scenario() -> None:
        async with target_for(registry_variant) as target:
            desc = await push_bytes(target, source, data, mt.OCI_LAYER)
            uploads_before = (target.stats.blob_put, target.stats.blob_patch)
            assert not await target.blob_exists(dest, desc)
            assert await target.mount_blob(dest, desc, source) is True
            assert await target.blob_exists(dest, desc)
            assert (target.stats.blob_put, target.stats.blob_patch) == uploads_before
            assert target.stats.blob_mount == 1
            assert await read_all(target, dest, desc) == data
            # Not present in the named source: no mount.  The session the 202 opened
            # is kept for a push_blob of that blob; unused, aclose cancels it.
            missing = descriptor_for(b"never pushed", mt.OCI_LAYER)
            assert await target.mount_blob(dest, missing, source) is False
            assert target.stats.blob_upload_cancel == 0
            assert not await target.blob_exists(dest, missing)
        assert target.stats.blob_upload_cancel == 1

    run(scenario)


# -- manifests ----------------------------------------------------------------------------


def _pretty(doc: dict[str, Any]) -> bytes:
    """Non-canonical JSON: indented, odd spacing, trailing newline."""
    return (json.dumps(doc, indent=3, separators=(" ,", " :  ")) + "\n\n").encode()


def test_manifests_of_all_four_types_round_trip_byte_exact(
    registry_variant: RegistryInstance, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with target_for(registry_variant) as target:
            repo = unique_repo
            layer = await push_bytes(target, repo, b"layer bytes", mt.OCI_LAYER_GZIP)
            config = await push_bytes(target, repo, b'{"architecture":"amd64"}', mt.OCI_CONFIG)
            dconfig = await push_bytes(target, repo, b'{"os":"linux"}', mt.DOCKER_CONFIG)
            dlayer = await push_bytes(target, repo, b"docker layer", mt.DOCKER_LAYER_GZIP)

            oci_manifest = _pretty(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "config": config.to_json(),
                    "layers": [layer.to_json()],
                    "annotations": {"z": "last", "a": "first"},
                }
            )
            docker_manifest = _pretty(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.DOCKER_MANIFEST,
                    "config": dconfig.to_json(),
                    "layers": [dlayer.to_json()],
                }
            )
            oci_desc = descriptor_for(oci_manifest, mt.OCI_MANIFEST)
            docker_desc = descriptor_for(docker_manifest, mt.DOCKER_MANIFEST)
            plat = {"architecture": "amd64", "os": "linux"}
            oci_index = _pretty(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_INDEX,
                    "manifests": [{**oci_desc.to_json(), "platform": plat}],
                }
            )
            docker_list = _pretty(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.DOCKER_MANIFEST_LIST,
                    "manifests": [{**docker_desc.to_json(), "platform": plat}],
                }
            )
            cases = [
                (oci_manifest, mt.OCI_MANIFEST, "oci"),
                (docker_manifest, mt.DOCKER_MANIFEST, "docker"),
                (oci_index, mt.OCI_INDEX, "index"),
                (docker_list, mt.DOCKER_MANIFEST_LIST, "list"),
            ]
            for raw, media_type, tag in cases:
                desc = descriptor_for(raw, media_type)
                result = await target.push_manifest(repo, desc, raw, (tag,))
                assert result.descriptor == desc and not result.referrers_updated
                got_desc, got = await target.fetch_manifest(repo, tag)
                assert got == raw
                assert got_desc == Descriptor(media_type, desc.digest, len(raw))
                by_digest_desc, by_digest = await target.fetch_manifest(repo, desc)
                assert by_digest == raw and by_digest_desc is desc
                assert await target.resolve(repo, tag) == got_desc
                assert await target.manifest_exists(repo, desc)
            assert await target.tags(repo) == ["docker", "index", "list", "oci"]

            # Re-tagging an existing manifest, and pushing by digest only.
            await target.tag(repo, oci_desc, oci_manifest, "again")
            assert (await target.resolve(repo, "again")).digest == oci_desc.digest
            untagged = _pretty({**json.loads(oci_manifest), "annotations": {"n": "2"}})
            udesc = descriptor_for(untagged, mt.OCI_MANIFEST)
            await target.push_manifest(repo, udesc, untagged)
            assert (await target.fetch_manifest(repo, udesc.digest))[1] == untagged

            # Bytes that do not match the descriptor are refused before sending.
            with pytest.raises(IntegrityError):
                await target.push_manifest(repo, udesc, oci_manifest)

    run(scenario)


def test_missing_tag_gives_a_clear_not_found(
    registry_variant: RegistryInstance, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with target_for(registry_variant) as target:
            await push_bytes(target, unique_repo, b"x", mt.OCI_LAYER)  # repository exists
            with pytest.raises(NotFoundError) as info:
                await target.fetch_manifest(unique_repo, "v9")
            assert str(info.value) == (
                f'{registry_variant.host}/{unique_repo}: manifest "v9" not found (MANIFEST_UNKNOWN)'
            )
            with pytest.raises(NotFoundError):
                await target.resolve(unique_repo, "v9")
            missing = descriptor_for(b"nope", mt.OCI_LAYER)
            assert not await target.manifest_exists(unique_repo, missing)
            with pytest.raises(NotFoundError):
                await read_all(target, unique_repo, missing)

    run(scenario)


# -- referrers ----------------------------------------------------------------------------


async def _push_image(target: RegistryTarget, repo: str, tag: str) -> Descriptor:
    layer = await push_bytes(target, repo, f"layer of {tag}".encode(), mt.OCI_LAYER)
    config = await push_bytes(target, repo, b"{}", mt.OCI_CONFIG)
    raw = build_image_manifest(
        config=config, layers=[layer], artifact_type=None, subject=None, annotations=None
    )
    desc = descriptor_for(raw, mt.OCI_MANIFEST)
    await target.push_manifest(repo, desc, raw, (tag,))
    return desc


async def _attach(
    target: RegistryTarget,
    repo: str,
    subject: Descriptor,
    artifact_type: str,
    text: str,
    *,
    empty_pushed: bool = False,
) -> Descriptor:
    if not empty_pushed:
        await push_bytes(target, repo, b"{}", mt.OCI_EMPTY)
    blob = await push_bytes(target, repo, text.encode(), "application/json")
    raw = build_image_manifest(
        config=EMPTY_CONFIG,
        layers=[blob],
        artifact_type=artifact_type,
        subject=subject,
        annotations={"note": text},
    )
    desc = descriptor_for(raw, mt.OCI_MANIFEST)
    result = await target.push_manifest(repo, desc, raw)
    assert result.referrers_updated
    return desc


@pytest.mark.parametrize("variant", ["open", "token", "referrers"])
def test_referrers_written_read_and_deleted(
    variant: str, registries: Any, unique_repo: str
) -> None:
    instance: RegistryInstance = registries.get(variant)
    has_api = variant == "referrers"

    async def scenario() -> None:
        async with target_for(instance) as target:
            repo = unique_repo
            image = await _push_image(target, repo, "v1")
            assert await target.referrers(repo, image) == []
            sig = await _attach(target, repo, image, "signature/example", "sig")
            sbom = await _attach(target, repo, image, "sbom/example", "sbom")
            # Attaching the same referrer twice does not duplicate it.
            raw_sig = (await target.fetch_manifest(repo, sig))[1]
            await target.push_manifest(repo, sig, raw_sig)

            found = await target.referrers(repo, image)
            assert sorted(d.digest for d in found) == sorted([sig.digest, sbom.digest])
            by_digest = {d.digest: d for d in found}
            assert by_digest[sig.digest].artifact_type == "signature/example"
            assert by_digest[sbom.digest].annotations == {"note": "sbom"}
            only = await target.referrers(repo, image, "sbom/example")
            assert [d.digest for d in only] == [sbom.digest]
            # A referrer of a referrer (the SBOM's signature).
            sbom_sig = await _attach(target, repo, sbom, "signature/example", "sbom sig")
            assert [d.digest for d in await target.referrers(repo, sbom)] == [sbom_sig.digest]

            assert await target.referrers_api_supported(repo) is has_api
            fallback = referrers_tag(image.digest)
            tags = await target.tags(repo)
            if has_api:
                assert fallback not in tags
            else:
                assert fallback in tags
                index_desc, _ = await target.fetch_manifest(repo, fallback)
                assert index_desc.media_type == mt.OCI_INDEX

            await target.delete_manifest(repo, sig)
            assert not await target.manifest_exists(repo, sig)
            assert [d.digest for d in await target.referrers(repo, image)] == [sbom.digest]
            if not has_api:
                # The replaced index was deleted, not left behind as an orphan.
                assert not await target.manifest_exists(repo, index_desc)
                current, _ = await target.fetch_manifest(repo, fallback)
                assert current.digest != index_desc.digest

            await target.delete_manifest(repo, sbom_sig)
            await target.delete_manifest(repo, sbom)
            assert await target.referrers(repo, image) == []
            assert await target.referrers(repo, sbom) == []
            if not has_api:
                remaining = await target.tags(repo)
                assert remaining == ["v1"]
                assert not await target.manifest_exists(repo, current)

    run(scenario)


def _attached_image(instance: Any, repo: str, count: int) -> tuple[Descriptor, list[Descriptor]]:
    """An image in ``repo`` with ``count`` referrers listed in its fallback index."""

    async def scenario() -> tuple[Descriptor, list[Descriptor]]:
        async with target_for(instance) as target:
            image = await _push_image(target, repo, "v1")
            made = [
                await _attach(target, repo, image, "signature/example", f"r{i}")
                for i in range(count)
            ]
            return image, made

    return run(scenario)


def test_unlist_referrers_takes_them_out_in_one_read_modify_write(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: str
) -> None:
    image, (a, b, c) = _attached_image(registry_open, unique_repo, 3)
    proxy = fault_proxy(registry_open)
    index_path = f"/v2/{unique_repo}/manifests/{referrers_tag(image.digest)}"
    absent = "sha256:" + "0" * 64

    async def scenario() -> None:
        async with target_for(proxy) as target:
            old_index, _ = await target.fetch_manifest(unique_repo, referrers_tag(image.digest))
            await target.delete_manifest(unique_repo, a, update_referrers=False)
            await target.delete_manifest(unique_repo, b, update_referrers=False)
            proxy.reset()
            # Two listed digests, one listed twice, one never listed: only the
            # entries present count, and they go in one update.
            removed = await target.unlist_referrers(
                unique_repo, image, [a.digest, b.digest, a.digest, absent]
            )
            assert removed == 2
            stats = proxy.stats()
            assert stats.paths("GET", "manifest") == {index_path: 1}
            assert stats.paths("PUT", "manifest") == {index_path: 1}
            # The replaced index is deleted by digest, not left behind.
            assert stats.paths("DELETE", "manifest") == {
                f"/v2/{unique_repo}/manifests/{old_index.digest}": 1
            }
            assert [d.digest for d in await target.referrers(unique_repo, image)] == [c.digest]
            # Nothing listed of what is asked: no write at all.
            proxy.reset()
            assert await target.unlist_referrers(unique_repo, image, [a.digest, absent]) == 0
            assert proxy.stats().requests("PUT") == proxy.stats().requests("DELETE") == 0

    run(scenario)


def test_unlist_referrers_deletes_the_index_and_its_tag_once_empty(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: str
) -> None:
    image, (a, b) = _attached_image(registry_open, unique_repo, 2)
    proxy = fault_proxy(registry_open)
    fallback = referrers_tag(image.digest)

    async def scenario() -> None:
        async with target_for(proxy) as target:
            index, _ = await target.fetch_manifest(unique_repo, fallback)
            for referrer in (a, b):
                await target.delete_manifest(unique_repo, referrer, update_referrers=False)
            proxy.reset()
            assert await target.unlist_referrers(unique_repo, image, [a.digest, b.digest]) == 2
            stats = proxy.stats()
            assert stats.requests("PUT", "manifest") == 0  # no empty index written
            assert stats.paths("DELETE", "manifest") == {
                f"/v2/{unique_repo}/manifests/{index.digest}": 1
            }
            assert await target.tags(unique_repo) == ["v1"]
            assert await target.referrers(unique_repo, image) == []
            assert await target.unlist_referrers(unique_repo, image, [a.digest]) == 0

    run(scenario)


def test_unlist_referrers_is_a_no_op_with_the_referrers_api(
    registry_referrers: RegistryInstance, unique_repo: str
) -> None:
    image, (a,) = _attached_image(registry_referrers, unique_repo, 1)

    async def scenario() -> None:
        async with target_for(registry_referrers) as target:
            await target.delete_manifest(unique_repo, a, update_referrers=False)
            assert await target.unlist_referrers(unique_repo, image, [a.digest]) == 0
            assert await target.referrers(unique_repo, image) == []
            assert referrers_tag(image.digest) not in await target.tags(unique_repo)

    run(scenario)


def test_fallback_tag_holding_something_else_counts_as_no_referrers(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with target_for(registry_open) as target:
            image = await _push_image(target, unique_repo, "v1")
            other = await _push_image(target, unique_repo, "v2")
            raw = (await target.fetch_manifest(unique_repo, other))[1]
            await target.tag(unique_repo, other, raw, referrers_tag(image.digest))
            assert await target.referrers(unique_repo, image) == []

    run(scenario)


def test_concurrent_attaches_all_land_in_the_fallback_index(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with target_for(registry_open) as target:
            image = await _push_image(target, unique_repo, "v1")
            # The shared empty config goes up once first: six uploads of one blob at
            # once race inside distribution 2.8 (a manifest PUT naming it was once
            # refused DIGEST_INVALID); the index updates are what is tested here.
            await push_bytes(target, unique_repo, b"{}", mt.OCI_EMPTY)
            made = await asyncio.gather(
                *(
                    _attach(target, unique_repo, image, "note/x", f"n{i}", empty_pushed=True)
                    for i in range(6)
                )
            )
            found = await target.referrers(unique_repo, image)
            assert sorted(d.digest for d in found) == sorted(d.digest for d in made)

    run(scenario)


async def _referrer_manifests(
    target: RegistryTarget, repo: str, subject: Descriptor, n: int
) -> list[tuple[Descriptor, bytes]]:
    """``n`` referrers of ``subject`` whose blobs are already pushed."""
    await push_bytes(target, repo, b"{}", mt.OCI_EMPTY)
    out: list[tuple[Descriptor, bytes]] = []
    for i in range(n):
        blob = await push_bytes(target, repo, f"note {i}".encode(), "application/json")
        raw = build_image_manifest(
            config=EMPTY_CONFIG,
            layers=[blob],
            artifact_type="note/x",
            subject=subject,
            annotations={"note": str(i)},
        )
        out.append((descriptor_for(raw, mt.OCI_MANIFEST), raw))
    return out


def test_concurrent_fallback_updates_of_one_subject_are_written_once(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with target_for(registry_open) as direct:
            image = await _push_image(direct, unique_repo, "v1")
            made = await _referrer_manifests(direct, unique_repo, image, 6)
        proxy = fault_proxy(registry_open)
        tag_path = f"/v2/{unique_repo}/manifests/{referrers_tag(image.digest)}"
        # the first read of the fallback index is slow: every other push queues behind it
        proxy.delay("GET", tag_path, 0.5)
        async with target_for(proxy) as target:
            results = await asyncio.gather(
                *(target.push_manifest(unique_repo, d, raw) for d, raw in made)
            )
            assert all(r.referrers_updated for r in results)
            found = await target.referrers(unique_repo, image)
            assert sorted(d.digest for d in found) == sorted(d.digest for d, _ in made)
        paths = proxy.stats()
        # one read of the (absent) index while all six were queued, then one write
        assert paths.paths("GET", "manifest")[tag_path] == 2  # + the listing above
        assert paths.paths("PUT", "manifest")[tag_path] == 1
        assert paths.requests("DELETE", "manifest") == 0

    run(scenario)


def test_a_cancelled_fallback_update_loses_no_other_entry(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: str
) -> None:
    async def scenario() -> None:
        async with target_for(registry_open) as direct:
            image = await _push_image(direct, unique_repo, "v1")
            made = await _referrer_manifests(direct, unique_repo, image, 5)
        proxy = fault_proxy(registry_open)
        tag_path = f"/v2/{unique_repo}/manifests/{referrers_tag(image.digest)}"
        proxy.delay("GET", tag_path, 0.5)
        async with target_for(proxy) as target:
            tasks = [
                asyncio.ensure_future(target.push_manifest(unique_repo, d, raw)) for d, raw in made
            ]
            await asyncio.sleep(0.25)  # every push is queued behind the slow first read
            tasks[0].cancel()  # the lock holder, in the middle of its read
            tasks[2].cancel()  # a waiter
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(done[0], asyncio.CancelledError)
            assert isinstance(done[2], asyncio.CancelledError)
            found = {d.digest for d in await target.referrers(unique_repo, image)}
            assert {made[i][0].digest for i in (1, 3, 4)} <= found
            # and later updates still work
            await target.delete_manifest(unique_repo, made[1][0])
            found = {d.digest for d in await target.referrers(unique_repo, image)}
            assert made[1][0].digest not in found
            assert {made[i][0].digest for i in (3, 4)} <= found

    run(scenario)


def test_concurrent_listings_ask_the_referrers_api_once_per_repository(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    fault_proxy: Any,
    unique_repo: str,
) -> None:
    async def scenario(instance: RegistryInstance, has_api: bool) -> None:
        async with target_for(instance) as direct:
            images = [await _push_image(direct, unique_repo, f"v{i}") for i in range(4)]
            note = await _attach(direct, unique_repo, images[0], "note/x", "n")
        proxy = fault_proxy(instance)
        async with target_for(proxy) as target:
            found = await asyncio.gather(*(target.referrers(unique_repo, i) for i in images))
            assert [[d.digest for d in f] for f in found] == [[note.digest], [], [], []]
        stats = proxy.stats()
        if has_api:
            # each listing is its own API request: no extra probe
            assert stats.requests("GET", "referrers") == 4
        else:
            # one API request learned there is none; one tag listing (asked once for
            # the four listings) showed the only fallback tag, and only that one was read
            assert stats.requests("GET", "referrers") == 1
            assert stats.requests("GET", "tags") == 1
            assert stats.paths("GET", "manifest") == {
                f"/v2/{unique_repo}/manifests/{referrers_tag(images[0].digest)}": 1
            }

    run(lambda: scenario(registry_open, False))
    run(lambda: scenario(registry_referrers, True))


def test_listed_tags_follow_this_targets_own_fallback_writes(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: str
) -> None:
    """The tag listing is taken once; the fallback tags this target writes or drops update it."""

    async def scenario() -> None:
        proxy = fault_proxy(registry_open)
        async with target_for(proxy) as target:
            image = await _push_image(target, unique_repo, "v1")
            assert await target.referrers(unique_repo, image) == []
            note = await _attach(target, unique_repo, image, "note/x", "n")
            found = await target.referrers(unique_repo, image)
            assert [d.digest for d in found] == [note.digest]
            await target.delete_manifest(unique_repo, note)
            proxy.reset()
            assert await target.referrers(unique_repo, image) == []
            # the dropped fallback tag is known gone: nothing read, nothing listed again
            assert proxy.stats().requests("GET") == 0, proxy.stats().paths("GET")
        assert proxy.stats().requests("GET", "tags") == 0

    run(scenario)


# -- listings -----------------------------------------------------------------------------


def test_tags_are_listed_sorted(registry_variant: RegistryInstance, unique_repo: str) -> None:
    async def scenario() -> None:
        async with target_for(registry_variant) as target:
            image = await _push_image(target, unique_repo, "t00")
            raw = (await target.fetch_manifest(unique_repo, image))[1]
            names = [f"t{i:02d}" for i in range(25)]
            await asyncio.gather(*(target.tag(unique_repo, image, raw, n) for n in names[::-1]))
            # distribution 2.8 ignores ``n`` on tag lists (one page); pagination is
            # proven on the catalog below, which shares the code path.
            assert await target.tags(unique_repo, page_size=10) == names
            assert await target.tags(unique_repo) == names

    run(scenario)


def test_listings_follow_link_pages(registry_open: RegistryInstance, unique_repo: Any) -> None:
    repos = sorted(str(unique_repo(f"page{i:02d}")) for i in range(25))

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            await asyncio.gather(*(_push_image(target, r, "v1") for r in repos))
            before = target.stats.catalog
            listed = await target.catalog(page_size=10)
            pages = target.stats.catalog - before
            assert set(repos) <= set(listed)
            assert listed == sorted(listed)
            assert pages == -(-len(listed) // 10) >= 3
            # A page cap stops with an error instead of looping forever (a listing
            # cut short silently would be a wrong answer).
            capped = target_for(registry_open, max_pages=2)
            async with capped:
                with pytest.raises(ProtocolError, match="more than 2 pages"):
                    await capped.catalog(page_size=10)
                assert capped.stats.catalog == 2

    run(scenario)


def test_catalog_and_ping(registry_open: RegistryInstance, unique_repo: str) -> None:
    async def scenario() -> None:
        async with target_for(registry_open) as target:
            await target.ping()
            await push_bytes(target, unique_repo, b"x", mt.OCI_LAYER)
            await _push_image(target, unique_repo, "v1")
            assert unique_repo in await target.catalog(page_size=2)

    run(scenario)


# -- connection and auth failures -----------------------------------------------------------


def test_untrusted_certificate_is_a_tls_error(registry_tls: RegistryInstance) -> None:
    async def scenario() -> None:
        options = RegistryOptions(plain_http=False, retry=RetryPolicy(attempts=1))
        async with RegistryTarget(registry_tls.host, options) as target:
            with pytest.raises(TLSError) as info:
                await target.ping()
        message = str(info.value)
        assert message.startswith(f"TLS certificate of {registry_tls.host} did not verify: ")
        assert message.endswith("use --ca-file or --insecure")
        insecure = RegistryOptions(plain_http=False, insecure=True)
        async with RegistryTarget(registry_tls.host, insecure) as target:
            await target.ping()

    run(scenario)


def test_refused_connection_is_a_connection_error() -> None:
    async def scenario() -> None:
        options = RegistryOptions(plain_http=True, retry=RetryPolicy(attempts=2, base_delay=0.01))
        async with RegistryTarget("127.0.0.1:9", options) as target:
            started = time.monotonic()
            with pytest.raises(ConnectionFailedError) as info:
                await target.resolve("app", "v1")
            assert time.monotonic() - started < 5
        assert str(info.value).startswith("cannot reach 127.0.0.1:9: ")

    run(scenario)


def test_wrong_password_is_an_authentication_error(registry_basic: RegistryInstance) -> None:
    async def scenario() -> None:
        options = registry_basic.options()
        bad = RegistryOptions(
            credentials=Credentials(username=registry_basic.username, password="wrong-secret"),
            plain_http=options.plain_http,
        )
        async with RegistryTarget(registry_basic.host, bad) as target:
            with pytest.raises(AuthenticationError) as info:
                await target.tags("some/repo")
        assert "wrong-secret" not in str(info.value)

    run(scenario)


# -- redirects ------------------------------------------------------------------------------


class _ObjectStore:
    """A static file server standing in for object storage; records request headers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: list[dict[str, str]] = []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                store.seen.append({k.lower(): v for k, v in self.headers.items()})
                path = (store.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
                if not path.is_file() or store.root.resolve() not in path.parents:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def redirecting_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A real docker-registry whose blob GETs redirect (307) to another origin.

    distribution's ``redirect`` storage middleware sends clients to
    ``<baseurl><storage path>``; the "object store" serves the registry's own
    storage directory under ``localhost`` (a different origin than 127.0.0.1).
    """
    work = tmp_path_factory.mktemp("redirecting")
    data = work / "data"
    data.mkdir()
    store = _ObjectStore(data)
    port = free_port()
    config = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(data)}},
        "middleware": {
            "storage": [
                {"name": "redirect", "options": {"baseurl": f"http://localhost:{store.port}/"}}
            ]
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "s" * 16},
    }
    (work / "config.yml").write_text(json.dumps(config))
    proc = ManagedProcess(
        "docker-registry (redirect)",
        [registry_binary(), "serve", str(work / "config.yml")],
        log_path=work / "registry.log",
        ready_url=f"http://127.0.0.1:{port}/v2/",
    )
    proc.start()
    try:
        yield f"127.0.0.1:{port}", store
    finally:
        proc.stop()
        store.stop()


def test_blob_redirect_is_followed_without_the_registry_authorization(
    redirecting_registry: tuple[str, Any], unique_repo: str
) -> None:
    host, store = redirecting_registry
    data = random.Random(11).randbytes(200_000)
    secret = "registry-only-token-value"

    async def scenario() -> None:
        # A preset bearer token is sent on every registry request (the open
        # registry ignores it); it must not travel to the object store.
        options = RegistryOptions(credentials=Credentials(registry_token=secret), plain_http=True)
        async with RegistryTarget(host, options) as target:
            desc = await push_bytes(target, unique_repo, data, mt.OCI_LAYER)
            assert await read_all(target, unique_repo, desc) == data
            assert target.stats.blob_get == 2  # the registry, then the object store

    run(scenario)
    assert store.seen, "the blob GET was not redirected"
    assert all("authorization" not in headers for headers in store.seen)


def test_referrers_api_pages_are_followed(
    registry_referrers: RegistryInstance, unique_repo: str
) -> None:
    def page_size(n: int) -> None:
        req = urllib.request.Request(
            f"{registry_referrers.url}/_shim/config?page_size={n}", method="PUT"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    async def scenario() -> None:
        async with target_for(registry_referrers) as target:
            image = await _push_image(target, unique_repo, "v1")
            made = [
                await _attach(target, unique_repo, image, f"kind/{i % 2}", f"r{i}")
                for i in range(5)
            ]
            page_size(2)
            try:
                before = target.stats.referrers
                found = await target.referrers(unique_repo, image)
                pages = target.stats.referrers - before
                odd = await target.referrers(unique_repo, image, "kind/1")
            finally:
                page_size(0)
            assert sorted(d.digest for d in found) == sorted(d.digest for d in made)
            assert pages == 3
            assert sorted(d.digest for d in odd) == sorted(d.digest for d in made[1::2])

    run(scenario)


def test_range_ignored_by_the_server_is_handled_by_skipping(
    redirecting_registry: tuple[str, Any], unique_repo: str
) -> None:
    # The stand-in object store ignores Range and answers 200 with the whole blob.
    host, store = redirecting_registry
    data = random.Random(12).randbytes(300_000)

    async def scenario() -> None:
        async with RegistryTarget(host, RegistryOptions(plain_http=True)) as target:
            desc = await push_bytes(target, unique_repo, data, mt.OCI_LAYER)
            tail = b"".join([c async for c in target.fetch_blob(unique_repo, desc, 123_456)])
            assert tail == data[123_456:]

    run(scenario)
    assert any("range" in headers for headers in store.seen)


def test_blob_whose_size_differs_from_the_descriptor_is_an_integrity_error(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    data = random.Random(13).randbytes(5000)

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            desc = await push_bytes(target, unique_repo, data, mt.OCI_LAYER)
            longer = Descriptor(desc.media_type, desc.digest, desc.size + 10)
            with pytest.raises(IntegrityError) as info:
                await read_all(target, unique_repo, longer)
            assert "size mismatch" in str(info.value)
            assert target.stats.blob_get == 1  # no pointless resumes
            shorter = Descriptor(desc.media_type, desc.digest, desc.size - 10)
            with pytest.raises(IntegrityError):
                await read_all(target, unique_repo, shorter)

    run(scenario)


def test_tls_spoken_to_a_plain_http_registry_says_so(registry_open: RegistryInstance) -> None:
    async def scenario() -> None:
        options = RegistryOptions(plain_http=False, retry=RetryPolicy(attempts=2))
        async with RegistryTarget(registry_open.host, options) as target:
            with pytest.raises(TLSError) as info:
                await target.ping()
        assert "does not speak TLS" in str(info.value)
        assert "--plain-http" in str(info.value)

    run(scenario)


def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"GARBAGE ANSWER\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def scenario() -> None:
        options = RegistryOptions(plain_http=True, retry=RetryPolicy(attempts=3))
        async with RegistryTarget(f"127.0.0.1:{port}", options) as target:
            with pytest.raises(ProtocolError) as info:
                await target.resolve("app", "v1")
            assert str(info.value) == f"127.0.0.1:{port}/app: the answer is not valid HTTP"

    try:
        run(scenario)
    finally:
        stop.set()
        thread.join()
        server.close()


def test_malformed_names_are_refused_before_any_request(registry_open: RegistryInstance) -> None:
    async def scenario() -> None:
        async with target_for(registry_open) as target:
            desc = descriptor_for(b"x", mt.OCI_LAYER)
            for repo in ("../etc", "Upper/case", "a//b", "", "a/" * 200):
                with pytest.raises(ReferenceError):
                    await target.blob_exists(repo, desc)
            for tag in ("-bad", "a" * 129, "x/y", "sha256:nothex"):
                with pytest.raises(ReferenceError):
                    await target.resolve("app", tag)
            with pytest.raises(ReferenceError):
                await target.push_blob("../up", desc, bytes_opener(b"x"))
            assert sum(target.stats.as_dict().values()) == 0

    run(scenario)


def test_mount_asks_both_scopes_in_one_token(
    registry_token: RegistryInstance, unique_repo: Any
) -> None:
    # "limited" may pull shared/* and push lim/*: only a token carrying both
    # scopes lets the registry mount from one into the other.
    source, dest = str(unique_repo("shared")), str(unique_repo("lim"))
    data = random.Random(14).randbytes(10_000)

    async def scenario() -> None:
        async with target_for(registry_token, user="admin") as admin:
            desc = await push_bytes(admin, source, data, mt.OCI_LAYER)
        async with target_for(registry_token, user="limited") as limited:
            assert await limited.mount_blob(dest, desc, source) is True
            assert await limited.blob_exists(dest, desc)
            assert limited.stats.blob_upload_start == 0

    run(scenario)
    wanted = {f"repository:{dest}:pull,push", f"repository:{source}:pull"}
    asked = [set(entry["scopes"]) for entry in registry_token.token_log()]
    assert any(wanted <= scopes for scopes in asked)
