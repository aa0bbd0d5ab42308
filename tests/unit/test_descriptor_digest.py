"""Descriptors, platforms, digest validation and the streaming digest verifier."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.errors import InputError, IntegrityError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor, Platform, validate_digest
from replicator.oci.digest import DigestVerifier, descriptor_for, digest_bytes, verify_bytes

DATA = b"hello, registry"
D = "sha256:" + hashlib.sha256(DATA).hexdigest()


# --- validate_digest --------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    ["sha256:" + "0" * 64, "sha256:" + "af" * 32, "sha512:" + "9" * 128, mt.EMPTY_JSON_DIGEST],
)
def test_valid_digests_are_returned(digest: str) -> None:
    assert validate_digest(digest) == digest


@pytest.mark.parametrize(
    ("digest", "fragment"),
    [
        ("", "invalid digest"),
        ("sha256", "invalid digest"),
        ("sha256:", "invalid digest"),
        (":" + "0" * 64, "invalid digest"),
        ("SHA256:" + "0" * 64, "invalid digest"),
        ("sha256:" + "0" * 63, "invalid sha256 digest"),
        ("sha256:" + "0" * 65, "invalid sha256 digest"),
        ("sha256:" + "A" * 64, "invalid sha256 digest"),
        ("sha256:" + "0" * 64 + "\n", "invalid digest"),
        ("sha512:" + "0" * 64, "invalid sha512 digest"),
        ("md5:" + "0" * 32, "unsupported digest algorithm"),
        ("sha256:" + "0" * 10_000, "invalid sha256 digest"),
    ],
)
def test_invalid_digests_raise_input_error(digest: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        validate_digest(digest)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 250


def test_non_string_digest_is_rejected() -> None:
    with pytest.raises(InputError):
        validate_digest(12)  # type: ignore[arg-type]


# --- digest_bytes / descriptor_for / verify_bytes ---------------------------------------


def test_digest_bytes_and_descriptor_for() -> None:
    assert digest_bytes(b"{}") == mt.EMPTY_JSON_DIGEST
    assert digest_bytes(DATA, "sha512") == "sha512:" + hashlib.sha512(DATA).hexdigest()
    desc = descriptor_for(DATA, "text/plain", annotations={"a": "b"})
    assert (desc.digest, desc.size, desc.media_type, desc.annotations) == (
        D,
        len(DATA),
        "text/plain",
        {"a": "b"},
    )
    with pytest.raises(IntegrityError):
        digest_bytes(DATA, "md5")


def test_verify_bytes() -> None:
    verify_bytes(DATA, D, len(DATA))
    verify_bytes(DATA, D)
    with pytest.raises(IntegrityError, match="digest mismatch"):
        verify_bytes(DATA + b"!", D)
    with pytest.raises(IntegrityError, match="size mismatch"):
        verify_bytes(DATA, D, len(DATA) + 1)


# --- DigestVerifier ---------------------------------------------------------------------


def test_verifier_accepts_the_right_stream_in_any_chunking() -> None:
    v = DigestVerifier(D, len(DATA))
    for i in range(0, len(DATA), 4):
        v.update(memoryview(DATA)[i : i + 4])
    v.verify()
    assert v.current == D
    assert v.seen == len(DATA)


def test_verifier_detects_wrong_digest() -> None:
    v = DigestVerifier(D, len(DATA))
    v.update(b"hello, REGISTRY")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        v.verify()


def test_verifier_detects_short_stream() -> None:
    v = DigestVerifier(D, len(DATA))
    v.update(DATA[:-1])
    with pytest.raises(IntegrityError, match="size mismatch"):
        v.verify()


def test_verifier_stops_an_overlong_stream_at_once() -> None:
    v = DigestVerifier(D, len(DATA))
    v.update(DATA)
    with pytest.raises(IntegrityError, match="more than the declared"):
        v.update(b"x")


def test_verifier_without_size_checks_digest_only() -> None:
    v = DigestVerifier(D)
    v.update(bytearray(DATA))
    v.verify()
    v2 = DigestVerifier(D)
    v2.update(DATA * 2)
    with pytest.raises(IntegrityError):
        v2.verify()


def test_verifier_sha512() -> None:
    d512 = "sha512:" + hashlib.sha512(DATA).hexdigest()
    v = DigestVerifier(d512, len(DATA))
    v.update(DATA)
    v.verify()


def test_verifier_rejects_malformed_expected_digest() -> None:
    with pytest.raises(InputError):
        DigestVerifier("sha256:nothex")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=300), max_size=20))
def test_verifier_matches_hashlib_for_any_split(data: bytes, cuts: list[int]) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    v = DigestVerifier(digest, len(data))
    pos = 0
    for cut in cuts:
        v.update(data[pos : pos + cut])
        pos = min(len(data), pos + cut)
    v.update(data[pos:])
    v.verify()


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=500), st.data())
def test_verifier_detects_any_single_flipped_byte(data: bytes, draw: st.DataObject) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    i = draw.draw(st.integers(min_value=0, max_value=len(data) - 1))
    bad = bytearray(data)
    bad[i] ^= draw.draw(st.integers(min_value=1, max_value=255))
    v = DigestVerifier(digest, len(data))
    v.update(bytes(bad))
    with pytest.raises(IntegrityError):
        v.verify()


# --- Descriptor ---------------------------------------------------------------------------


def _raw(**extra: object) -> dict[str, object]:
    return {"mediaType": mt.OCI_MANIFEST, "digest": D, "size": len(DATA), **extra}


def test_descriptor_from_json_full() -> None:
    desc = Descriptor.from_json(
        _raw(
            annotations={"org.opencontainers.image.title": "readme.md"},
            artifactType="sbom/example",
            platform={"os": "linux", "architecture": "arm64", "variant": "v8", "os.version": "1"},
            urls=["https://example.invalid/x"],
        )
    )
    assert desc.title == "readme.md"
    assert desc.artifact_type == "sbom/example"
    assert desc.platform == Platform("linux", "arm64", "v8", "1")
    assert desc.urls == ("https://example.invalid/x",)
    assert desc.short == D.split(":")[1][:12]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "not a JSON object"),
        ({"digest": D, "size": 1}, "no mediaType"),
        ({"mediaType": "", "digest": D, "size": 1}, "no mediaType"),
        ({"mediaType": "a/b", "size": 1}, "no digest"),
        ({"mediaType": "a/b", "digest": "sha256:12", "size": 1}, "invalid sha256 digest"),
        ({"mediaType": "a/b", "digest": D}, "invalid size"),
        ({"mediaType": "a/b", "digest": D, "size": -1}, "invalid size"),
        ({"mediaType": "a/b", "digest": D, "size": True}, "invalid size"),
        ({"mediaType": "a/b", "digest": D, "size": 1.5}, "invalid size"),
        ({"mediaType": "a/b", "digest": D, "size": 1, "annotations": {"a": 1}}, "annotations"),
        ({"mediaType": "a/b", "digest": D, "size": 1, "annotations": []}, "annotations"),
        ({"mediaType": "a/b", "digest": D, "size": 1, "artifactType": 5}, "artifactType"),
    ],
)
def test_descriptor_from_json_rejects_malformed(data: object, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        Descriptor.from_json(data)
    assert fragment in str(info.value)


def test_descriptor_to_json_keeps_unknown_fields_as_read() -> None:
    raw = _raw(data="aGVsbG8=", **{"x-vendor": {"k": 1}})
    desc = Descriptor.from_json(raw)
    assert desc.to_json() == raw
    assert list(desc.to_json()) == list(raw)


def test_descriptor_to_json_follows_replaced_fields() -> None:
    desc = Descriptor.from_json(_raw(**{"x-vendor": 1}, annotations={"a": "1"}))
    changed = dataclasses.replace(desc, annotations={"a": "2"}, artifact_type="sig/x")
    out = changed.to_json()
    assert out["annotations"] == {"a": "2"}
    assert out["artifactType"] == "sig/x"
    assert out["x-vendor"] == 1
    other = dataclasses.replace(desc, digest=mt.EMPTY_JSON_DIGEST, size=2)
    assert other.to_json() == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": mt.EMPTY_JSON_DIGEST,
        "size": 2,
        "annotations": {"a": "1"},
    }


def test_descriptor_to_json_from_fields() -> None:
    desc = Descriptor(
        mt.OCI_MANIFEST,
        D,
        3,
        annotations={"k": "v"},
        artifact_type="a/b",
        platform=Platform("linux", "amd64"),
        urls=("u",),
    )
    assert Descriptor.from_json(desc.to_json()) == desc
    assert desc.title is None


def test_descriptors_are_hashable_and_compare_without_raw() -> None:
    a = Descriptor.from_json(_raw(annotations={"k": "v"}, extra=1))
    b = Descriptor(mt.OCI_MANIFEST, D, len(DATA), annotations={"k": "v"})
    assert a == b
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1


# --- Platform -----------------------------------------------------------------------------


def test_platform_parse_and_match() -> None:
    want = Platform.parse("linux/arm64")
    assert want.matches(Platform("linux", "arm64", "v8"))
    assert not want.matches(Platform("linux", "amd64"))
    assert Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v7"))
    assert not Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v6"))
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d", ""):
        with pytest.raises(InputError, match="invalid platform"):
            Platform.parse(bad)


def test_platform_from_json_ignores_non_string_extras() -> None:
    p = Platform.from_json({"os": "linux", "architecture": "amd64", "variant": 7})
    assert p == Platform("linux", "amd64")


def test_a_verifier_copy_goes_on_independently() -> None:
    data = b"hello, copies"
    v = DigestVerifier("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    v.update(data[:5])
    twin = v.copy()
    twin.update(data[5:])
    twin.verify()  # the copy saw the first part, then the rest
    assert v.seen == 5 and twin.seen == len(data)
    v.update(b"X" * (len(data) - 5))
    with pytest.raises(IntegrityError):
        v.verify()  # the original went its own way
