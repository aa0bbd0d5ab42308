"""Streamed uploads: memory stays flat whatever the chunk size; ``verify=False``.

A chunked upload sends each PATCH body straight from the source stream, so the
Python heap holds a few of the stream's pieces, not a chunk.  ``verify=False``
(the engine's push of a ``fetch_blob`` stream) skips hashing on the way: the
registry's own digest check at the closing ``PUT`` still refuses wrong content,
and sizes are still checked on our side.
"""

from __future__ import annotations

import hashlib
import random
import tracemalloc
from collections.abc import AsyncIterator, Callable

import pytest

from replicator.errors import IntegrityError, RegistryError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import digest_bytes
from tests.infra.registry import RegistryInstance
from tests.integration.test_registry_client import MiB, run, target_for

KiB = 1024
PIECE = 256 * KiB  # what aiohttp hands out per socket read


class Cycling:
    """``size`` bytes made of a few 256 KiB blocks in turn: no allocation per piece."""

    def __init__(self, size: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.blocks = [rng.randbytes(PIECE) for _ in range(7)]
        self.size = size
        h = hashlib.sha256()
        for piece in self._pieces(0):
            h.update(piece)
        self.digest = f"sha256:{h.hexdigest()}"
        self.opened: list[int] = []

    def _pieces(self, offset: int) -> list[bytes]:
        out: list[bytes] = []
        index, skip = divmod(offset, PIECE)
        pos = index * PIECE
        while pos < self.size:
            block = self.blocks[index % len(self.blocks)]
            piece = block if self.size - pos >= PIECE else block[: self.size - pos]
            out.append(piece[skip:] if skip else piece)
            pos += len(piece)
            index += 1
            skip = 0
        return out

    def descriptor(self) -> Descriptor:
        return Descriptor(media_type=mt.OCI_LAYER, digest=self.digest, size=self.size)

    def opener(self) -> Callable[[int], AsyncIterator[bytes]]:
        async def open_at(offset: int) -> AsyncIterator[bytes]:
            self.opened.append(offset)
            for piece in self._pieces(offset):
                yield piece

        return open_at


def _peak_mib() -> float:
    return tracemalloc.get_traced_memory()[1] / MiB


def test_chunked_upload_and_copy_of_a_big_blob_keep_allocations_flat(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    blob = Cycling(112 * MiB + 12345)
    desc = blob.descriptor()
    chunk = 32 * MiB
    copy_repo = f"{unique_repo}-copy"
    peaks: dict[str, float] = {}

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            tracemalloc.start()
            try:
                result = await target.push_blob(
                    unique_repo, desc, blob.opener(), chunk_size=chunk, verify=False
                )
                peaks["push"] = _peak_mib()
                assert result.how == "uploaded"
                assert result.bytes_sent == desc.size
                assert target.stats.blob_patch == 4
                # The engine's path: the source is a fetch_blob stream (it verifies),
                # the push does not hash again; default sizes (chunked above 32 MiB).
                tracemalloc.reset_peak()
                before = target.stats.blob_patch
                result = await target.push_blob(
                    copy_repo,
                    desc,
                    lambda offset: target.fetch_blob(unique_repo, desc, offset),
                    verify=False,
                )
                peaks["copy"] = _peak_mib()
                assert result.how == "uploaded"
                assert target.stats.blob_patch - before == 4
            finally:
                tracemalloc.stop()
            assert await target.blob_exists(unique_repo, desc)
            assert await target.blob_exists(copy_repo, desc)
            h = hashlib.sha256()
            async for piece in target.fetch_blob(copy_repo, desc):
                h.update(piece)
            assert f"sha256:{h.hexdigest()}" == desc.digest

    run(scenario)
    print(f"tracemalloc peaks (MiB): {peaks}")
    assert blob.opened == [0]
    # A chunk is 32 MiB; the heap never held more than a few pieces of 256 KiB.
    assert peaks["push"] < 4, peaks
    assert peaks["copy"] < 4, peaks


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(MiB, None), (6 * MiB, None), (3 * MiB + 7, MiB)],
    ids=["small", "streamed-put", "chunked"],
)
def test_verify_false_still_ends_with_the_registry_checked_digest(
    registry_open: RegistryInstance, unique_repo: str, size: int, chunk_size: int | None
) -> None:
    blob = Cycling(size, seed=size)
    real = blob.descriptor()
    # Same size, another digest: only the registry's check at the closing PUT can tell.
    lie = Descriptor(mt.OCI_LAYER, digest_bytes(b"not these bytes"), size)

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            with pytest.raises((IntegrityError, RegistryError)):
                await target.push_blob(
                    unique_repo, lie, blob.opener(), chunk_size=chunk_size, verify=False
                )
            assert not await target.blob_exists(unique_repo, lie)
            assert not await target.blob_exists(unique_repo, real)
            # The honest descriptor goes through the same path.
            result = await target.push_blob(
                unique_repo, real, blob.opener(), chunk_size=chunk_size, verify=False
            )
            assert result.how == "uploaded"
            assert await target.blob_exists(unique_repo, real)

    run(scenario)


@pytest.mark.parametrize("chunk_size", [None, MiB], ids=["streamed-put", "chunked"])
@pytest.mark.parametrize("delta", [-1, 1], ids=["declared-short", "declared-long"])
def test_verify_false_still_checks_sizes(
    registry_open: RegistryInstance, unique_repo: str, chunk_size: int | None, delta: int
) -> None:
    blob = Cycling(5 * MiB + 3, seed=5)
    # The declared size is off by one byte; the digest is the content's own.
    wrong = Descriptor(mt.OCI_LAYER, blob.digest, blob.size + delta)

    async def scenario() -> None:
        async with target_for(registry_open) as target:
            with pytest.raises(IntegrityError):
                await target.push_blob(
                    unique_repo, wrong, blob.opener(), chunk_size=chunk_size, verify=False
                )
            assert not await target.blob_exists(unique_repo, blob.descriptor())

    run(scenario)
