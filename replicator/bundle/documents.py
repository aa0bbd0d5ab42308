"""Reading ``bundle.json``: from bytes to a :class:`~.model.BundleDocument`, strictly.

Every field is checked (:class:`~.fields.JsonFields`): part names are exactly
``part-NNN.tar`` in order, every span lies inside its part and the spans of an
entry cover exactly its size, layout paths are the layout's own (no path can
point outside the bundle), digests, tags and repository names are valid.  The
content digest the bytes actually have is computed from the parsed JSON (so an
edited field that did not recompute ``contentDigest`` is found).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from replicator.bundle.fields import JsonFields
from replicator.bundle.model import (
    BUNDLE_FORMAT,
    DOCUMENT_NAME,
    FORMAT_VERSION,
    MAX_DOCUMENT_SIZE,
    BaseRecord,
    BundleDocument,
    Content,
    PartRecord,
    Span,
    StoredFile,
    canonical_digest,
    part_name,
)
from replicator.errors import IntegrityError


def parse_bundle_document(raw: bytes) -> tuple[BundleDocument, str]:
    """``bundle.json`` parsed, and the content digest its bytes actually have.

    The returned document's ``content_digest`` is the one the file states;
    compare it with the second value to find an edit.  Raises
    :class:`IntegrityError` for anything malformed.
    """
    data = load_json(raw, DOCUMENT_NAME)
    obj = JsonFields(DOCUMENT_NAME)
    doc = obj.mapping(data, "")
    if doc.get("format") != BUNDLE_FORMAT:
        raise obj.bad("format", f"is not {BUNDLE_FORMAT!r}")
    if doc.get("formatVersion") != FORMAT_VERSION:
        raise obj.bad("formatVersion", f"{doc.get('formatVersion')!r} is not supported")
    parts = _parts(obj, doc.get("parts"))
    content = Content.from_json(
        {
            k: _strip_at(doc.get(k, {})) if k != "repositories" else doc.get(k, {})
            for k in ("repositories", "manifests", "blobs")
        },
        DOCUMENT_NAME,
    )
    spans: dict[str, tuple[Span, ...]] = {}
    for kind in ("manifests", "blobs"):
        for digest, value in obj.mapping(doc.get(kind, {}), kind).items():
            rec = obj.mapping(value, f"{kind}[{digest}]")
            size = obj.count(rec.get("size"), f"{kind}[{digest}].size")
            spans[digest] = _spans(obj, rec.get("at"), f"{kind}[{digest}].at", size, parts)
    layout = {}
    for path, value in obj.mapping(doc.get("layout", {}), "layout").items():
        name = _layout_path(obj, path)
        layout[name] = _stored_file(obj, value, f"layout[{path}]", parts)
    base_data = doc.get("base")
    document = BundleDocument(
        id=obj.text(doc.get("id"), "id"),
        tool=obj.text(doc.get("tool"), "tool"),
        created=obj.text(doc.get("created"), "created"),
        jobs=list(obj.sequence(doc.get("jobs", []), "jobs")),
        max_part_size=obj.count(doc.get("maxPartSize"), "maxPartSize"),
        content=content,
        spans=spans,
        layout=layout,
        parts=parts,
        base=None if base_data is None else _base(obj, base_data),
        content_digest=obj.digest(doc.get("contentDigest"), "contentDigest"),
    )
    return document, canonical_digest(doc)


def load_bundle_document(directory: Path) -> tuple[BundleDocument, bytes, str]:
    """Read and parse ``DIR/bundle.json``: the document, its bytes, its true content digest.

    :class:`IntegrityError` when it is missing, unreadable or malformed.
    """
    path = directory / DOCUMENT_NAME
    raw = read_document(path, DOCUMENT_NAME)
    document, digest = parse_bundle_document(raw)
    return document, raw, digest


def read_document(path: Path, what: str) -> bytes:
    """The bytes of a small document file; :class:`IntegrityError` when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_DOCUMENT_SIZE + 1)
    except FileNotFoundError:
        raise IntegrityError(f"{what}: missing ({path})") from None
    except OSError as exc:
        raise IntegrityError(f"{what}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise IntegrityError(f"{what}: larger than {MAX_DOCUMENT_SIZE} bytes")
    return raw


def load_json(raw: bytes, what: str) -> Any:
    """Parse JSON text; :class:`IntegrityError` naming ``what`` when it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"{what}: not valid JSON ({exc})") from None


def _strip_at(entries: Any) -> Any:
    if not isinstance(entries, dict):
        return entries
    return {
        k: ({x: y for x, y in v.items() if x != "at"} if isinstance(v, dict) else v)
        for k, v in entries.items()
    }


def _parts(obj: JsonFields, value: Any) -> list[PartRecord]:
    out = []
    for i, item in enumerate(obj.sequence(value, "parts")):
        rec = obj.mapping(item, f"parts[{i}]")
        name = obj.text(rec.get("name"), f"parts[{i}].name")
        if name != part_name(i):
            raise obj.bad(f"parts[{i}].name", f"{name!r} is not {part_name(i)!r}")
        sha = obj.text(rec.get("sha256"), f"parts[{i}].sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise obj.bad(f"parts[{i}].sha256", "is not 64 lowercase hex digits")
        out.append(PartRecord(name, obj.count(rec.get("size"), f"parts[{i}].size"), sha))
    return out


def _spans(
    obj: JsonFields, value: Any, where: str, size: int, parts: list[PartRecord]
) -> tuple[Span, ...]:
    out = []
    for i, item in enumerate(obj.sequence(value, where)):
        triple = obj.sequence(item, f"{where}[{i}]")
        if len(triple) != 3:
            raise obj.bad(f"{where}[{i}]", "is not [part, offset, length]")
        part, offset, length = (obj.count(x, f"{where}[{i}]") for x in triple)
        if part >= len(parts):
            raise obj.bad(f"{where}[{i}]", f"names part {part}, the bundle has {len(parts)}")
        if length == 0 or offset + length > parts[part].size:
            raise obj.bad(f"{where}[{i}]", f"lies outside {parts[part].name}")
        out.append(Span(part, offset, length))
    if sum(s.length for s in out) != size:
        raise obj.bad(where, f"covers {sum(s.length for s in out)} bytes, the size is {size}")
    return tuple(out)


def _stored_file(obj: JsonFields, value: Any, where: str, parts: list[PartRecord]) -> StoredFile:
    rec = obj.mapping(value, where)
    size = obj.count(rec.get("size"), f"{where}.size")
    return StoredFile(
        digest=obj.digest(rec.get("digest"), f"{where}.digest"),
        size=size,
        spans=_spans(obj, rec.get("at"), f"{where}.at", size, parts),
    )


_LAYOUT_PATH_RE = re.compile(r"^(oci-layout|index\.json|blobs/sha256/[0-9a-f]{64})$")


def _layout_path(obj: JsonFields, path: str) -> str:
    if not _LAYOUT_PATH_RE.fullmatch(path):
        raise obj.bad("layout", f"unexpected path {path!r}")
    return path


def _base(obj: JsonFields, value: Any) -> BaseRecord:
    rec = obj.mapping(value, "base")
    kind = rec.get("kind")
    if kind not in ("receipt", "bundle"):
        raise obj.bad("base.kind", "is neither 'receipt' nor 'bundle'")
    destination = rec.get("destination")
    return BaseRecord(
        kind=kind,
        content_digest=obj.digest(rec.get("contentDigest"), "base.contentDigest"),
        content=Content.from_json(rec.get("content", {}), f"{obj.document}: base.content"),
        destination=None if destination is None else obj.text(destination, "base.destination"),
    )
