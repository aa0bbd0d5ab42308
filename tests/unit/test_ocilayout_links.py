"""Symbolic links planted in place of a layout's ``blobs`` directories.

A writer opens ``blobs`` and ``blobs/<alg>`` without following links and
works relative to the directory it opened: a link there is refused with a
LayoutError before anything is written, swept or removed, and a link swapped
in while a write runs does not redirect it.  Readers follow links, and verify
every byte they read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio.lowlevel
import pytest

from replicator.errors import IntegrityError, LayoutError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.base import BlobOpener
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.ocilayout.tempfiles import sweep_stale

pytestmark = pytest.mark.anyio

DAY = 24 * 3600


def _opener(
    data: bytes, chunk: int = 64 * 1024, after_first: Callable[[], None] | None = None
) -> BlobOpener:
    async def open_at(offset: int) -> AsyncIterator[bytes]:
        for i, start in enumerate(range(offset, len(data), chunk)):
            yield data[start : start + chunk]
            if i == 0 and after_first is not None:
                after_first()
            await anyio.lowlevel.checkpoint()

    return open_at


def _blob(size: int = 300_000) -> tuple[bytes, Descriptor]:
    data = os.urandom(size)
    return data, descriptor_for(data, mediatype.OCI_LAYER)


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if not p.is_dir())


def _link_blobs_out(layout: Path, outside: Path) -> None:
    """Move ``blobs/sha256`` (and what it holds) to ``outside``; a link takes its place."""
    (layout / "blobs" / "sha256").rename(outside)
    (layout / "blobs" / "sha256").symlink_to(outside, target_is_directory=True)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    path = tmp_path / "layout"
    OCILayoutTarget(path, create=True)
    return path


@pytest.mark.parametrize("linked", ["blobs/sha256", "blobs"])
async def test_a_write_through_a_linked_blobs_directory_is_refused(
    layout: Path, tmp_path: Path, linked: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rmdir(layout / "blobs" / "sha256")
    if linked == "blobs":
        os.rmdir(layout / "blobs")
        (outside / "sha256").mkdir()
    (layout / linked).symlink_to(outside, target_is_directory=True)
    data, desc = _blob()
    target = OCILayoutTarget(layout)
    with pytest.raises(LayoutError, match=f"{linked} is a symbolic link"):
        await target.push_blob("", desc, _opener(data))
    assert _files_under(outside) == []


async def test_a_link_swapped_in_mid_write_does_not_redirect_it(
    layout: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    moved = layout / "blobs" / "sha256.moved"

    def swap() -> None:
        (layout / "blobs" / "sha256").rename(moved)
        (layout / "blobs" / "sha256").symlink_to(outside, target_is_directory=True)

    data, desc = _blob()
    target = OCILayoutTarget(layout)
    await target.push_blob("", desc, _opener(data, after_first=swap))
    assert _files_under(outside) == []
    assert (moved / desc.digest.split(":")[1]).read_bytes() == data


async def test_stale_leftovers_behind_a_linked_blobs_directory_are_not_swept(
    layout: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    _link_blobs_out(layout, outside)
    planted = outside / (".tmp-" + "ab" * 32)
    planted.write_bytes(b"not the layout's to remove")
    then = time.time() - 2 * DAY
    os.utime(planted, (then, then))
    assert sweep_stale(layout) == []
    assert planted.read_bytes() == b"not the layout's to remove"


async def test_cancel_upload_behind_a_linked_blobs_directory_removes_nothing(
    layout: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    _link_blobs_out(layout, outside)
    name = ".tmp-" + "cd" * 32
    (outside / name).write_bytes(b"keep me")
    await OCILayoutTarget(layout).cancel_upload(f"blobs/sha256/{name}")
    assert (outside / name).read_bytes() == b"keep me"


async def test_deleting_a_manifest_behind_a_linked_blobs_directory_is_refused_first(
    layout: Path, tmp_path: Path
) -> None:
    target = OCILayoutTarget(layout)
    config = descriptor_for(b"{}", mediatype.OCI_CONFIG)
    await target.push_blob("", config, _opener(b"{}"))
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatype.OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [],
        }
    ).encode()
    manifest = descriptor_for(raw, mediatype.OCI_MANIFEST)
    await target.push_manifest("", manifest, raw, ("v1",))
    outside = tmp_path / "outside"
    _link_blobs_out(layout, outside)
    index_before = (layout / "index.json").read_bytes()
    with pytest.raises(LayoutError, match="symbolic link"):
        await OCILayoutTarget(layout).delete_manifest("", manifest)
    assert (outside / manifest.digest.split(":")[1]).read_bytes() == raw
    assert (layout / "index.json").read_bytes() == index_before


async def test_reads_follow_a_linked_blobs_directory_and_verify_what_they_read(
    layout: Path, tmp_path: Path
) -> None:
    data, desc = _blob()
    await OCILayoutTarget(layout).push_blob("", desc, _opener(data))
    outside = tmp_path / "outside"
    _link_blobs_out(layout, outside)
    reader = OCILayoutTarget(layout)
    got = b"".join([c async for c in reader.fetch_blob("", desc)])
    assert got == data
    stored = outside / desc.digest.split(":")[1]
    flipped = bytearray(data)
    flipped[10] ^= 0xFF
    stored.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError):
        _ = [c async for c in reader.fetch_blob("", desc)]
