"""Manifests and indexes: parsing their exact bytes, listing successors, building new ones.

Pure, no I/O.  :func:`parse_manifest` reads the four distributable types (OCI
image manifest, OCI image index, Docker schema2 manifest, Docker manifest list)
and, read-only, the withdrawn OCI artifact manifest.  The parsed
:class:`Manifest` keeps the bytes it came from; nothing here ever re-serialises
a manifest that was read, so its digest never changes.

:func:`build_image_manifest` and :func:`build_index` write new manifests as
compact JSON with keys in the image-spec order (``schemaVersion``,
``mediaType``, ``artifactType``, ``config``, ``layers``/``manifests``,
``subject``, ``annotations``), as ORAS does; the same input always gives the
same bytes.

Every malformed manifest raises :class:`replicator.errors.InputError` whose
message starts with ``invalid manifest:``; registry code rewraps it as a
``ProtocolError``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from replicator.errors import InputError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import digest_bytes

MAX_MANIFEST_SIZE = 4 * 1024 * 1024

DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

#: The descriptor of the empty JSON config (``{}``) used by artifacts.
EMPTY_CONFIG = Descriptor(media_type=mt.OCI_EMPTY, digest=mt.EMPTY_JSON_DIGEST, size=2)

#: Content types that say nothing about the manifest type; the body decides.
_GENERIC_CONTENT_TYPES = frozenset(
    {"", "application/json", "application/octet-stream", "text/plain"}
)
_IMAGE_TYPES = frozenset({mt.OCI_MANIFEST, mt.DOCKER_MANIFEST})
_SUPPORTED = frozenset(mt.ALL_MANIFEST_TYPES) | {mt.OCI_ARTIFACT_MANIFEST}


def _bad(why: str) -> InputError:
    return InputError(f"invalid manifest: {why}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest or index together with its exact bytes.

    ``digest`` is the sha256 of ``raw``.  ``layers`` also holds the ``blobs`` of
    the withdrawn artifact manifest.  ``artifact_type`` is the ``artifactType``
    field, else (image manifests) the config media type, as the image-spec
    prescribes for referrers listings.
    """

    media_type: str
    raw: bytes = field(repr=False)
    digest: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: Mapping[str, str]

    @property
    def is_index(self) -> bool:
        """True for an OCI index or a Docker manifest list."""
        return mt.is_index(self.media_type)

    @property
    def size(self) -> int:
        """The size of the raw bytes."""
        return len(self.raw)

    @property
    def descriptor(self) -> Descriptor:
        """The descriptor that names this manifest (with artifact type and annotations).

        This is the entry a referrers index lists for it.
        """
        return Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=len(self.raw),
            annotations=dict(self.annotations) if self.annotations else None,
            artifact_type=self.artifact_type,
        )

    def blobs(self) -> list[Descriptor]:
        """Config then layers, without non-distributable layers and without duplicates."""
        out: list[Descriptor] = []
        seen: set[str] = set()
        candidates = ([self.config] if self.config is not None else []) + list(self.layers)
        for desc in candidates:
            if mt.is_non_distributable(desc.media_type) or desc.digest in seen:
                continue
            seen.add(desc.digest)
            out.append(desc)
        return out

    def foreign_layers(self) -> list[Descriptor]:
        """The non-distributable (foreign) layers, which are never copied."""
        return [d for d in self.layers if mt.is_non_distributable(d.media_type)]

    def children(self) -> list[Descriptor]:
        """The manifests an index or manifest list names, in order."""
        return list(self.manifests)

    def successors(self) -> list[Descriptor]:
        """Everything this node points to: ``blobs()``, then ``children()``, then the subject.

        Duplicates (same digest) are listed once, at their first position.
        """
        out = self.blobs()
        seen = {d.digest for d in out}
        tail = self.children() + ([self.subject] if self.subject is not None else [])
        for desc in tail:
            if desc.digest not in seen:
                seen.add(desc.digest)
                out.append(desc)
        return out


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _load_json(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except InputError:
        raise
    except RecursionError:
        raise _bad("JSON nested too deeply") from None
    except ValueError as exc:
        raise _bad(f"not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise _bad("the JSON document is not an object")
    return data


def _clean_media_type(value: str | None) -> str:
    """The media type without parameters, lower case; interned (a run keeps one copy of each)."""
    if value is None:
        return ""
    return sys.intern(value.split(";", 1)[0].strip().lower())


def _resolve_media_type(data: Mapping[str, Any], given: str | None) -> str:
    header = _clean_media_type(given)
    if header in _GENERIC_CONTENT_TYPES:
        header = ""
    body_value = data.get("mediaType")
    if body_value is not None and not isinstance(body_value, str):
        raise _bad("mediaType is not a string")
    body = _clean_media_type(body_value)
    if header and body and header != body:
        raise _bad(f"the content type {header!r} disagrees with the mediaType {body!r}")
    media_type = header or body
    if not media_type:
        media_type = _detect(data)
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise _bad("Docker schema 1 manifests are not supported")
    if media_type not in _SUPPORTED:
        raise _bad(f"unsupported manifest media type {media_type[:100]!r}")
    return media_type


def _detect(data: Mapping[str, Any]) -> str:
    if data.get("schemaVersion") == 1:
        raise _bad("Docker schema 1 manifests are not supported")
    if "manifests" in data:
        if "config" in data or "layers" in data:
            raise _bad("ambiguous: it has both manifests and config/layers, and no mediaType")
        return mt.OCI_INDEX
    if "config" in data and "layers" in data:
        return mt.OCI_MANIFEST
    raise _bad("no mediaType and neither manifests nor config and layers")


def _check_schema_version(data: Mapping[str, Any], media_type: str) -> None:
    version = data.get("schemaVersion")
    if version is None and media_type == mt.OCI_ARTIFACT_MANIFEST:
        return
    if version == 1 and not isinstance(version, bool):
        raise _bad("Docker schema 1 manifests are not supported")
    if version != 2 or isinstance(version, bool):
        raise _bad(f"schemaVersion must be 2, got {json.dumps(version)[:40]}")


def _descriptor(value: Any, where: str) -> Descriptor:
    try:
        return Descriptor.from_json(value)
    except InputError as exc:
        raise _bad(f"{where}: {exc.message}") from None


def _descriptor_list(
    data: Mapping[str, Any], key: str, *, required: bool
) -> tuple[Descriptor, ...]:
    value = data.get(key)
    if value is None:
        if required:
            raise _bad(f"{key} is missing")
        return ()
    if not isinstance(value, list):
        raise _bad(f"{key} is not a list")
    return tuple(_descriptor(item, f"{key}[{i}]") for i, item in enumerate(value))


def _annotations(data: Mapping[str, Any]) -> dict[str, str]:
    value = data.get("annotations")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad("annotations must be an object of strings")
    return dict(value)


def _optional_string(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{key} is not a string")
    return value or None


def parse_manifest(raw: bytes, media_type: str | None = None) -> Manifest:
    """Parse manifest bytes; ``media_type`` is the Content-Type they came with, if any.

    The media type comes from ``media_type`` or the JSON ``mediaType`` (they must
    agree when both are given; parameters such as ``charset`` and generic types
    like ``application/json`` are ignored), else it is detected from the fields.
    Raises :class:`~replicator.errors.InputError` for anything malformed: not
    JSON, not an object, over :data:`MAX_MANIFEST_SIZE`, a wrong
    ``schemaVersion``, missing or invalid descriptors, an unsupported type.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise _bad("content is not bytes")
    raw = bytes(raw)
    if len(raw) > MAX_MANIFEST_SIZE:
        raise _bad(f"{len(raw)} bytes is over the {MAX_MANIFEST_SIZE} byte limit")
    data = _load_json(raw)
    kind = _resolve_media_type(data, media_type)
    _check_schema_version(data, kind)

    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    if kind in _IMAGE_TYPES:
        if "manifests" in data:
            raise _bad("an image manifest must not have manifests")
        if "config" not in data:
            raise _bad("config is missing")
        config = _descriptor(data["config"], "config")
        layers = _descriptor_list(data, "layers", required=True)
    elif kind == mt.OCI_ARTIFACT_MANIFEST:
        if "config" in data or "manifests" in data:
            raise _bad("an artifact manifest must not have config or manifests")
        layers = _descriptor_list(data, "blobs", required=False)
    else:
        if "config" in data or "layers" in data:
            raise _bad("an index must not have config or layers")
        manifests = _descriptor_list(data, "manifests", required=True)

    subject_value = data.get("subject")
    subject = _descriptor(subject_value, "subject") if subject_value is not None else None
    artifact_type = _optional_string(data, "artifactType")
    if artifact_type is None and config is not None:
        artifact_type = config.media_type
    return Manifest(
        media_type=kind,
        raw=raw,
        digest=digest_bytes(raw),
        config=config,
        layers=layers,
        manifests=manifests,
        subject=subject,
        artifact_type=artifact_type,
        annotations=_annotations(data),
    )


def _check_artifact_type(artifact_type: str | None) -> None:
    if artifact_type is not None and (not isinstance(artifact_type, str) or not artifact_type):
        raise InputError("artifact type must be a non-empty string")


def _check_annotations(annotations: Mapping[str, str] | None) -> dict[str, str] | None:
    if not annotations:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise InputError("annotations must map strings to strings")
    return {k: annotations[k] for k in sorted(annotations)}


def _dump(doc: Mapping[str, Any]) -> bytes:
    out = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(out) > MAX_MANIFEST_SIZE:
        raise InputError(
            f"the manifest would be {len(out)} bytes, over the {MAX_MANIFEST_SIZE} byte limit"
        )
    return out


def build_image_manifest(
    *,
    config: Descriptor,
    layers: Sequence[Descriptor],
    artifact_type: str | None,
    subject: Descriptor | None,
    annotations: Mapping[str, str] | None,
) -> bytes:
    """Write an OCI image manifest as compact, deterministic JSON (ORAS-like key order).

    Top-level annotations are written sorted by key; descriptors keep the fields
    they were read with.  An empty config (``application/vnd.oci.empty.v1+json``)
    requires an ``artifact_type``, as the image-spec demands.  Raises
    :class:`~replicator.errors.InputError` for an invalid input or a result over
    :data:`MAX_MANIFEST_SIZE`.
    """
    _check_artifact_type(artifact_type)
    if artifact_type is None and config.media_type == mt.OCI_EMPTY:
        raise InputError("an artifact with an empty config needs an artifact type")
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = config.to_json()
    doc["layers"] = [layer.to_json() for layer in layers]
    if subject is not None:
        doc["subject"] = subject.to_json()
    checked = _check_annotations(annotations)
    if checked:
        doc["annotations"] = checked
    return _dump(doc)


def build_index(
    manifests: Sequence[Descriptor],
    *,
    annotations: Mapping[str, str] | None = None,
    artifact_type: str | None = None,
    subject: Descriptor | None = None,
) -> bytes:
    """Write an OCI image index as compact, deterministic JSON (ORAS-like key order).

    Used for new indexes and for the fallback referrers index; ``manifests``
    keep the order given.  Raises :class:`~replicator.errors.InputError` for an
    invalid input or a result over :data:`MAX_MANIFEST_SIZE`.
    """
    _check_artifact_type(artifact_type)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["manifests"] = [m.to_json() for m in manifests]
    if subject is not None:
        doc["subject"] = subject.to_json()
    checked = _check_annotations(annotations)
    if checked:
        doc["annotations"] = checked
    return _dump(doc)
