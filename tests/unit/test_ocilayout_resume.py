"""Interrupted blob writes into an OCI layout: resumed, bounded, never stolen.

A blob is written into ``blobs/<alg>/.tmp-<encoded>`` (named after its digest)
under an exclusive ``flock``.  These tests plant such leftovers the way a killed
writer leaves them (the bytes it had written, no lock held), hold the lock the
way a live writer in another process does (a separate open file description),
and check what the next writer does with them.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog

from replicator.errors import IntegrityError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.base import UploadCanceller, UploadProgress, abilities_of
from replicator.targets.ocilayout import OCILayoutTarget

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
DAY = 24 * 3600


class Source:
    """A BlobOpener over bytes that records every offset it was opened at and
    every byte it handed out."""

    def __init__(self, data: bytes, chunk: int = 256 * 1024) -> None:
        self.data = data
        self.chunk = chunk
        self.offsets: list[int] = []
        self.sent = 0

    async def __call__(self, offset: int) -> AsyncIterator[bytes]:
        self.offsets.append(offset)
        for start in range(offset, len(self.data), self.chunk):
            piece = self.data[start : start + self.chunk]
            self.sent += len(piece)
            yield piece
            await anyio.lowlevel.checkpoint()


def temp_path(layout: Path, desc: Descriptor) -> Path:
    alg, _, encoded = desc.digest.partition(":")
    return layout / "blobs" / alg / f".tmp-{encoded}"


def temp_location(desc: Descriptor) -> str:
    alg, _, encoded = desc.digest.partition(":")
    return f"blobs/{alg}/.tmp-{encoded}"


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if ".tmp-" in p.name)


def final_path(layout: Path, desc: Descriptor) -> Path:
    alg, _, encoded = desc.digest.partition(":")
    return layout / "blobs" / alg / encoded


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return tmp_path / "layout"


@pytest.fixture
def target(layout: Path) -> OCILayoutTarget:
    return OCILayoutTarget(layout, create=True)


@pytest.fixture
def blob() -> tuple[bytes, Descriptor]:
    data = os.urandom(3 * MiB + 123)
    return data, descriptor_for(data, mediatype.OCI_LAYER)


def plant(layout: Path, desc: Descriptor, content: bytes, *, age: float = 0.0) -> Path:
    """A leftover as a killed writer leaves it: its bytes, no lock held."""
    path = temp_path(layout, desc)
    path.write_bytes(content)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


class HeldLock:
    """Another writer (as another process would): the file open, flock held."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def held() -> Iterator[list[HeldLock]]:
    locks: list[HeldLock] = []
    yield locks
    for lock in locks:
        lock.release()


async def push(
    target: OCILayoutTarget, desc: Descriptor, source: Any
) -> tuple[Any, list[UploadProgress]]:
    reported: list[UploadProgress] = []

    async def on_progress(p: UploadProgress) -> None:
        reported.append(p)

    result = await target.push_blob("", desc, source, on_progress=on_progress)
    return result, reported


# ------------------------------------------------------------------ resume


async def test_a_leftover_is_continued_from_where_it_stopped(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    done = MiB + 4321
    plant(layout, desc, data[:done])
    source = Source(data)
    with structlog.testing.capture_logs() as logs:
        result, reported = await push(target, desc, source)
    assert source.offsets == [done]
    assert source.sent == len(data) - done
    assert (result.how, result.bytes_sent) == ("uploaded", len(data) - done)
    assert reported[0] == UploadProgress("", desc.digest, temp_location(desc), done)
    assert final_path(layout, desc).read_bytes() == data
    assert leftovers(layout) == []
    resumed = [e for e in logs if e["event"] == "layout.blob_resumed"]
    assert [e["offset"] for e in resumed] == [done]


async def test_a_fresh_write_reports_its_temporary_file_at_offset_zero(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    source = Source(data)
    result, reported = await push(target, desc, source)
    assert source.offsets == [0]
    assert result.bytes_sent == len(data)
    assert reported == [UploadProgress("", desc.digest, temp_location(desc), 0)]


async def test_a_complete_leftover_needs_no_source_read(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    plant(layout, desc, data)
    source = Source(data)
    result, _ = await push(target, desc, source)
    assert source.offsets == []
    assert (result.how, result.bytes_sent) == ("uploaded", 0)
    assert final_path(layout, desc).read_bytes() == data
    assert leftovers(layout) == []


@pytest.mark.parametrize("damage", ["flipped", "too_long"])
async def test_a_corrupt_leftover_is_discarded_and_the_blob_written_from_zero(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor], damage: str
) -> None:
    data, desc = blob
    if damage == "flipped":
        bad = bytearray(data[: 2 * MiB])
        bad[MiB] ^= 0xFF
        content = bytes(bad)
    else:
        content = data + b"trailing garbage"
    plant(layout, desc, content)
    source = Source(data)
    with structlog.testing.capture_logs() as logs:
        result, _ = await push(target, desc, source)
    assert source.offsets[-1] == 0
    assert result.how == "uploaded"
    assert final_path(layout, desc).read_bytes() == data
    assert leftovers(layout) == []
    assert any(e["event"] == "layout.leftover_discarded" for e in logs)


async def test_a_source_failure_keeps_the_written_bytes_for_the_next_attempt(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob

    async def crashing(offset: int) -> AsyncIterator[bytes]:
        yield data[offset : offset + MiB]
        raise ConnectionResetError("source went away")

    with pytest.raises(ConnectionResetError):
        await target.push_blob("", desc, crashing)
    assert not await target.blob_exists("", desc)
    assert not final_path(layout, desc).exists()
    assert temp_path(layout, desc).stat().st_size == MiB
    source = Source(data)
    result, _ = await push(target, desc, source)
    assert source.offsets == [MiB]
    assert result.bytes_sent == len(data) - MiB
    assert final_path(layout, desc).read_bytes() == data
    assert leftovers(layout) == []


async def test_a_cancelled_write_keeps_its_bytes_and_its_lock_is_released(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    started = anyio.Event()

    async def stalls(offset: int) -> AsyncIterator[bytes]:
        yield data[: 2 * MiB]
        started.set()
        await anyio.sleep(3600)
        yield data[2 * MiB :]

    async with anyio.create_task_group() as tg:
        tg.start_soon(target.push_blob, "", desc, stalls)
        await started.wait()
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert not final_path(layout, desc).exists()
    assert temp_path(layout, desc).stat().st_size == 2 * MiB
    HeldLock(temp_path(layout, desc)).release()  # the lock is free again
    source = Source(data)
    await push(target, desc, source)
    assert source.offsets == [2 * MiB]
    assert final_path(layout, desc).read_bytes() == data


async def test_a_blob_whose_source_is_wrong_is_refused_and_leaves_nothing(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    wrong = bytearray(data)
    wrong[-1] ^= 0xFF
    with pytest.raises(IntegrityError, match="digest mismatch"):
        await target.push_blob("", desc, Source(bytes(wrong)))
    assert leftovers(layout) == []
    assert not final_path(layout, desc).exists()


# --------------------------------------------------------- a live writer


async def test_a_live_writers_temporary_file_is_never_taken(
    target: OCILayoutTarget,
    layout: Path,
    blob: tuple[bytes, Descriptor],
    held: list[HeldLock],
) -> None:
    data, desc = blob
    theirs = plant(layout, desc, data[:MiB], age=3 * DAY)
    held.append(HeldLock(theirs))
    source = Source(data)
    result, reported = await push(target, desc, source)
    assert source.offsets == [0]
    assert result.bytes_sent == len(data)
    assert final_path(layout, desc).read_bytes() == data
    # theirs is untouched and still there; ours is gone
    assert leftovers(layout) == [theirs]
    assert theirs.read_bytes() == data[:MiB]
    assert reported and reported[0].location != temp_location(desc)
    # neither a cancel nor a sweep of stale leftovers takes it
    await target.cancel_upload(temp_location(desc))
    reopened = OCILayoutTarget(layout, create=True)
    await reopened.push_blob("", *_small(b"anything"))
    assert theirs.read_bytes() == data[:MiB]


async def test_two_writers_of_one_blob_both_succeed(
    layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    one = OCILayoutTarget(layout, create=True)
    two = OCILayoutTarget(layout)
    results: list[Any] = []

    async def write(target: OCILayoutTarget) -> None:
        results.append(await target.push_blob("", desc, Source(data, chunk=64 * 1024)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, one)
        tg.start_soon(write, two)
    assert {r.how for r in results} <= {"uploaded", "exists"}
    assert final_path(layout, desc).read_bytes() == data
    assert leftovers(layout) == []


# ------------------------------------------------- cancel and stale sweep


def _small(content: bytes) -> tuple[Descriptor, Any]:
    return descriptor_for(content, mediatype.OCI_LAYER), Source(content)


async def test_the_layout_can_cancel_an_abandoned_upload(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    assert isinstance(target, UploadCanceller)
    assert abilities_of(target).upload_canceller is target
    path = plant(layout, desc, data[:MiB])
    await target.cancel_upload(temp_location(desc))
    assert not path.exists()
    await target.cancel_upload(temp_location(desc))  # already gone: no error


@pytest.mark.parametrize(
    "location",
    [
        "../outside",
        "blobs/sha256/../../outside",
        "/etc/passwd",
        "blobs/sha256/{hex}",
        "index.json",
        "oci-layout",
        "blobs/sha256/.tmp-../../../outside",
    ],
)
async def test_cancel_upload_touches_nothing_but_a_temporary_blob_file(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor], location: str
) -> None:
    data, desc = blob
    await target.push_blob("", desc, Source(data))
    outside = layout.parent / "outside"
    outside.write_text("keep me")
    before = sorted(p for p in layout.parent.rglob("*"))
    await target.cancel_upload(location.format(hex=desc.digest.split(":")[1]))
    assert sorted(p for p in layout.parent.rglob("*")) == before
    assert outside.read_text() == "keep me"


async def test_a_symlink_planted_as_a_temporary_file_is_never_followed(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    victim = layout.parent / "victim"
    victim.write_bytes(b"precious")
    temp_path(layout, desc).symlink_to(victim)
    await target.push_blob("", desc, Source(data))
    assert victim.read_bytes() == b"precious"
    assert final_path(layout, desc).read_bytes() == data
    assert not final_path(layout, desc).is_symlink()
    assert leftovers(layout) == []


async def test_stale_leftovers_are_removed_when_the_layout_is_opened_for_writing(
    layout: Path, held: list[HeldLock]
) -> None:
    OCILayoutTarget(layout, create=True)
    old, _ = _small(os.urandom(1000))
    new, _ = _small(os.urandom(1001))
    live, _ = _small(os.urandom(1002))
    stale = plant(layout, old, b"abandoned long ago", age=DAY + 60)
    recent = plant(layout, new, b"abandoned an hour ago", age=3600)
    locked = plant(layout, live, b"still being written", age=3 * DAY)
    held.append(HeldLock(locked))
    index_tmp = layout / "index.json.tmp-0123456789abcdef"
    index_tmp.write_bytes(b"{}")
    then = time.time() - 2 * DAY
    os.utime(index_tmp, (then, then))
    reader = OCILayoutTarget(layout)  # a reader removes nothing
    await reader.tags("")
    assert stale.exists()
    writer = OCILayoutTarget(layout, create=True)
    await writer.push_blob("", *_small(b"first write"))
    assert not stale.exists()
    assert not index_tmp.exists()
    assert recent.exists()  # young: a rerun may still continue it
    assert locked.read_bytes() == b"still being written"


async def test_a_journalled_private_leftover_goes_once_the_blob_is_stored(
    target: OCILayoutTarget, layout: Path, blob: tuple[bytes, Descriptor]
) -> None:
    data, desc = blob
    # a killed writer that had found the digest's file busy left its own file
    private = temp_path(layout, desc).with_name(f"{temp_path(layout, desc).name}.{'ab' * 16}")
    private.write_bytes(data[:MiB])
    journalled = UploadProgress("", desc.digest, f"blobs/sha256/{private.name}", MiB)
    await target.push_blob("", desc, Source(data), resume=journalled)
    assert final_path(layout, desc).read_bytes() == data
    assert leftovers(layout) == []
