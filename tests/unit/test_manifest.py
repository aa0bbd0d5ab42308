"""Manifests: parsing all types from their exact bytes, successors, building, errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.errors import InputError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import (
    EMPTY_CONFIG,
    MAX_MANIFEST_SIZE,
    build_image_manifest,
    build_index,
    parse_manifest,
)


def _d(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def _desc(media_type: str, n: int, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _d(n), "size": size, **extra}


def _sha(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


OCI_IMAGE: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "config": _desc(mt.OCI_CONFIG, 1),
    "layers": [_desc(mt.OCI_LAYER_GZIP, 2), _desc(mt.OCI_LAYER_GZIP, 3)],
    "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
}
OCI_INDEX: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_INDEX,
    "manifests": [
        _desc(mt.OCI_MANIFEST, 10, platform={"os": "linux", "architecture": "amd64"}),
        _desc(
            mt.OCI_MANIFEST, 11, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}
        ),
    ],
}
DOCKER_IMAGE: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mt.DOCKER_MANIFEST,
    "config": _desc(mt.DOCKER_CONFIG, 20),
    "layers": [
        _desc(mt.DOCKER_LAYER_GZIP, 21),
        _desc(mt.DOCKER_LAYER_FOREIGN, 22, urls=["https://example.invalid/layer"]),
        _desc(mt.DOCKER_LAYER_GZIP, 23),
    ],
}
DOCKER_LIST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mt.DOCKER_MANIFEST_LIST,
    "manifests": [_desc(mt.DOCKER_MANIFEST, 30, platform={"os": "linux", "architecture": "amd64"})],
}
ARTIFACT: dict[str, Any] = {
    "mediaType": mt.OCI_ARTIFACT_MANIFEST,
    "artifactType": "signature/example",
    "blobs": [_desc("application/json", 40)],
    "subject": _desc(mt.OCI_MANIFEST, 41),
}


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _pretty_reordered(doc: dict[str, Any]) -> bytes:
    reordered = dict(reversed(list(doc.items())))
    return ("\n  " + json.dumps(reordered, indent=7) + "\n\n").encode()


# --- all four types, any formatting --------------------------------------------------------


@pytest.mark.parametrize("encode", [_compact, _pretty_reordered], ids=["compact", "pretty"])
@pytest.mark.parametrize("doc", [OCI_IMAGE, OCI_INDEX, DOCKER_IMAGE, DOCKER_LIST, ARTIFACT])
def test_digest_is_of_the_exact_bytes(doc: dict[str, Any], encode: Any) -> None:
    raw = encode(doc)
    m = parse_manifest(raw)
    assert m.raw == raw
    assert m.digest == _sha(raw)
    assert m.media_type == doc["mediaType"]
    assert m.size == len(raw)
    desc = m.descriptor
    assert (desc.digest, desc.size, desc.media_type) == (m.digest, len(raw), m.media_type)


def test_oci_image_manifest_fields() -> None:
    m = parse_manifest(_compact(OCI_IMAGE), mt.OCI_MANIFEST)
    assert not m.is_index
    assert m.config is not None and m.config.digest == _d(1)
    assert [layer.digest for layer in m.layers] == [_d(2), _d(3)]
    assert m.manifests == ()
    assert m.subject is None
    assert m.artifact_type == mt.OCI_CONFIG
    assert m.annotations == {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    assert [d.digest for d in m.blobs()] == [_d(1), _d(2), _d(3)]
    assert m.children() == []
    assert [d.digest for d in m.successors()] == [_d(1), _d(2), _d(3)]


def test_index_children_and_platforms() -> None:
    m = parse_manifest(_compact(OCI_INDEX))
    assert m.is_index
    assert m.config is None and m.layers == () and m.blobs() == []
    assert [d.digest for d in m.children()] == [_d(10), _d(11)]
    assert [str(d.platform) for d in m.children()] == ["linux/amd64", "linux/arm64/v8"]
    assert m.artifact_type is None
    assert [d.digest for d in m.successors()] == [_d(10), _d(11)]


def test_docker_manifest_list() -> None:
    m = parse_manifest(_compact(DOCKER_LIST), mt.DOCKER_MANIFEST_LIST)
    assert m.is_index
    assert [d.media_type for d in m.children()] == [mt.DOCKER_MANIFEST]


def test_docker_manifest_foreign_layers_are_not_blobs() -> None:
    m = parse_manifest(_compact(DOCKER_IMAGE))
    assert m.artifact_type == mt.DOCKER_CONFIG
    assert [d.digest for d in m.blobs()] == [_d(20), _d(21), _d(23)]
    assert [d.digest for d in m.foreign_layers()] == [_d(22)]
    assert m.foreign_layers()[0].urls == ("https://example.invalid/layer",)
    assert len(m.layers) == 3
    assert _d(22) not in [d.digest for d in m.successors()]


def test_oci_non_distributable_layers() -> None:
    doc = dict(OCI_IMAGE, layers=[_desc(mt.OCI_LAYER_NONDIST_GZIP, 50), _desc(mt.OCI_LAYER, 51)])
    m = parse_manifest(_compact(doc))
    assert [d.digest for d in m.blobs()] == [_d(1), _d(51)]
    assert [d.digest for d in m.foreign_layers()] == [_d(50)]


def test_artifact_manifest_blobs_become_layers() -> None:
    m = parse_manifest(_compact(ARTIFACT))
    assert m.config is None
    assert [d.digest for d in m.layers] == [_d(40)]
    assert m.artifact_type == "signature/example"
    assert m.subject is not None and m.subject.digest == _d(41)
    assert [d.digest for d in m.successors()] == [_d(40), _d(41)]


def test_referrer_with_subject_and_empty_config() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "sbom/example",
        "config": EMPTY_CONFIG.to_json(),
        "layers": [_desc("application/json", 60)],
        "subject": _desc(mt.OCI_MANIFEST, 61, size=500),
        "annotations": {"org.opencontainers.image.created": "now"},
    }
    m = parse_manifest(_compact(doc))
    assert m.artifact_type == "sbom/example"
    assert m.subject == Descriptor(mt.OCI_MANIFEST, _d(61), 500)
    assert [d.digest for d in m.successors()] == [mt.EMPTY_JSON_DIGEST, _d(60), _d(61)]
    desc = m.descriptor
    assert desc.artifact_type == "sbom/example"
    assert desc.annotations == {"org.opencontainers.image.created": "now"}


def test_index_with_subject_lists_subject_last() -> None:
    doc = dict(OCI_INDEX, subject=_desc(mt.OCI_MANIFEST, 70), artifactType="bundle/x")
    m = parse_manifest(_compact(doc))
    assert m.artifact_type == "bundle/x"
    assert [d.digest for d in m.successors()] == [_d(10), _d(11), _d(70)]


def test_successors_are_deduplicated_in_order() -> None:
    doc = dict(
        OCI_IMAGE,
        layers=[_desc(mt.OCI_LAYER, 2), _desc(mt.OCI_LAYER, 1), _desc(mt.OCI_LAYER, 2)],
        subject=_desc(mt.OCI_MANIFEST, 2),
    )
    m = parse_manifest(_compact(doc))
    assert len(m.layers) == 3
    assert [d.digest for d in m.successors()] == [_d(1), _d(2)]


# --- media type resolution ----------------------------------------------------------------


def test_content_type_with_parameters_and_generic_types() -> None:
    raw = _compact(OCI_IMAGE)
    assert parse_manifest(raw, f"{mt.OCI_MANIFEST}; charset=utf-8").media_type == mt.OCI_MANIFEST
    assert parse_manifest(raw, "application/json").media_type == mt.OCI_MANIFEST
    assert parse_manifest(raw, "").media_type == mt.OCI_MANIFEST


def test_media_type_from_content_type_when_body_has_none() -> None:
    doc = {k: v for k, v in DOCKER_IMAGE.items() if k != "mediaType"}
    assert parse_manifest(_compact(doc), mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({k: v for k, v in OCI_IMAGE.items() if k != "mediaType"}, mt.OCI_MANIFEST),
        ({k: v for k, v in OCI_INDEX.items() if k != "mediaType"}, mt.OCI_INDEX),
    ],
)
def test_media_type_detected_without_any_hint(doc: dict[str, Any], expected: str) -> None:
    assert parse_manifest(_compact(doc)).media_type == expected


def test_content_type_and_body_disagree() -> None:
    with pytest.raises(InputError, match="disagrees"):
        parse_manifest(_compact(OCI_IMAGE), mt.OCI_INDEX)


# --- malformed input ----------------------------------------------------------------------


def _without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


MALFORMED: list[tuple[str, bytes, str | None, str]] = [
    ("not json", b"{not json", None, "not valid JSON"),
    ("empty", b"", None, "not valid JSON"),
    ("not utf8", b'{"a":"\xff"}', None, "not UTF-8"),
    ("array", b"[1,2]", None, "not an object"),
    ("string", b'"x"', None, "not an object"),
    ("duplicate key", b'{"schemaVersion":2,"schemaVersion":2}', None, "duplicate key"),
    ("schema1", _compact({"schemaVersion": 1, "name": "x", "fsLayers": []}), None, "schema 1"),
    (
        "schema1 type",
        b"{}",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "schema 1",
    ),
    ("schema1 body", _compact(dict(OCI_IMAGE, schemaVersion=1)), None, "schema 1"),
    ("schema 3", _compact(dict(OCI_IMAGE, schemaVersion=3)), None, "schemaVersion must be 2"),
    ("schema str", _compact(dict(OCI_IMAGE, schemaVersion="2")), None, "schemaVersion must be 2"),
    ("schema bool", _compact(dict(OCI_IMAGE, schemaVersion=True)), None, "schemaVersion must be 2"),
    ("no schema", _compact(_without(OCI_IMAGE, "schemaVersion")), None, "schemaVersion must be 2"),
    ("undetectable", _compact({"schemaVersion": 2}), None, "no mediaType"),
    (
        "ambiguous",
        _compact(dict(_without(OCI_INDEX, "mediaType"), layers=[])),
        None,
        "ambiguous",
    ),
    ("index with layers", _compact(dict(OCI_INDEX, layers=[])), None, "must not have config"),
    ("image with manifests", _compact(dict(OCI_IMAGE, manifests=[])), None, "must not have"),
    ("unknown type", _compact(dict(OCI_IMAGE, mediaType="application/x-foo")), None, "unsupported"),
    ("media type not str", _compact(dict(OCI_IMAGE, mediaType=5)), None, "not a string"),
    ("no config", _compact(_without(OCI_IMAGE, "config")), None, "config is missing"),
    ("no layers", _compact(_without(OCI_IMAGE, "layers")), None, "layers is missing"),
    ("layers not list", _compact(dict(OCI_IMAGE, layers={})), None, "layers is not a list"),
    ("no manifests", _compact(_without(OCI_INDEX, "manifests")), None, "manifests is missing"),
    ("config not object", _compact(dict(OCI_IMAGE, config=[])), None, "config: descriptor"),
    (
        "layer bad digest",
        _compact(dict(OCI_IMAGE, layers=[dict(_desc(mt.OCI_LAYER, 1), digest="sha256:zz")])),
        None,
        "layers[0]",
    ),
    (
        "layer negative size",
        _compact(dict(OCI_IMAGE, layers=[dict(_desc(mt.OCI_LAYER, 1), size=-1)])),
        None,
        "invalid size",
    ),
    (
        "child without media type",
        _compact(dict(OCI_INDEX, manifests=[_without(_desc(mt.OCI_MANIFEST, 1), "mediaType")])),
        None,
        "manifests[0]",
    ),
    ("bad subject", _compact(dict(OCI_IMAGE, subject={"digest": "x"})), None, "subject"),
    ("bad artifactType", _compact(dict(OCI_IMAGE, artifactType=3)), None, "artifactType"),
    ("bad annotations", _compact(dict(OCI_IMAGE, annotations={"a": 1})), None, "annotations"),
    ("annotations list", _compact(dict(OCI_IMAGE, annotations=[])), None, "annotations"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, None, "invalid manifest"),
]


@pytest.mark.parametrize(
    ("raw", "media_type", "fragment"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_manifests_raise_input_error(
    raw: bytes, media_type: str | None, fragment: str
) -> None:
    with pytest.raises(InputError) as info:
        parse_manifest(raw, media_type)
    assert str(info.value).startswith("invalid manifest:")
    assert fragment in str(info.value)


def test_oversized_manifest_is_rejected_before_parsing() -> None:
    doc = dict(OCI_IMAGE, annotations={"pad": "x" * MAX_MANIFEST_SIZE})
    with pytest.raises(InputError, match="byte limit"):
        parse_manifest(_compact(doc))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_input_error(raw: bytes) -> None:
    try:
        m = parse_manifest(raw)
    except InputError:
        return
    assert m.digest == _sha(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([OCI_IMAGE, OCI_INDEX, DOCKER_IMAGE, ARTIFACT]),
    st.sampled_from(
        ["config", "layers", "manifests", "subject", "annotations", "blobs", "mediaType"]
    ),
    json_values,
)
def test_mutated_manifests_parse_or_raise_input_error(
    doc: dict[str, Any], key: str, value: Any
) -> None:
    raw = _compact(dict(doc, **{key: value}))
    try:
        m = parse_manifest(raw)
    except InputError:
        return
    assert m.digest == _sha(raw)


# --- building ------------------------------------------------------------------------------


def test_build_image_manifest_is_compact_and_ordered() -> None:
    layer = descriptor_for(
        b"hello", "application/markdown", annotations={"org.opencontainers.image.title": "r.md"}
    )
    subject = Descriptor(mt.OCI_MANIFEST, _d(80), 123)
    raw = build_image_manifest(
        config=EMPTY_CONFIG,
        layers=[layer],
        artifact_type="readme/example",
        subject=subject,
        annotations={"z": "1", "org.opencontainers.image.created": "2024"},
    )
    doc = json.loads(raw)
    assert list(doc) == [
        "schemaVersion",
        "mediaType",
        "artifactType",
        "config",
        "layers",
        "subject",
        "annotations",
    ]
    assert list(doc["annotations"]) == ["org.opencontainers.image.created", "z"]
    assert b" " not in raw and b"\n" not in raw
    assert doc["config"] == {
        "mediaType": mt.OCI_EMPTY,
        "digest": mt.EMPTY_JSON_DIGEST,
        "size": 2,
    }
    m = parse_manifest(raw)
    assert m.media_type == mt.OCI_MANIFEST
    assert m.artifact_type == "readme/example"
    assert m.subject == subject
    assert m.layers[0].title == "r.md"
    assert m.annotations["z"] == "1"
    again = build_image_manifest(
        config=EMPTY_CONFIG,
        layers=[layer],
        artifact_type="readme/example",
        subject=subject,
        annotations={"org.opencontainers.image.created": "2024", "z": "1"},
    )
    assert again == raw


def test_build_image_manifest_minimal() -> None:
    config = descriptor_for(b'{"architecture":"amd64"}', mt.OCI_CONFIG)
    raw = build_image_manifest(
        config=config, layers=[], artifact_type=None, subject=None, annotations=None
    )
    assert list(json.loads(raw)) == ["schemaVersion", "mediaType", "config", "layers"]
    m = parse_manifest(raw)
    assert m.artifact_type == mt.OCI_CONFIG
    assert m.layers == ()


def test_build_keeps_fields_of_parsed_descriptors() -> None:
    layer = Descriptor.from_json(dict(_desc(mt.OCI_LAYER, 90), data="e30=", **{"x-extra": 1}))
    raw = build_image_manifest(
        config=EMPTY_CONFIG, layers=[layer], artifact_type="a/b", subject=None, annotations={}
    )
    assert json.loads(raw)["layers"][0]["x-extra"] == 1
    assert "annotations" not in json.loads(raw)


def test_build_image_manifest_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="artifact type"):
        build_image_manifest(
            config=EMPTY_CONFIG, layers=[], artifact_type=None, subject=None, annotations=None
        )
    with pytest.raises(InputError, match="artifact type"):
        build_image_manifest(
            config=EMPTY_CONFIG, layers=[], artifact_type="", subject=None, annotations=None
        )
    with pytest.raises(InputError, match="byte limit"):
        build_image_manifest(
            config=EMPTY_CONFIG,
            layers=[],
            artifact_type="a/b",
            subject=None,
            annotations={"pad": "x" * MAX_MANIFEST_SIZE},
        )


def test_build_index() -> None:
    a = Descriptor(mt.OCI_MANIFEST, _d(100), 10, artifact_type="sig/x", annotations={"k": "v"})
    b = Descriptor.from_json(
        _desc(mt.OCI_MANIFEST, 101, platform={"os": "linux", "architecture": "amd64"})
    )
    raw = build_index([a, b], annotations={"note": "é"}, artifact_type="bundle/x")
    doc = json.loads(raw)
    assert list(doc) == ["schemaVersion", "mediaType", "artifactType", "manifests", "annotations"]
    assert "é".encode() in raw
    m = parse_manifest(raw, mt.OCI_INDEX)
    assert m.children() == [a, b]
    assert m.children()[0].artifact_type == "sig/x"
    assert str(m.children()[1].platform) == "linux/amd64"
    assert m.artifact_type == "bundle/x"
    assert build_index([a, b], annotations={"note": "é"}, artifact_type="bundle/x") == raw


def test_build_empty_referrers_index() -> None:
    raw = build_index([])
    assert raw == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    )
    assert parse_manifest(raw).children() == []
