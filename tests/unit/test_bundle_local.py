"""Bundles made from and imported into OCI layouts on disk (no registry): the whole path,
verification of every kind of damage, and a create resumed after a kill."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from replicator.bundle.create import CreateRequest, create_bundle, open_writer
from replicator.bundle.documents import load_bundle_document
from replicator.bundle.finalize import Finish, finalize
from replicator.bundle.importing import ImportRequest, import_bundle
from replicator.bundle.tarformat import tar_header
from replicator.bundle.verify import verify_bundle
from replicator.oci import mediatype as mt
from replicator.oci.digest import descriptor_for
from replicator.sync import JournalChoice
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import SIGNATURE_TYPE, GraphBuilder, assert_same_graph

pytestmark = pytest.mark.anyio


async def _source(path: Path) -> dict[str, str]:
    """A layout ``path`` (repository ``api`` in a bundle): signed image, index, a big layer."""
    target = OCILayoutTarget(path, create=True)
    g = GraphBuilder(target, "")
    signed = await g.signed_image("img", tags=["v1"], layers=3, layer_size=20_000)
    index, _ = await g.multiarch("multi", tags=["v2"])
    await g.referrer(index, SIGNATURE_TYPE)
    await g.image("docker", docker=True, pretty=True, tags=["v3"], layers=1, layer_size=30_000)
    await target.aclose()
    return {"v1": signed.image.digest, "v2": index.digest}


async def _create(src: Path, out: Path, **extra: object) -> None:
    request = CreateRequest(
        output=out,
        references=(f"ocidir://{src}",),
        max_part_size=8192,
        journal=JournalChoice.off(),
        **extra,  # type: ignore[arg-type]
    )
    outcome = await create_bundle(request)
    assert outcome.ok, outcome.run and outcome.run.error


async def test_a_bundle_from_a_layout_imports_into_a_layout_digest_for_digest(
    tmp_path: Path,
) -> None:
    src, out, dst = tmp_path / "api", tmp_path / "bundle", tmp_path / "dst"
    await _source(src)
    await _create(src, out)
    result = await verify_bundle(out)
    assert result.ok, result.problems
    doc = result.document
    assert doc is not None
    assert sorted(doc.content.repositories["api"].tags) == ["v1", "v2", "v3"]
    assert len(doc.parts) > 3 and all(p.size <= 8192 for p in doc.parts)
    assert any(len(spans) > 1 for spans in doc.spans.values()), "a blob should be split"
    assert sorted(os.listdir(out)) == ["bundle.json"] + [p.name for p in doc.parts]

    outcome = await import_bundle(
        ImportRequest(out, f"ocidir://{dst}", journal=JournalChoice.off())
    )
    assert outcome.exit_code == 0
    a, b = OCILayoutTarget(src), OCILayoutTarget(dst)
    for tag in ("v1", "v2", "v3"):
        await assert_same_graph(a, "", tag, b, "api", tag)
    receipt = json.loads(outcome.receipt_path.read_text())  # type: ignore[union-attr]
    assert receipt["destination"] == f"ocidir://{dst}"
    assert receipt["content"]["repositories"]["api"]["tags"] == doc.content.repositories["api"].tags


async def test_the_parts_concatenated_are_a_layout_with_tags_and_referrers(tmp_path: Path) -> None:
    src, out, ext = tmp_path / "api", tmp_path / "bundle", tmp_path / "extracted"
    roots = await _source(src)
    await _create(src, out)
    names = _extract(out, ext)
    assert names[0] == "oci-layout" and names[-1] == "index.json"
    index = json.loads((ext / "index.json").read_text())
    refs = {
        e.get("annotations", {}).get("org.opencontainers.image.ref.name")
        for e in index["manifests"]
    }
    assert {"api:v1", "api:v2", "api:v3"} <= refs
    assert f"api:sha256-{roots['v1'].split(':')[1]}" in refs  # a referrers fallback tag
    layout = OCILayoutTarget(ext)
    a = OCILayoutTarget(src)
    for tag in ("v1", "v2", "v3"):
        await assert_same_graph(a, "", tag, layout, "api", tag)
    done = _skopeo_inspect(f"oci:{ext}:api:v2")
    assert done.returncode == 0, done.stderr


def _extract(out: Path, ext: Path) -> list[str]:
    """``cat part-*.tar | tar -x -C ext``; the member names in order."""
    whole = b"".join(p.read_bytes() for p in sorted(out.glob("part-*.tar")))
    ext.mkdir()
    subprocess.run(["tar", "-x", "-C", str(ext)], input=whole, check=True)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        return tar.getnames()


def _skopeo_inspect(image: str) -> subprocess.CompletedProcess[bytes]:
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is required for the interop checks (apt-get install skopeo)"
    return subprocess.run([skopeo, "inspect", image], capture_output=True, check=False)


# ---------------------------------------------------------------------- damage


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
async def sealed(tmp_path: Path) -> Path:
    src, out = tmp_path / "api", tmp_path / "bundle"
    await _source(src)
    await _create(src, out)
    return out


async def test_a_flipped_byte_in_a_blob_names_the_part_and_the_blob(sealed: Path) -> None:
    doc, _, _ = load_bundle_document(sealed)
    digest, spans = max(doc.spans.items(), key=lambda kv: kv[1][0].length)
    _flip(sealed / doc.parts[spans[0].part].name, spans[0].offset + 7)
    result = await verify_bundle(sealed)
    lines = [p.line() for p in result.problems]
    part = doc.parts[spans[0].part].name
    assert any(line.startswith(f"{part}: ") and digest in line for line in lines), lines
    assert any(line.startswith(f"{part}: SHA-256") for line in lines), lines


async def test_a_flipped_byte_in_a_tar_header_is_found(sealed: Path) -> None:
    doc, _, _ = load_bundle_document(sealed)
    _, spans = max(doc.spans.items(), key=lambda kv: kv[1][0].length)
    _flip(sealed / doc.parts[spans[0].part].name, spans[0].offset - 512 + 3)
    result = await verify_bundle(sealed)
    assert any("tar header" in p.message for p in result.problems), result.problems


@pytest.mark.parametrize("damage", ["truncated", "missing", "extra", "edited"])
async def test_damage_is_listed_naming_what_is_wrong(sealed: Path, damage: str) -> None:
    if damage == "truncated":
        os.truncate(sealed / "part-001.tar", 1000)
        want = "part-001.tar: 1000 bytes, bundle.json says 8192 (truncated)"
    elif damage == "missing":
        (sealed / "part-002.tar").unlink()
        want = "part-002.tar: missing"
    elif damage == "extra":
        (sealed / "notes.txt").write_text("hi")
        want = "notes.txt: unexpected file in the bundle"
    else:
        data = json.loads((sealed / "bundle.json").read_text())
        data["repositories"]["api"]["tags"]["v1"] = data["repositories"]["api"]["tags"]["v2"]
        (sealed / "bundle.json").write_text(json.dumps(data))
        want = "bundle.json: edited after it was written"
    result = await verify_bundle(sealed)
    assert any(p.line().startswith(want) for p in result.problems), result.problems
    error = result.error()
    assert error.exit_code == 6 and "\n" not in str(error)


# --------------------------------------------------------------------- resume


async def test_a_create_cut_off_mid_member_resumes_from_its_log(tmp_path: Path) -> None:
    """A writer that dies after a member it never logged: reopened, the parts are cut back."""
    out = tmp_path / "bundle"
    writer = await open_writer(out, "sha256:" + "0" * 64, 8192, None, fresh=False)
    await writer.appender.start()
    blob = os.urandom(5000)
    desc = descriptor_for(blob, mt.OCI_LAYER_GZIP)

    async def opener(offset: int):  # type: ignore[no-untyped-def]
        yield blob[offset:]

    await writer.push_blob("api", desc, opener)
    logged_end = writer.state.end
    # a member half written when the process was killed: bytes in the part, nothing logged
    writer.appender.stream.write(
        tar_header("blobs/sha256/" + "e" * 64, 100_000, 0) + os.urandom(3000)
    )
    writer.appender.stream.sync()
    await writer.aclose()

    again = await open_writer(out, "sha256:" + "0" * 64, 8192, None, fresh=False)
    assert again.state.end == logged_end and desc.digest in again.state.members
    assert again.appender.stream.position == logged_end
    assert await again.blob_exists("api", desc)
    raw = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}'
    await again.push_blob("api", descriptor_for(b"{}", mt.OCI_EMPTY), _bytes_opener(b"{}"))
    mdesc = descriptor_for(raw, mt.OCI_MANIFEST)
    await again.push_manifest("api", mdesc, raw, ("v1",))
    await finalize(again, Finish([], "test", {}, None, None))
    await again.aclose()
    result = await verify_bundle(out)
    assert result.ok, result.problems
    assert not (out / ".bundle-create.jsonl").exists()


async def test_another_create_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    writer = await open_writer(out, "sha256:" + "0" * 64, 8192, None, fresh=False)
    await writer.appender.start()
    await writer.aclose()
    from replicator.errors import UsageError

    with pytest.raises(UsageError, match="unfinished bundle of another create"):
        await open_writer(out, "sha256:" + "1" * 64, 8192, None, fresh=False)
    fresh = await open_writer(out, "sha256:" + "1" * 64, 8192, None, fresh=True)
    assert fresh.state.end == (0, 0)
    await fresh.aclose()


def _bytes_opener(data: bytes):  # type: ignore[no-untyped-def]
    async def open_(offset: int):  # type: ignore[no-untyped-def]
        yield data[offset:]

    return open_


async def test_a_signed_bundle_needs_its_key_and_refuses_another(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from replicator.bundle.signing import VerifyKey

    keys = {}
    for name in ("good", "other"):
        key = ed25519.Ed25519PrivateKey.generate()
        (tmp_path / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (tmp_path / f"{name}.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        keys[name] = VerifyKey.load(tmp_path / f"{name}.pub")
    src, out = tmp_path / "api", tmp_path / "bundle"
    await _source(src)
    await _create(src, out, sign_key=tmp_path / "good.key")
    assert (await verify_bundle(out, keys["good"])).signed
    bad = await verify_bundle(out, keys["other"])
    assert [p.where for p in bad.problems] == ["bundle.json.sig"]
    (out / "bundle.json.sig").unlink()
    missing = await verify_bundle(out, keys["good"])
    assert missing.problems[0].line().startswith("bundle.json.sig: missing")
    assert (await verify_bundle(out)).ok  # no key: nothing is required


async def _frozen_mid_blob(out: Path, blob: bytes) -> Path:
    """A create frozen while a large blob streams (its progress logged), copied as a kill
    would leave it; the copy's directory."""
    import anyio

    writer = await open_writer(out, "sha256:" + "0" * 64, 64 * 1024 * 1024, None, fresh=False)
    await writer.appender.start()
    desc = descriptor_for(blob, mt.OCI_LAYER_GZIP)
    frozen = anyio.Event()

    async def opener(offset: int):  # type: ignore[no-untyped-def]
        for i in range(offset, 18 * 1024 * 1024, 1024 * 1024):
            yield blob[i : i + 1024 * 1024]
        frozen.set()
        await anyio.sleep_forever()

    copy = out.with_name(out.name + "-killed")
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.push_blob, "api", desc, opener)
        await frozen.wait()
        shutil.copytree(out, copy)
        tg.cancel_scope.cancel()
    await writer.aclose()
    return copy


async def test_a_half_written_blob_is_dropped_when_another_comes_first(tmp_path: Path) -> None:
    blob = os.urandom(20 * 1024 * 1024)
    copy = await _frozen_mid_blob(tmp_path / "bundle", blob)
    again = await open_writer(copy, "sha256:" + "0" * 64, 64 * 1024 * 1024, None, fresh=False)
    pending = again.appender.pending
    assert pending is not None and pending.partial.written >= 16 * 1024 * 1024
    raw = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}'
    await again.push_blob("api", descriptor_for(b"{}", mt.OCI_EMPTY), _bytes_opener(b"{}"))
    assert again.appender.pending is None
    await again.push_manifest("api", descriptor_for(raw, mt.OCI_MANIFEST), raw, ("v1",))
    await finalize(again, Finish([], "test", {}, None, None))
    await again.aclose()
    result = await verify_bundle(copy)
    assert result.ok, result.problems
    assert result.document is not None and list(result.document.content.blobs) == [
        descriptor_for(b"{}", mt.OCI_EMPTY).digest
    ]


async def test_a_half_written_blob_continues_from_its_bytes(tmp_path: Path) -> None:
    blob = os.urandom(20 * 1024 * 1024)
    copy = await _frozen_mid_blob(tmp_path / "bundle", blob)
    again = await open_writer(copy, "sha256:" + "0" * 64, 64 * 1024 * 1024, None, fresh=False)
    pending = again.appender.pending
    assert pending is not None
    offsets = []

    async def rest(offset: int):  # type: ignore[no-untyped-def]
        offsets.append(offset)
        yield blob[offset:]

    await again.push_blob("api", descriptor_for(blob, mt.OCI_LAYER_GZIP), rest)
    assert offsets == [pending.partial.written]
    await finalize(again, Finish([], "test", {}, None, None))
    await again.aclose()
    result = await verify_bundle(copy)
    assert result.ok, result.problems
