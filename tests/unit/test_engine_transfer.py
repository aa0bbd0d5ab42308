"""BlobTee: one source read, several consumers, detached consumers never stall the rest."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import anyio

from replicator.engine.transfer import BlobTee
from replicator.errors import ReplicatorError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import GraphBuilder


async def _collect(tee: BlobTee, i: int, limit: int | None = None) -> bytes:
    out = bytearray()
    try:
        stream = tee.opener(i)(0)
        async for chunk in stream:
            out += chunk
            if limit is not None and len(out) >= limit:
                await stream.aclose()  # type: ignore[attr-defined]
                break
    finally:
        tee.detach(i)
    return bytes(out)


def test_tee_reads_once_and_survives_consumers_that_leave(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        data = os.urandom(3 * 1024 * 1024)
        blob = await GraphBuilder(t, "").blob(data)
        read = 0

        def count(n: int) -> None:
            nonlocal read
            read += n

        tee = BlobTee(t, "", blob, 4, buffer=2, on_bytes=count)
        results: dict[int, bytes] = {}

        async def full(i: int) -> None:
            results[i] = await _collect(tee, i)

        async def partial(i: int) -> None:
            results[i] = await _collect(tee, i, limit=1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(tee.pump)
            tg.start_soon(full, 0)
            tg.start_soon(full, 1)
            tg.start_soon(partial, 2)
            tee.detach(3)  # never opens (e.g. the blob was already there)
        assert results[0] == results[1] == data
        assert 0 < len(results[2]) < len(data)
        assert tee.shared_reads == 1
        assert read == len(data)
        # a second open of a consumer (a retry) reads the source on its own
        again = bytearray()
        async for chunk in tee.opener(0)(1024):
            again += chunk
        assert bytes(again) == data[1024:]
        await t.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_tee_hands_a_source_error_to_every_reader(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        missing = Descriptor(
            mt.OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(b"never stored").hexdigest(), 12
        )
        tee = BlobTee(t, "", missing, 2)
        errors: list[BaseException] = []

        async def reader(i: int) -> None:
            try:
                await _collect(tee, i)
            except ReplicatorError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(tee.pump)
            tg.start_soon(reader, 0)
            tg.start_soon(reader, 1)
        assert len(errors) == 2
        assert all(getattr(e, "side", None) == "source" for e in errors)
        await t.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_tee_with_no_consumer_opening_never_reads(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        blob = await GraphBuilder(t, "").blob(b"abc" * 10)
        tee = BlobTee(t, "", blob, 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tee.pump)
            tee.detach(0)
            tee.detach(1)
        assert tee.shared_reads == 0
        await t.aclose()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_consumer_resuming_at_an_offset_never_stalls_the_shared_stream(tmp_path: Path) -> None:
    """One destination resumes an upload at an offset (it reads on its own, slowly);
    the others' shared stream must not wait for it."""

    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        data = os.urandom(2 * 1024 * 1024)
        blob = await GraphBuilder(t, "").blob(data)
        tee = BlobTee(t, "", blob, 2, buffer=1)
        shared_done = anyio.Event()
        results: dict[int, bytes] = {}

        async def shared() -> None:
            results[0] = await _collect(tee, 0)
            shared_done.set()

        async def resumed() -> None:
            out = bytearray()
            try:
                async for chunk in tee.opener(1)(1024):
                    out += chunk
                    # this consumer only goes on once the shared one has finished
                    await shared_done.wait()
            finally:
                tee.detach(1)
            results[1] = bytes(out)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tee.pump)
                tg.start_soon(resumed)
                await anyio.sleep(0.05)
                tg.start_soon(shared)
        assert results[0] == data and results[1] == data[1024:]

    anyio.run(main)
