"""The bundle's pieces on their own: tar headers, part placement, documents, signatures."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from replicator.bundle.documents import parse_bundle_document
from replicator.bundle.model import (
    BlobRecord,
    BundleDocument,
    Content,
    ManifestRecord,
    PartRecord,
    RepositoryContent,
    Span,
    StoredFile,
)
from replicator.bundle.signing import SigningKey, VerifyKey
from replicator.bundle.tarformat import (
    BLOCK,
    END_OF_ARCHIVE,
    PartStream,
    member_length,
    padding,
    parse_header,
    tar_header,
)
from replicator.errors import InputError, IntegrityError

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


# ------------------------------------------------------------------------- tar


def test_headers_are_read_by_python_tarfile_and_by_our_parser() -> None:
    data = b"hello bundle"
    stream = tar_header("blobs/sha256/" + "a" * 64, len(data), 1700000000)
    stream += data + bytes(padding(len(data)))
    stream += tar_header("blobs/", 0, 1700000000, directory=True) + END_OF_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["blobs/sha256/" + "a" * 64, "blobs"]
        assert members[0].size == len(data) and members[1].isdir()
        extracted = tar.extractfile(members[0])
        assert extracted is not None and extracted.read() == data
    assert parse_header(stream[:BLOCK]) == ("blobs/sha256/" + "a" * 64, len(data))


def test_a_damaged_header_does_not_parse() -> None:
    header = bytearray(tar_header("index.json", 10, 0))
    header[5] ^= 1
    assert parse_header(bytes(header)) is None


def test_sizes_of_8_gib_and_more_use_base_256() -> None:
    size = 9 * 1024**3 + 7
    header = tar_header("big", size, 0)
    assert header[124] & 0x80
    assert parse_header(header) == ("big", size)
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert info.size == size


# ------------------------------------------------------------------- placement


def _write_member(stream: PartStream, name: str, data: bytes) -> list[Span]:
    stream.start_member(member_length(len(data)))
    stream.write(tar_header(name, len(data), 0))
    spans = stream.write(data)
    stream.write(bytes(padding(len(data))))
    return spans


def test_members_fill_parts_start_new_ones_and_split_when_larger(tmp_path: Path) -> None:
    stream = PartStream(tmp_path, 8 * BLOCK)  # 4 KiB parts
    a = _write_member(stream, "a", b"a" * 1000)  # 1536 bytes
    b = _write_member(stream, "b", b"b" * 2000)  # 2560 bytes: fits the rest exactly
    c = _write_member(stream, "c", b"c" * 3000)  # 3584: does not fit what is left: new part
    d = _write_member(stream, "d", os.urandom(9000))  # larger than a part: split
    stream.start_member(len(END_OF_ARCHIVE))
    stream.write(END_OF_ARCHIVE)
    stream.sync()
    assert a == [Span(0, 512, 1000)] and b == [Span(0, 2048, 2000)]
    assert c == [Span(1, 512, 3000)]
    assert len(d) >= 3 and sum(s.length for s in d) == 9000
    assert [s.part for s in d] == sorted({s.part for s in d})
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("part-*.tar"))]
    assert all(size <= 4096 and size % BLOCK == 0 for size in sizes)
    assert sizes == stream.sizes
    # each part's hash is the hash of its bytes
    for (size, sha), path in zip(
        stream.digests(), sorted(tmp_path.glob("part-*.tar")), strict=True
    ):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha and path.stat().st_size == size
    # the parts concatenated are one tar holding every member with its bytes
    whole = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("part-*.tar")))
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        assert [m.name for m in tar.getmembers()] == ["a", "b", "c", "d"]
    # GNU tar agrees
    listed = subprocess.run(["tar", "-tf", "-"], input=whole, capture_output=True, check=True)
    assert listed.stdout.split() == [b"a", b"b", b"c", b"d"]
    # a part holding no piece of a split member is a tar file on its own
    with tarfile.open(tmp_path / "part-000.tar") as tar:
        assert [m.name for m in tar.getmembers()] == ["a", "b"]


def test_a_rollback_leaves_the_stream_as_it_was(tmp_path: Path) -> None:
    stream = PartStream(tmp_path, 8 * BLOCK)
    _write_member(stream, "a", b"a" * 100)
    mark = stream.mark()
    before = stream.digests()
    _write_member(stream, "big", os.urandom(10_000))
    assert len(stream.sizes) > 1
    stream.rollback(mark)
    assert stream.digests() == before
    assert sorted(p.name for p in tmp_path.glob("part-*.tar")) == ["part-000.tar"]
    assert (tmp_path / "part-000.tar").stat().st_size == stream.sizes[0]


def test_a_part_size_below_the_minimum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PartStream(tmp_path, 1000)


# ------------------------------------------------------------------- documents


def _document() -> BundleDocument:
    content = Content()
    repo = content.repository("team/api")
    repo.tags["v1"] = D1
    repo.manifests = {D1, D2}
    repo.blobs = {D3}
    content.manifests[D1] = ManifestRecord("application/vnd.oci.image.manifest.v1+json", 10)
    content.manifests[D2] = ManifestRecord(
        "application/vnd.oci.image.manifest.v1+json", 20, "application/x-sig", D1
    )
    content.blobs[D3] = BlobRecord("application/octet-stream", 30)
    return BundleDocument(
        id="abc",
        tool="replicator test",
        created="2026-01-01T00:00:00Z",
        jobs=[{"references": ["x"]}],
        max_part_size=4096,
        content=content,
        spans={D1: (Span(0, 512, 10),), D2: (Span(0, 1536, 20),), D3: (Span(0, 2560, 30),)},
        layout={"index.json": StoredFile(D1, 10, (Span(0, 512, 10),))},
        parts=[PartRecord("part-000.tar", 4096, "0" * 64)],
    )


def test_bundle_json_round_trips_and_states_its_content_digest() -> None:
    doc = _document()
    raw = doc.render()
    parsed, actual = parse_bundle_document(raw)
    assert actual == parsed.content_digest == doc.content_digest
    assert parsed.content.to_json() == doc.content.to_json()
    assert parsed.spans == doc.spans and parsed.parts == doc.parts
    assert parsed.content.referrers_of("team/api", D1) == [D2]


def test_an_edit_that_keeps_the_stated_digest_is_found() -> None:
    data = json.loads(_document().render())
    data["repositories"]["team/api"]["tags"]["v1"] = D2
    parsed, actual = parse_bundle_document(json.dumps(data).encode())
    assert parsed.content_digest != actual


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("parts", 0, "name"), "../evil.tar", "is not 'part-000.tar'"),
        (("blobs", D3, "at"), [[0, 4090, 30]], "lies outside part-000.tar"),
        (("blobs", D3, "at"), [[3, 0, 30]], "names part 3"),
        (("blobs", D3, "size"), 31, "covers 30 bytes, the size is 31"),
        (("layout",), {"../../etc/passwd": {}}, "unexpected path"),
        (("formatVersion",), 2, "is not supported"),
    ],
)
def test_malformed_documents_are_refused_naming_the_field(
    path: tuple[object, ...], value: object, message: str
) -> None:
    data = json.loads(_document().render())
    node = data
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    with pytest.raises(IntegrityError, match=r"bundle\.json") as info:
        parse_bundle_document(json.dumps(data).encode())
    assert message in str(info.value)


def test_content_lists_merge_newer_tags_over_older() -> None:
    old = Content(repositories={"a": RepositoryContent(tags={"v1": D1}, manifests={D1})})
    new = Content(repositories={"a": RepositoryContent(tags={"v1": D2}, manifests={D2})})
    merged = old.merged(new)
    assert merged.repositories["a"].tags == {"v1": D2}
    assert merged.repositories["a"].manifests == {D1, D2}


# ------------------------------------------------------------------- signatures


def _pem(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path
) -> tuple[Path, Path]:
    private = path.with_suffix(".key")
    public = path.with_suffix(".pub")
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_signatures_verify_and_another_key_or_document_fails(tmp_path: Path, kind: str) -> None:
    make = (
        ed25519.Ed25519PrivateKey.generate
        if kind == "ed25519"
        else lambda: ec.generate_private_key(ec.SECP256R1())
    )
    private, public = _pem(make(), tmp_path / "a")
    _, other_public = _pem(make(), tmp_path / "b")
    signature = SigningKey.load(private).sign(b"document")
    VerifyKey.load(public).check(b"document", signature, "x.sig")
    with pytest.raises(IntegrityError, match="does not verify"):
        VerifyKey.load(public).check(b"documenT", signature, "x.sig")
    with pytest.raises(IntegrityError, match="does not verify"):
        VerifyKey.load(other_public).check(b"document", signature, "x.sig")


def test_unsupported_keys_are_refused_with_the_ones_that_work(tmp_path: Path) -> None:
    private, public = _pem(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), tmp_path / "r"
    )
    with pytest.raises(InputError, match="Ed25519 or ECDSA P-256"):
        SigningKey.load(private)
    with pytest.raises(InputError, match="Ed25519 or ECDSA P-256"):
        VerifyKey.load(public)
    p384, _ = _pem(ec.generate_private_key(ec.SECP384R1()), tmp_path / "p")
    with pytest.raises(InputError, match="secp384r1"):
        SigningKey.load(p384)


def test_openssl_made_keys_work(tmp_path: Path) -> None:
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True)
    VerifyKey.load(pub).check(b"x", SigningKey.load(key).sign(b"x"), "s")
