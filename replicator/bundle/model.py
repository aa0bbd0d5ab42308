"""The documents of a bundle: ``bundle.json``, receipts, and the content list they share.

A *content list* (:class:`Content`) says what a store holds, repository by
repository — tags (``tag -> root digest``), roots named by digest only, the
manifests of each repository and the blobs they name — with a record per
manifest (media type, size, ``artifactType``, ``subject``) and per blob (media
type, size).  ``bundle.json`` is the content list of the bundle plus where each
byte lies (``at``: ``[part, offset, length]`` spans, several for a blob split
across parts), the parts (name, size, SHA-256), the layout files the tar stream
adds (``oci-layout``, ``index.json``, referrers fallback indexes), the jobs the
bundle was filled from, and the base it is incremental to (with that base's
whole content list and its content digest).  A receipt is the content list of
what an import's destination holds.

Every document carries ``contentDigest``: the SHA-256 of its canonical JSON
(sorted keys, no blanks) without that field.  Any edit that does not recompute
it is found; a signature (``bundle.json.sig``) covers the file's bytes.

Parsing is strict: these documents arrive from the other side of an air gap.
Every malformed field raises :class:`~replicator.errors.IntegrityError` naming
the document and the field (:mod:`.fields`; ``bundle.json`` itself is read by
:mod:`.documents`).  Nothing here touches the disk.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from replicator.bundle.fields import JsonFields

#: ``format`` of ``bundle.json`` and of a receipt.
BUNDLE_FORMAT = "replicator.bundle"
RECEIPT_FORMAT = "replicator.receipt"
#: The one version of both formats.
FORMAT_VERSION = 1
#: File names inside a bundle directory.
DOCUMENT_NAME = "bundle.json"
SIGNATURE_NAME = "bundle.json.sig"
PART_NAME_RE = re.compile(r"^part-(\d{3,6})\.tar$")
#: The largest ``bundle.json`` or receipt read (a content list of ~10^6 entries).
MAX_DOCUMENT_SIZE = 512 * 1024 * 1024

BaseKind = Literal["receipt", "bundle"]


def part_name(index: int) -> str:
    """The file name of part ``index`` (``part-000.tar``)."""
    return f"part-{index:03d}.tar"


def canonical_digest(document: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of ``document`` as canonical JSON, without its ``contentDigest``."""
    body = {k: v for k, v in document.items() if k != "contentDigest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


# ----------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Span:
    """``length`` bytes of an entry at ``offset`` in part number ``part``."""

    part: int
    offset: int
    length: int

    def to_json(self) -> list[int]:
        """``[part, offset, length]``."""
        return [self.part, self.offset, self.length]


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """What a content list says of a manifest.

    ``artifact_type`` follows the referrers listing rule (the manifest's
    ``artifactType``, else its config media type); ``subject`` is the digest of
    the manifest it refers to, if any.
    """

    media_type: str
    size: int
    artifact_type: str | None = None
    subject: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        out: dict[str, Any] = {"mediaType": self.media_type, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.subject:
            out["subject"] = self.subject
        return out


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """What a content list says of a blob (the media type of the first manifest naming it)."""

    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {"mediaType": self.media_type, "size": self.size}


@dataclass(slots=True)
class RepositoryContent:
    """One repository of a content list.

    ``tags`` maps each tag to its root; ``roots`` are roots named by digest
    only; ``manifests`` every manifest held for this repository; ``blobs``
    every blob its manifests name.
    """

    tags: dict[str, str] = field(default_factory=dict)
    roots: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        """The repository as a JSON object (lists sorted)."""
        out: dict[str, Any] = {"tags": dict(sorted(self.tags.items()))}
        if self.roots:
            out["roots"] = sorted(self.roots)
        out["manifests"] = sorted(self.manifests)
        out["blobs"] = sorted(self.blobs)
        return out


@dataclass(slots=True)
class Content:
    """A content list: repositories, and the manifest and blob records (module doc)."""

    repositories: dict[str, RepositoryContent] = field(default_factory=dict)
    manifests: dict[str, ManifestRecord] = field(default_factory=dict)
    blobs: dict[str, BlobRecord] = field(default_factory=dict)

    def repository(self, name: str) -> RepositoryContent:
        """Repository ``name``, added empty when missing."""
        repo = self.repositories.get(name)
        if repo is None:
            repo = self.repositories[name] = RepositoryContent()
        return repo

    def holds_manifest(self, repository: str, digest: str) -> bool:
        """True when the list holds manifest ``digest`` for ``repository``."""
        repo = self.repositories.get(repository)
        return repo is not None and digest in repo.manifests

    def holds_blob(self, digest: str) -> bool:
        """True when the list holds blob ``digest`` (in some repository)."""
        return digest in self.blobs

    def blob_home(self, digest: str, prefer: str) -> str | None:
        """A repository that holds blob ``digest``: ``prefer`` when it does, else the first."""
        repo = self.repositories.get(prefer)
        if repo is not None and digest in repo.blobs:
            return prefer
        for name in sorted(self.repositories):
            if digest in self.repositories[name].blobs:
                return name
        return None

    def referrers_of(self, repository: str, subject: str) -> list[str]:
        """Manifests of ``repository`` whose subject is ``subject``, sorted."""
        repo = self.repositories.get(repository)
        if repo is None:
            return []
        return sorted(
            d
            for d in repo.manifests
            if (rec := self.manifests.get(d)) is not None and rec.subject == subject
        )

    def merged(self, newer: Content) -> Content:
        """This list with ``newer`` added on top (its tags win), as a new list."""
        out = Content(manifests={**self.manifests, **newer.manifests})
        out.blobs = {**self.blobs, **newer.blobs}
        for source in (self, newer):
            for name, repo in source.repositories.items():
                mine = out.repository(name)
                mine.tags.update(repo.tags)
                mine.roots |= repo.roots
                mine.manifests |= repo.manifests
                mine.blobs |= repo.blobs
        return out

    def counts(self) -> tuple[int, int, int]:
        """``(tags, manifests, blobs)`` of the whole list."""
        tags = sum(len(r.tags) for r in self.repositories.values())
        return tags, len(self.manifests), len(self.blobs)

    def to_json(self) -> dict[str, Any]:
        """The content list as a JSON object (every key sorted)."""
        return {
            "repositories": {n: r.to_json() for n, r in sorted(self.repositories.items())},
            "manifests": {d: r.to_json() for d, r in sorted(self.manifests.items())},
            "blobs": {d: r.to_json() for d, r in sorted(self.blobs.items())},
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Content:
        """Parse a content list; :class:`IntegrityError` naming ``where`` when malformed."""
        obj = JsonFields(where)
        doc = obj.mapping(data, "")
        out = cls()
        for digest, value in obj.mapping(doc.get("manifests", {}), "manifests").items():
            out.manifests[obj.digest(digest, "manifests")] = _manifest_record(obj, value, digest)
        for digest, value in obj.mapping(doc.get("blobs", {}), "blobs").items():
            out.blobs[obj.digest(digest, "blobs")] = _blob_record(obj, value, digest)
        repos = obj.mapping(doc.get("repositories", {}), "repositories")
        for name, value in repos.items():
            out.repositories[obj.repository(name)] = _repository(obj, value, name)
        return out


def _manifest_record(obj: JsonFields, value: Any, digest: str) -> ManifestRecord:
    at = f"manifests[{digest}]"
    rec = obj.mapping(value, at)
    subject = rec.get("subject")
    return ManifestRecord(
        media_type=obj.text(rec.get("mediaType"), f"{at}.mediaType"),
        size=obj.count(rec.get("size"), f"{at}.size"),
        artifact_type=obj.optional_text(rec.get("artifactType"), f"{at}.artifactType"),
        subject=None if subject is None else obj.digest(subject, f"{at}.subject"),
    )


def _blob_record(obj: JsonFields, value: Any, digest: str) -> BlobRecord:
    at = f"blobs[{digest}]"
    rec = obj.mapping(value, at)
    return BlobRecord(
        media_type=obj.text(rec.get("mediaType"), f"{at}.mediaType"),
        size=obj.count(rec.get("size"), f"{at}.size"),
    )


def _repository(obj: JsonFields, value: Any, name: str) -> RepositoryContent:
    at = f"repositories[{name}]"
    rec = obj.mapping(value, at)
    tags = {}
    for tag, digest in obj.mapping(rec.get("tags", {}), f"{at}.tags").items():
        tags[obj.tag(tag, f"{at}.tags")] = obj.digest(digest, f"{at}.tags[{tag}]")
    return RepositoryContent(
        tags=tags,
        roots=set(obj.digests(rec.get("roots", []), f"{at}.roots")),
        manifests=set(obj.digests(rec.get("manifests", []), f"{at}.manifests")),
        blobs=set(obj.digests(rec.get("blobs", []), f"{at}.blobs")),
    )


# ----------------------------------------------------------------- bundle.json


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file of the layout the tar stream adds (``oci-layout``, ``index.json``, an index)."""

    digest: str
    size: int
    spans: tuple[Span, ...]

    def to_json(self) -> dict[str, Any]:
        """The file as a JSON object."""
        return {"digest": self.digest, "size": self.size, "at": [s.to_json() for s in self.spans]}


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One part file: its name, its size and the hex SHA-256 of its bytes."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The part as a JSON object."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class BaseRecord:
    """The base an incremental bundle leaves out: a receipt or an earlier bundle.

    ``content`` is the whole content list the base promises at the destination
    (for an earlier bundle: its own content on top of its base's);
    ``content_digest`` the base document's own ``contentDigest``.
    """

    kind: BaseKind
    content_digest: str
    content: Content
    destination: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The base as a JSON object."""
        out: dict[str, Any] = {"kind": self.kind, "contentDigest": self.content_digest}
        if self.destination is not None:
            out["destination"] = self.destination
        out["content"] = self.content.to_json()
        return out


@dataclass(slots=True)
class BundleDocument:
    """``bundle.json`` parsed (see the module doc and docs/BUNDLES.md)."""

    id: str
    tool: str
    created: str
    jobs: list[Any]
    max_part_size: int
    content: Content
    spans: dict[str, tuple[Span, ...]]
    layout: dict[str, StoredFile]
    parts: list[PartRecord]
    base: BaseRecord | None = None
    content_digest: str = ""

    @property
    def size(self) -> int:
        """Bytes of all parts together."""
        return sum(p.size for p in self.parts)

    def promised(self) -> Content:
        """What a destination holds once this bundle is imported: the base's content and this."""
        return self.content if self.base is None else self.base.content.merged(self.content)

    def to_json(self) -> dict[str, Any]:
        """The document as JSON, ``contentDigest`` computed and set (also on ``self``)."""
        content = self.content
        manifests = {
            d: {**r.to_json(), "at": [s.to_json() for s in self.spans[d]]}
            for d, r in sorted(content.manifests.items())
        }
        blobs = {
            d: {**r.to_json(), "at": [s.to_json() for s in self.spans[d]]}
            for d, r in sorted(content.blobs.items())
        }
        out: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "formatVersion": FORMAT_VERSION,
            "id": self.id,
            "tool": self.tool,
            "created": self.created,
            "jobs": self.jobs,
            "maxPartSize": self.max_part_size,
            "repositories": {n: r.to_json() for n, r in sorted(content.repositories.items())},
            "manifests": manifests,
            "blobs": blobs,
            "layout": {p: f.to_json() for p, f in sorted(self.layout.items())},
            "parts": [p.to_json() for p in self.parts],
            "base": None if self.base is None else self.base.to_json(),
        }
        self.content_digest = canonical_digest(out)
        out["contentDigest"] = self.content_digest
        return out

    def render(self) -> bytes:
        """The bytes of ``bundle.json``: indented, each entry's spans on one line."""
        return render_json(self.to_json())


_SPANS_RE = re.compile(r"\[\s*((?:\[\s*\d+,\s*\d+,\s*\d+\s*\],?\s*)+)\]")
_BLANKS_RE = re.compile(r"\s+")


def render_json(document: Mapping[str, Any]) -> bytes:
    """A document as indented JSON with every ``at`` list of spans on one line."""
    plain = json.dumps(document, indent=1)
    text = _SPANS_RE.sub(
        lambda m: "[" + _BLANKS_RE.sub("", m.group(1)).replace(",", ", ") + "]", plain
    )
    if json.loads(text) != document:  # a string that looked like spans: keep it as it was
        text = plain
    return (text + "\n").encode()
