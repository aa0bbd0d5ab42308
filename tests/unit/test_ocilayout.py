"""OCILayoutTarget against a real temporary directory (and skopeo for interop)."""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from replicator.errors import InputError, IntegrityError, LayoutError, NotFoundError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for, digest_bytes
from replicator.oci.reference import referrers_tag
from replicator.targets.base import Target
from replicator.targets.ocilayout import REF_NAME, OCILayoutTarget

pytestmark = pytest.mark.anyio

SIG = "application/vnd.example.signature"
SBOM = "application/vnd.example.sbom"


# ---------------------------------------------------------------- helpers


def opener_for(data: bytes, chunk: int = 64 * 1024) -> Any:
    """A BlobOpener over in-memory bytes, yielding ``chunk``-sized pieces."""

    async def open_at(offset: int) -> AsyncIterator[bytes]:
        for start in range(offset, len(data), chunk):
            yield data[start : start + chunk]
            await asyncio.sleep(0)

    return open_at


async def read_all(target: OCILayoutTarget, desc: Descriptor, offset: int = 0) -> bytes:
    out = bytearray()
    async for chunk in target.fetch_blob("", desc, offset):
        out += chunk
    return bytes(out)


def manifest_bytes(
    config: Descriptor,
    layers: list[Descriptor],
    *,
    subject: Descriptor | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mediatype.OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = subject.to_json()
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc, indent=3).encode()


def index_bytes(children: list[Descriptor]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatype.OCI_INDEX,
        "manifests": [c.to_json() for c in children],
    }
    return json.dumps(doc).encode()


def index_json(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "index.json").read_bytes())
    return data


def ref_names(root: Path) -> list[str | None]:
    return [(e.get("annotations") or {}).get(REF_NAME) for e in index_json(root)["manifests"]]


def leftovers(root: Path) -> list[Path]:
    """Temporary files anywhere in the layout."""
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


class Store:
    """A layout plus a few ready-made blobs, pushed through the target."""

    def __init__(self, target: OCILayoutTarget) -> None:
        self.t = target

    async def blob(self, data: bytes, media_type: str = mediatype.OCI_LAYER) -> Descriptor:
        desc = descriptor_for(data, media_type)
        await self.t.push_blob("", desc, opener_for(data))
        return desc

    async def image(
        self,
        repository: str,
        tags: tuple[str, ...],
        layer: bytes,
        **kw: Any,
    ) -> tuple[Descriptor, bytes]:
        config = await self.blob(mediatype.EMPTY_JSON, mediatype.OCI_EMPTY)
        layer_desc = await self.blob(layer)
        raw = manifest_bytes(config, [layer_desc], **kw)
        desc = descriptor_for(raw, mediatype.OCI_MANIFEST)
        await self.t.push_manifest(repository, desc, raw, tags)
        return desc, raw

    async def referrer(
        self, repository: str, subject: Descriptor, artifact_type: str, text: str
    ) -> Descriptor:
        desc, _ = await self.image(
            repository,
            (),
            text.encode(),
            subject=subject,
            artifact_type=artifact_type,
            annotations={"org.example.note": text},
        )
        return desc


def _satisfies_the_target_protocol(target: OCILayoutTarget) -> Target:
    return target  # checked by mypy: every method signature must match the protocol


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return tmp_path / "layout"


@pytest.fixture
def target(layout: Path) -> OCILayoutTarget:
    return OCILayoutTarget(layout, create=True)


# ------------------------------------------------------------ the layout


async def test_create_writes_an_empty_layout_that_reopens(layout: Path) -> None:
    target = OCILayoutTarget(layout, create=True)
    assert isinstance(target, Target)
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert index_json(layout)["manifests"] == []
    assert (layout / "blobs" / "sha256").is_dir()
    reopened = OCILayoutTarget(layout)
    assert await reopened.tags("") == []
    assert reopened.display == f"ocidir://{layout}"


def test_missing_layout_without_create_is_a_layout_error(layout: Path) -> None:
    with pytest.raises(LayoutError, match=r"is not an OCI image layout: the directory does not"):
        OCILayoutTarget(layout)
    layout.mkdir()
    with pytest.raises(LayoutError, match="no oci-layout file"):
        OCILayoutTarget(layout)


@pytest.mark.parametrize(
    ("oci_layout", "index", "message"),
    [
        (b"not json", b"{}", "oci-layout is not JSON"),
        (b'{"imageLayoutVersion": "2.0.0"}', b"{}", "unsupported imageLayoutVersion"),
        (b'{"imageLayoutVersion": "1.0.0"}', b"[1,", "index.json is not JSON"),
        (b'{"imageLayoutVersion": "1.0.0"}', b'{"manifests": []}', "schemaVersion 2"),
        (
            b'{"imageLayoutVersion": "1.0.0"}',
            b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:zz"}]}',
            "index.json: descriptor has no mediaType",
        ),
    ],
)
def test_malformed_layout_is_a_layout_error(
    layout: Path, oci_layout: bytes, index: bytes, message: str
) -> None:
    layout.mkdir()
    (layout / "oci-layout").write_bytes(oci_layout)
    (layout / "index.json").write_bytes(index)
    with pytest.raises(LayoutError, match=message):
        OCILayoutTarget(layout, create=True)


def test_a_file_is_not_a_layout(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(LayoutError, match="not a directory"):
        OCILayoutTarget(path, create=True)


# ----------------------------------------------------------------- blobs


@pytest.mark.parametrize("size", [0, 3 * 1024, 5 * 1024 * 1024 + 17])
async def test_blob_round_trip(target: OCILayoutTarget, layout: Path, size: int) -> None:
    data = os.urandom(size)
    desc = descriptor_for(data, mediatype.OCI_LAYER)
    assert not await target.blob_exists("", desc)
    result = await target.push_blob("", desc, opener_for(data))
    assert (result.how, result.bytes_sent) == ("uploaded", size)
    assert (layout / "blobs" / "sha256" / desc.digest.split(":")[1]).read_bytes() == data
    assert await target.blob_exists("any/repo", desc)
    assert await target.mount_blob("other", desc, "any/repo")
    assert await read_all(target, desc) == data
    assert await read_all(target, desc, size // 2) == data[size // 2 :]
    again = await target.push_blob("", desc, opener_for(b"never read"))
    assert again.how == "exists"
    assert leftovers(layout) == []


async def test_fetch_blob_yields_chunks_of_at_most_one_mib(target: OCILayoutTarget) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    desc = descriptor_for(data, mediatype.OCI_LAYER)
    await target.push_blob("", desc, opener_for(data, chunk=1000 * 1000))
    sizes = [len(c) async for c in target.fetch_blob("", desc)]
    assert sizes == [1024 * 1024, 1024 * 1024, 5]


async def test_blob_with_wrong_digest_is_refused_and_leaves_nothing(
    target: OCILayoutTarget, layout: Path
) -> None:
    data = b"hello world"
    desc = descriptor_for(b"something else!", mediatype.OCI_LAYER)
    wrong_size = Descriptor(mediatype.OCI_LAYER, digest_bytes(data), len(data) + 1)
    with pytest.raises(IntegrityError, match="digest mismatch"):
        await target.push_blob(
            "", Descriptor(desc.media_type, desc.digest, len(data)), opener_for(data)
        )
    with pytest.raises(IntegrityError, match="size mismatch"):
        await target.push_blob("", wrong_size, opener_for(data))
    too_long = Descriptor(mediatype.OCI_LAYER, digest_bytes(data), 3)
    with pytest.raises(IntegrityError, match="more than the declared"):
        await target.push_blob("", too_long, opener_for(data, chunk=4))
    assert list((layout / "blobs" / "sha256").iterdir()) == []


async def test_failure_mid_blob_leaves_no_partial_blob_only_its_resumable_temp_file(
    target: OCILayoutTarget, layout: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    desc = descriptor_for(data, mediatype.OCI_LAYER)
    seen: list[int] = []

    async def crashing(offset: int) -> AsyncIterator[bytes]:
        seen.append(offset)
        yield data[offset : offset + 1024 * 1024]
        raise ConnectionResetError("source went away")

    with pytest.raises(ConnectionResetError):
        await target.push_blob("", desc, crashing)
    assert seen == [0]
    assert not await target.blob_exists("", desc)
    hexpart = desc.digest.split(":")[1]
    assert [p.name for p in (layout / "blobs" / "sha256").iterdir()] == [f".tmp-{hexpart}"]
    # the next attempt continues it (tests/unit/test_ocilayout_resume.py has the rest)
    assert (await target.push_blob("", desc, opener_for(data))).how == "uploaded"
    assert await read_all(target, desc) == data
    assert leftovers(layout) == []


async def test_cancelled_blob_write_leaves_no_partial_blob(
    target: OCILayoutTarget, layout: Path
) -> None:
    data = os.urandom(256 * 1024)
    desc = descriptor_for(data, mediatype.OCI_LAYER)
    started = asyncio.Event()

    async def stalls(offset: int) -> AsyncIterator[bytes]:
        yield data[:1024]
        started.set()
        await asyncio.sleep(3600)
        yield data[1024:]

    task = asyncio.create_task(target.push_blob("", desc, stalls))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await target.blob_exists("", desc)
    assert [p.stat().st_size for p in leftovers(layout)] == [1024]


async def test_corrupt_blob_on_disk_is_detected_on_read(
    target: OCILayoutTarget, layout: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    desc = descriptor_for(data, mediatype.OCI_LAYER)
    await target.push_blob("", desc, opener_for(data))
    path = layout / "blobs" / "sha256" / desc.digest.split(":")[1]
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    received: list[bytes] = []
    with pytest.raises(IntegrityError, match="corrupt blob"):
        async for chunk in target.fetch_blob("", desc):
            received.append(chunk)
    # the final chunk is withheld when the digest fails
    assert sum(map(len, received)) < len(data)
    path.write_bytes(data[:-1])
    with pytest.raises(IntegrityError, match="bytes on disk"):
        await read_all(target, desc)


async def test_missing_blob_is_not_found(target: OCILayoutTarget) -> None:
    desc = descriptor_for(b"absent", mediatype.OCI_LAYER)
    with pytest.raises(NotFoundError, match="not found in ocidir://"):
        await read_all(target, desc)


# ------------------------------------------------------------- manifests


async def test_manifest_keeps_its_exact_bytes(target: OCILayoutTarget, layout: Path) -> None:
    store = Store(target)
    desc, raw = await store.image("", ("v1",), b"layer", annotations={"a": "b"})
    assert b"\n   " in raw  # indented: re-serialising would change it
    got_desc, got = await target.fetch_manifest("", "v1")
    assert got == raw
    assert got_desc.digest == desc.digest and got_desc.size == len(raw)
    assert got_desc.media_type == mediatype.OCI_MANIFEST
    assert got_desc.annotations is None  # ref.name is not part of the manifest's descriptor
    _, by_digest = await target.fetch_manifest("", desc.digest)
    assert by_digest == raw
    _, by_desc = await target.fetch_manifest("", desc)
    assert by_desc == raw
    assert (await target.resolve("", desc.digest)).media_type == mediatype.OCI_MANIFEST
    assert await target.manifest_exists("", desc)
    assert ref_names(layout) == ["v1"]


async def test_resolve_by_digest_of_an_unlisted_manifest_parses_it(
    target: OCILayoutTarget,
) -> None:
    store = Store(target)
    config = await store.blob(mediatype.EMPTY_JSON, mediatype.OCI_EMPTY)
    raw = manifest_bytes(config, [], artifact_type="x/y")
    desc = descriptor_for(raw, "application/octet-stream")
    await target.push_blob("", desc, opener_for(raw))  # stored like a blob: not listed
    resolved = await target.resolve("", desc.digest)
    assert resolved.media_type == mediatype.OCI_MANIFEST
    assert resolved.artifact_type == "x/y"
    # a layer is a blob, not a manifest
    with pytest.raises(NotFoundError, match="is not a manifest"):
        await target.resolve("", config.digest)
    big = await store.blob(b"\0" * (4 * 1024 * 1024 + 1))
    with pytest.raises(NotFoundError, match="is not a manifest"):
        await target.resolve("", big.digest)


async def test_unknown_tag_and_digest_are_not_found(target: OCILayoutTarget) -> None:
    with pytest.raises(NotFoundError, match=r"^repo/x:nope not found in ocidir://"):
        await target.resolve("repo/x", "nope")
    digest = digest_bytes(b"nothing")
    with pytest.raises(NotFoundError, match=r"repo/x@sha256:"):
        await target.fetch_manifest("repo/x", digest)
    with pytest.raises(InputError, match="invalid sha256 digest"):
        await target.resolve("", "sha256:short")
    with pytest.raises(InputError, match="invalid tag"):
        await target.resolve("", "-bad")


async def test_manifest_push_with_wrong_digest_or_bad_json_is_refused(
    target: OCILayoutTarget, layout: Path
) -> None:
    raw = b'{"schemaVersion": 2}'
    wrong = Descriptor(mediatype.OCI_MANIFEST, digest_bytes(b"other"), len(raw))
    with pytest.raises(IntegrityError, match="manifest push refused"):
        await target.push_manifest("", wrong, raw, ("v1",))
    garbage = b"not a manifest"
    with pytest.raises(InputError):
        await target.push_manifest("", descriptor_for(garbage, mediatype.OCI_MANIFEST), garbage)
    assert index_json(layout)["manifests"] == []
    assert list((layout / "blobs" / "sha256").iterdir()) == []


async def test_corrupt_manifest_on_disk_is_detected(target: OCILayoutTarget, layout: Path) -> None:
    store = Store(target)
    desc, raw = await store.image("", ("v1",), b"layer")
    (layout / "blobs" / "sha256" / desc.digest.split(":")[1]).write_bytes(
        raw.replace(b"   ", b"  \t", 1)
    )
    with pytest.raises(IntegrityError, match="corrupt manifest"):
        await target.fetch_manifest("", "v1")


# ------------------------------------------------------------------ tags


async def test_tags_of_two_repositories_share_one_blob_store(
    target: OCILayoutTarget, layout: Path
) -> None:
    store = Store(target)
    plain, _ = await store.image("", ("v1",), b"same layer")
    app1, app1_raw = await store.image(
        "team/app", ("v1", "latest"), b"same layer", annotations={"n": "1"}
    )
    app2, _ = await store.image("team/app", ("v2",), b"same layer", annotations={"n": "2"})
    await store.image("other", ("v9",), b"another layer")
    assert await target.tags("") == ["v1"]
    assert await target.tags("team/app") == ["latest", "v1", "v2"]
    assert await target.tags("other") == ["v9"]
    assert await target.tags("team") == []
    assert sorted(n for n in ref_names(layout) if n) == [
        "other:v9",
        "team/app:latest",
        "team/app:v1",
        "team/app:v2",
        "v1",
    ]
    assert (await target.resolve("", "v1")).digest == plain.digest
    assert (await target.resolve("team/app", "v1")).digest == app1.digest
    assert (await target.resolve("team/app", "v2")).digest == app2.digest
    # one file per distinct blob: empty config, two layers, four manifests
    assert len(list((layout / "blobs" / "sha256").iterdir())) == 7
    # a reopened target sees the same thing
    again = OCILayoutTarget(layout)
    assert (await again.fetch_manifest("team/app", "latest"))[1] == app1_raw


async def test_retag_replaces_the_old_entry(target: OCILayoutTarget, layout: Path) -> None:
    store = Store(target)
    first, _ = await store.image("", ("v1", "keep"), b"one")
    second, second_raw = await store.image("", (), b"two")
    await target.tag("", second, second_raw, "v1")
    assert (await target.resolve("", "v1")).digest == second.digest
    assert (await target.resolve("", "keep")).digest == first.digest
    entries = index_json(layout)["manifests"]
    assert sorted(ref_names(layout), key=str) == ["keep", "v1"]
    assert [e["digest"] for e in entries if e["annotations"][REF_NAME] == "v1"] == [second.digest]


async def test_a_referrer_that_loses_its_tag_stays_listed(
    target: OCILayoutTarget, layout: Path
) -> None:
    store = Store(target)
    image, _ = await store.image("", ("v1",), b"image")
    sig, _ = await store.image("", ("sig",), b"sig", subject=image, artifact_type=SIG)
    other, other_raw = await store.image("", (), b"other")
    await target.tag("", other, other_raw, "sig")
    assert (await target.resolve("", "sig")).digest == other.digest
    assert [d.digest for d in await target.referrers("", image)] == [sig.digest]
    assert sig.digest in {e["digest"] for e in index_json(layout)["manifests"]}


async def test_untagged_push_is_listed_until_tagged(target: OCILayoutTarget, layout: Path) -> None:
    store = Store(target)
    desc, raw = await store.image("", (), b"alone")
    assert ref_names(layout) == [None]
    await target.tag("", desc, raw, "now")
    assert ref_names(layout) == ["now"]
    await target.push_manifest("", desc, raw)
    assert ref_names(layout) == ["now"]


async def test_index_push_unlists_its_untagged_children(
    target: OCILayoutTarget, layout: Path
) -> None:
    store = Store(target)
    amd, _ = await store.image("", (), b"amd64")
    arm, _ = await store.image("", (), b"arm64")
    raw = index_bytes([amd, arm])
    index = descriptor_for(raw, mediatype.OCI_INDEX)
    result = await target.push_manifest("", index, raw, ("multi",))
    assert not result.referrers_updated
    assert [e["digest"] for e in index_json(layout)["manifests"]] == [index.digest]
    assert (await target.resolve("", amd.digest)).media_type == mediatype.OCI_MANIFEST
    assert (await target.resolve("", "multi")).media_type == mediatype.OCI_INDEX


async def test_index_pushed_by_another_writer_unlists_children_but_not_referrers(
    layout: Path,
) -> None:
    one = OCILayoutTarget(layout, create=True)
    store = Store(one)
    child, _ = await store.image("", (), b"child")
    base, _ = await store.image("", ("base",), b"base")
    referrer = await store.referrer("", base, SIG, "sig")
    raw = index_bytes([child, referrer])
    index = descriptor_for(raw, mediatype.OCI_INDEX)
    two = OCILayoutTarget(layout)  # knows nothing yet: must read the children
    await two.push_manifest("", index, raw, ("idx",))
    listed = {e["digest"] for e in index_json(layout)["manifests"]}
    assert listed == {base.digest, referrer.digest, index.digest}
    assert [d.digest for d in await two.referrers("", base)] == [referrer.digest]


# ------------------------------------------------------------- referrers


async def test_referrers_found_by_subject_scan(target: OCILayoutTarget, layout: Path) -> None:
    store = Store(target)
    image, _ = await store.image("app", ("v1",), b"image")
    sig = await store.referrer("app", image, SIG, "signature")
    sbom = await store.referrer("app", image, SBOM, "sbom")
    sbom_sig = await store.referrer("app", sbom, SIG, "sbom signature")
    assert ref_names(layout) == ["app:v1", None, None, None]

    reopened = OCILayoutTarget(layout)  # nothing cached: parse from disk
    found = await reopened.referrers("app", image)
    assert {d.digest for d in found} == {sig.digest, sbom.digest}
    by_digest = {d.digest: d for d in found}
    assert by_digest[sig.digest].artifact_type == SIG
    assert by_digest[sig.digest].annotations == {"org.example.note": "signature"}
    assert by_digest[sbom.digest].artifact_type == SBOM
    assert [d.digest for d in await reopened.referrers("app", image, SBOM)] == [sbom.digest]
    assert [d.digest for d in await reopened.referrers("app", sbom)] == [sbom_sig.digest]
    assert await reopened.referrers("app", sig) == []


async def test_a_referrer_stored_but_not_listed_is_not_present_until_pushed_again(
    target: OCILayoutTarget, layout: Path
) -> None:
    """A writer killed between storing a referrer's bytes and listing it leaves the file
    without its ``index.json`` entry: the referrer is not present (a copy would skip it
    and it could never be found), and pushing it again lists it."""
    store = Store(target)
    image, _ = await store.image("app", ("v1",), b"image")
    child, _ = await store.image("app", (), b"child")
    sig = await store.referrer("app", image, SIG, "signature")
    doc = index_json(layout)
    kept = [e for e in doc["manifests"] if e["digest"] not in (sig.digest, child.digest)]
    (layout / "index.json").write_text(json.dumps({**doc, "manifests": kept}))

    reopened = OCILayoutTarget(layout)
    assert (layout / "blobs" / "sha256" / sig.digest.removeprefix("sha256:")).exists()
    assert await reopened.referrers("app", image) == []
    assert not await reopened.manifest_exists("app", sig)
    assert await reopened.manifest_exists("app", child)  # not a referrer: its bytes suffice
    raw = (layout / "blobs" / "sha256" / sig.digest.removeprefix("sha256:")).read_bytes()
    await reopened.push_manifest("app", sig, raw)
    assert await reopened.manifest_exists("app", sig)
    assert [d.digest for d in await reopened.referrers("app", image)] == [sig.digest]


async def test_push_of_a_referrer_reports_referrers_updated(target: OCILayoutTarget) -> None:
    store = Store(target)
    image, _ = await store.image("", ("v1",), b"image")
    config = await store.blob(mediatype.EMPTY_JSON, mediatype.OCI_EMPTY)
    raw = manifest_bytes(config, [], subject=image, artifact_type=SIG)
    result = await target.push_manifest("", descriptor_for(raw, mediatype.OCI_MANIFEST), raw)
    assert result.referrers_updated
    assert result.descriptor.artifact_type == SIG


async def test_referrers_found_through_the_fallback_tag(
    target: OCILayoutTarget, layout: Path
) -> None:
    store = Store(target)
    image, _ = await store.image("app", ("v1",), b"image")
    listed = await store.referrer("app", image, SIG, "listed")
    # a referrer only reachable through the fallback tag (as another tool might write it)
    config = await store.blob(mediatype.EMPTY_JSON, mediatype.OCI_EMPTY)
    hidden_raw = manifest_bytes(config, [], subject=image, artifact_type=SBOM)
    hidden = descriptor_for(hidden_raw, mediatype.OCI_MANIFEST)
    await target.push_blob("app", hidden, opener_for(hidden_raw))
    entry = Descriptor(
        mediatype.OCI_MANIFEST,
        hidden.digest,
        hidden.size,
        artifact_type=SBOM,
        annotations={"from": "fallback"},
    )
    fallback_raw = index_bytes([entry, listed])
    fallback = descriptor_for(fallback_raw, mediatype.OCI_INDEX)
    await target.push_manifest("app", fallback, fallback_raw, (referrers_tag(image.digest),))

    found = await target.referrers("app", image)
    assert sorted(d.digest for d in found) == sorted([listed.digest, hidden.digest])
    via_tag = next(d for d in found if d.digest == hidden.digest)
    assert via_tag.artifact_type == SBOM and via_tag.annotations == {"from": "fallback"}
    assert [d.digest for d in await target.referrers("app", image, SBOM)] == [hidden.digest]
    # the fallback tag belongs to its repository
    assert [d.digest for d in await target.referrers("elsewhere", image)] == [listed.digest]


async def test_fallback_tag_that_is_not_an_index_is_ignored(target: OCILayoutTarget) -> None:
    store = Store(target)
    image, _ = await store.image("", ("v1",), b"image")
    sig = await store.referrer("", image, SIG, "sig")
    not_an_index, raw = await store.image("", (), b"some image")
    with structlog.testing.capture_logs() as logs:
        await target.tag("", not_an_index, raw, referrers_tag(image.digest))
        found = await target.referrers("", image)
    assert [d.digest for d in found] == [sig.digest]
    assert any(e["event"] == "layout.fallback_tag_ignored" for e in logs)


# ----------------------------------------------------------- concurrency


async def test_concurrent_pushes_keep_every_entry(layout: Path) -> None:
    one = OCILayoutTarget(layout, create=True)
    two = OCILayoutTarget(layout)  # a second writer: only the file lock orders them
    store = Store(one)
    config = await store.blob(mediatype.EMPTY_JSON, mediatype.OCI_EMPTY)
    subject, _ = await store.image("", ("base",), b"subject")

    async def push(i: int) -> Descriptor:
        target = one if i % 2 else two
        layer = f"layer {i}".encode()
        layer_desc = descriptor_for(layer, mediatype.OCI_LAYER)
        await target.push_blob("", layer_desc, opener_for(layer))
        kw: dict[str, Any] = {"subject": subject, "artifact_type": SIG} if i % 3 == 0 else {}
        raw = manifest_bytes(config, [layer_desc], **kw)
        desc = descriptor_for(raw, mediatype.OCI_MANIFEST)
        tags = () if i % 3 == 0 else (f"t{i}",)
        await target.push_manifest(f"repo{i % 4}" if tags else "", desc, raw, tags)
        if i % 5 == 0 and tags:
            await target.tag("", desc, raw, f"extra{i}")
        return desc

    pushed = await asyncio.gather(*(push(i) for i in range(60)))
    entries = index_json(layout)["manifests"]
    listed = {e["digest"] for e in entries}
    assert listed == {d.digest for d in pushed} | {subject.digest}
    names = [n for n in ref_names(layout) if n is not None]
    assert len(names) == len(set(names))
    expected = {"base"} | {f"repo{i % 4}:t{i}" for i in range(60) if i % 3}
    expected |= {f"extra{i}" for i in range(60) if i % 5 == 0 and i % 3}
    assert set(names) == expected
    assert len(await one.referrers("", subject)) == 20
    assert leftovers(layout) == []


async def _prepared(target: OCILayoutTarget, n: int) -> list[tuple[Descriptor, bytes]]:
    store = Store(target)
    config = await store.blob(mediatype.EMPTY_JSON, mediatype.OCI_EMPTY)
    out = []
    for i in range(n):
        raw = manifest_bytes(config, [], artifact_type="x/y", annotations={"i": str(i)})
        desc = descriptor_for(raw, mediatype.OCI_MANIFEST)
        await target.push_blob("", desc, opener_for(raw))  # stored, not yet listed
        out.append((desc, raw))
    return out


async def test_concurrent_index_updates_are_group_committed(
    target: OCILayoutTarget, layout: Path
) -> None:
    manifests = await _prepared(target, 40)
    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(
            *(target.push_manifest("r", d, raw, (f"t{i}",)) for i, (d, raw) in enumerate(manifests))
        )
    writes = [e for e in logs if e["event"] == "layout.index_written"]
    assert sum(e["updates"] for e in writes) == 40
    assert len(writes) < 40
    assert await target.tags("r") == sorted(f"t{i}" for i in range(40))


async def test_cancelled_writers_do_not_lose_the_others_updates(
    target: OCILayoutTarget, layout: Path
) -> None:
    manifests = await _prepared(target, 30)
    tasks = [
        asyncio.create_task(target.push_manifest("", d, raw, (f"t{i}",)))
        for i, (d, raw) in enumerate(manifests)
    ]
    cancelled = set(range(0, 30, 4))
    for delay in (0.0, 0.001, 0.002, 0.005):
        await asyncio.sleep(delay)
        for i in cancelled:
            tasks[i].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    done = {i for i, r in enumerate(results) if not isinstance(r, BaseException)}
    assert done >= set(range(30)) - cancelled
    tags = set(await OCILayoutTarget(layout).tags(""))
    assert tags >= {f"t{i}" for i in done}
    assert leftovers(layout) == []


async def test_a_flusher_cancelled_mid_commit_hands_the_batch_on(
    target: OCILayoutTarget, layout: Path
) -> None:
    manifests = await _prepared(target, 3)
    holder = os.open(layout / "oci-layout", os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another "process" holds the layout
    released = threading.Event()
    try:
        async with target._index.lock:  # queue all three behind one lock holder
            tasks = [
                asyncio.create_task(target.push_manifest("", d, raw, (f"t{i}",)))
                for i, (d, raw) in enumerate(manifests)
            ]
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # task 0 now commits all three, blocked on the flock
        tasks[0].cancel()

        def release() -> None:
            os.close(holder)
            released.set()

        threading.Timer(0.05, release).start()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    finally:
        if not released.wait(5):
            os.close(holder)
    assert isinstance(results[0], asyncio.CancelledError)
    assert not isinstance(results[1], BaseException)
    assert not isinstance(results[2], BaseException)
    assert {"t1", "t2"} <= set(await OCILayoutTarget(layout).tags(""))


# ---------------------------------------------------------------- delete


async def test_delete_manifest_removes_entries_and_file(
    target: OCILayoutTarget, layout: Path
) -> None:
    store = Store(target)
    shared, shared_raw = await store.image("a", ("v1",), b"shared")
    await target.tag("b", shared, shared_raw, "v1")
    only_a, _ = await store.image("a", ("v2",), b"only a")
    await target.delete_manifest("a", only_a)
    assert await target.tags("a") == ["v1"]
    assert not await target.manifest_exists("a", only_a)
    await target.delete_manifest("a", shared)
    assert await target.tags("a") == []
    assert await target.tags("b") == ["v1"]
    assert await target.manifest_exists("b", shared)  # still needed by b:v1
    with pytest.raises(NotFoundError):
        await target.delete_manifest("a", only_a)


async def test_deleting_a_referrer_updates_its_fallback_index(target: OCILayoutTarget) -> None:
    store = Store(target)
    image, _ = await store.image("", ("v1",), b"image")
    sig = await store.referrer("", image, SIG, "sig")
    sbom = await store.referrer("", image, SBOM, "sbom")
    fallback_raw = index_bytes([sig, sbom])
    fallback_tag = referrers_tag(image.digest)
    await target.push_manifest(
        "", descriptor_for(fallback_raw, mediatype.OCI_INDEX), fallback_raw, (fallback_tag,)
    )
    await target.delete_manifest("", sig)
    assert [d.digest for d in await target.referrers("", image)] == [sbom.digest]
    _, raw = await target.fetch_manifest("", fallback_tag)
    assert [m["digest"] for m in json.loads(raw)["manifests"]] == [sbom.digest]
    await target.delete_manifest("", sbom)
    assert await target.referrers("", image) == []
    assert await target.tags("") == ["v1"]


# ----------------------------------------------------------------- skopeo


def _tar_gz(name: str, content: bytes) -> tuple[bytes, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    plain = buf.getvalue()
    return plain, gzip.compress(plain, mtime=0)


async def _push_small_image(target: OCILayoutTarget, tag: str) -> tuple[Descriptor, bytes]:
    store = Store(target)
    plain, layer = _tar_gz("hello.txt", b"hello from replicator\n")
    layer_desc = await store.blob(layer, mediatype.OCI_LAYER_GZIP)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_bytes(plain)]},
            "config": {},
        }
    ).encode()
    config_desc = await store.blob(config, mediatype.OCI_CONFIG)
    raw = manifest_bytes(config_desc, [layer_desc], annotations={"org.example": "x"})
    desc = descriptor_for(raw, mediatype.OCI_MANIFEST)
    await target.push_manifest("", desc, raw, (tag,))
    return desc, raw


def _skopeo(*args: str) -> bytes:
    exe = shutil.which("skopeo")
    assert exe, "skopeo is required for the interop tests (apt-get install skopeo)"
    proc = subprocess.run([exe, *args], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


async def test_skopeo_reads_our_layout(target: OCILayoutTarget, layout: Path) -> None:
    _, raw = await _push_small_image(target, "v1")
    out = await asyncio.to_thread(_skopeo, "inspect", "--raw", f"oci:{layout}:v1")
    assert out == raw


async def test_we_read_a_layout_written_by_skopeo(tmp_path: Path) -> None:
    src = tmp_path / "a"
    dst = tmp_path / "b"
    desc, raw = await _push_small_image(OCILayoutTarget(src, create=True), "v1")
    await asyncio.to_thread(
        _skopeo, "--insecure-policy", "copy", "--quiet", f"oci:{src}:v1", f"oci:{dst}:copied"
    )
    target = OCILayoutTarget(dst)
    assert await target.tags("") == ["copied"]
    got_desc, got = await target.fetch_manifest("", "copied")
    assert got == raw and got_desc.digest == desc.digest
    manifest = json.loads(got)
    for blob in [manifest["config"], *manifest["layers"]]:
        data = await read_all(target, Descriptor.from_json(blob))
        assert hashlib.sha256(data).hexdigest() == blob["digest"].split(":")[1]


# ------------------------------------------------------ index.json artifactType


HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"


def _entry(layout: Path, digest: str) -> dict[str, Any]:
    entries = [e for e in index_json(layout)["manifests"] if e["digest"] == digest]
    assert len(entries) == 1, entries
    return entries[0]


async def test_a_plain_image_is_listed_without_an_artifact_type(
    target: OCILayoutTarget, layout: Path
) -> None:
    desc, _ = await _push_small_image(target, "v1")
    assert "artifactType" not in _entry(layout, desc.digest)
    # a Docker image, tagged and untagged
    store = Store(target)
    config = await store.blob(b'{"os":"linux","architecture":"arm64"}', mediatype.DOCKER_CONFIG)
    layer = await store.blob(b"docker layer", mediatype.DOCKER_LAYER_GZIP)
    docker_raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatype.DOCKER_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json()],
        }
    ).encode()
    docker = descriptor_for(docker_raw, mediatype.DOCKER_MANIFEST)
    await target.push_manifest("", docker, docker_raw)
    assert "artifactType" not in _entry(layout, docker.digest)
    await target.tag("", docker, docker_raw, "docker")
    assert "artifactType" not in _entry(layout, docker.digest)
    assert (await target.resolve("", "v1")).artifact_type is None
    out = await asyncio.to_thread(_skopeo, "inspect", f"oci:{layout}:v1")
    assert json.loads(out)["Digest"] == desc.digest


async def test_an_artifact_is_listed_with_its_artifact_type(
    target: OCILayoutTarget, layout: Path
) -> None:
    store = Store(target)
    image, _ = await _push_small_image(target, "v1")
    sbom, sbom_raw = await store.image("", ("sbom",), b"an sbom", artifact_type=SBOM)
    sig = await store.referrer("", image, SIG, "signature")
    # an artifact that says what it is through its config media type only (Helm)
    chart_config = await store.blob(b'{"name":"chart"}', HELM_CONFIG)
    chart_layer = await store.blob(b"chart tarball", "application/vnd.cncf.helm.chart.content")
    chart_raw = manifest_bytes(chart_config, [chart_layer])
    chart = descriptor_for(chart_raw, mediatype.OCI_MANIFEST)
    await target.push_manifest("", chart, chart_raw, ("chart",))
    # an index that declares an artifact type
    index_doc = json.loads(index_bytes([sbom]))
    index_doc["artifactType"] = "application/vnd.example.bundle"
    bundle_raw = json.dumps(index_doc).encode()
    bundle = descriptor_for(bundle_raw, mediatype.OCI_INDEX)
    await target.push_manifest("", bundle, bundle_raw, ("bundle",))

    assert "artifactType" not in _entry(layout, image.digest)
    assert _entry(layout, sig.digest)["artifactType"] == SIG
    assert _entry(layout, chart.digest)["artifactType"] == HELM_CONFIG
    assert _entry(layout, bundle.digest)["artifactType"] == "application/vnd.example.bundle"
    assert _entry(layout, sbom.digest)["artifactType"] == SBOM
    assert (await target.resolve("", "sbom")).artifact_type == SBOM
    # skopeo reads the image and the artifact's exact bytes from this layout
    out = await asyncio.to_thread(_skopeo, "inspect", f"oci:{layout}:v1")
    assert json.loads(out)["Digest"] == image.digest
    raw = await asyncio.to_thread(_skopeo, "inspect", "--raw", f"oci:{layout}:sbom")
    assert raw == sbom_raw


async def test_referrers_typed_by_their_config_are_listed_by_the_image_spec_rules(
    target: OCILayoutTarget, layout: Path
) -> None:
    store = Store(target)
    image, _ = await _push_small_image(target, "v1")
    scan_config = await store.blob(b'{"kind":"scan"}', "application/vnd.example.scan.config+json")
    scan_raw = manifest_bytes(scan_config, [], subject=image)
    scan = descriptor_for(scan_raw, mediatype.OCI_MANIFEST)
    await target.push_manifest("", scan, scan_raw)
    # a container image that names a subject (an image "about" another one)
    image_config = await store.blob(b'{"os":"linux","architecture":"s390x"}', mediatype.OCI_CONFIG)
    about_raw = manifest_bytes(image_config, [], subject=image)
    about = descriptor_for(about_raw, mediatype.OCI_MANIFEST)
    await target.push_manifest("", about, about_raw)
    # an artifact identified by its config type is listed with it; a container image
    # gets no artifactType in index.json ...
    assert _entry(layout, scan.digest)["artifactType"] == scan_config.media_type
    assert "artifactType" not in _entry(layout, about.digest)
    # ... while the referrers listing follows the referrers API rule (artifactType,
    # else the config media type) for both
    found = {d.digest: d.artifact_type for d in await target.referrers("", image)}
    assert found == {scan.digest: scan_config.media_type, about.digest: mediatype.OCI_CONFIG}
