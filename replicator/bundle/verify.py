"""``bundle verify``: every check a bundle must pass before anything is imported; nothing written.

:func:`verify_bundle` checks, and lists **every** problem it finds (each a
:class:`Problem` naming the part, file or entry):

1. ``bundle.json`` is present, well formed, and its ``contentDigest`` matches
   its content (an edit that did not recompute it is found);
2. the signature ``bundle.json.sig``, when a key is given (then a missing
   signature is a problem); a signature present without a key is only noted;
3. the directory holds every part, each of the size ``bundle.json`` states,
   and no other file;
4. streaming each part once, at disk speed: the part's SHA-256, every blob,
   manifest and layout file at its offsets against its digest, and the tar
   header in front of each (name and size); part hashing and entry hashing run
   in two threads side by side;
5. every manifest as ``bundle.json`` describes it (media type, ``subject``,
   ``artifactType``), every manifest's successors (blobs, index children) and
   subject present in the bundle or in its base, every tag's root present.

What an incremental bundle takes from its base is returned as
:attr:`VerifyResult.base_needs`: ``bundle import`` asks the destination for
each before it writes anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio

from replicator.bundle.appender import blob_path
from replicator.bundle.documents import load_bundle_document, read_document
from replicator.bundle.model import (
    DOCUMENT_NAME,
    PART_NAME_RE,
    SIGNATURE_NAME,
    BundleDocument,
    Span,
)
from replicator.bundle.signing import VerifyKey
from replicator.bundle.state import STATE_NAME
from replicator.bundle.tarformat import BLOCK, parse_header
from replicator.errors import InputError, IntegrityError
from replicator.graph.rules import successors
from replicator.oci.digest import DigestVerifier
from replicator.oci.manifest import Manifest, parse_manifest

#: Bytes read from a part at a time.
READ_CHUNK = 8 * 1024 * 1024

NeedKind = Literal["manifest", "blob"]

RANK_DOCUMENT, RANK_FILE, RANK_ENTRY, RANK_PART, RANK_GRAPH = range(5)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a bundle: ``where`` (a file or entry) and what."""

    where: str
    message: str
    #: Order of report: the document and signature, files, entries, whole parts, the graph.
    rank: int = 0

    def line(self) -> str:
        """``where: message``."""
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class BaseNeed:
    """Something this bundle relies on its base for, in ``repository``."""

    kind: NeedKind
    repository: str
    digest: str


@dataclass(slots=True)
class VerifyResult:
    """What :func:`verify_bundle` found."""

    directory: Path
    document: BundleDocument | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signed: bool = False
    bytes_read: int = 0
    base_needs: list[BaseNeed] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add(self, where: str, message: str, rank: int = 0) -> None:
        """Record a problem (``rank``: see :attr:`Problem.rank`)."""
        self.problems.append(Problem(where, message, rank))

    def error(self) -> IntegrityError:
        """One error for every problem: the first as its message, all as details."""
        first = self.problems[0].line()
        more = len(self.problems) - 1
        message = f"bundle {self.directory}: {first}"
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        error = IntegrityError(message)
        if more:
            error.details = tuple(p.line() for p in self.problems)
        return error


async def verify_bundle(directory: Path, key: VerifyKey | None = None) -> VerifyResult:
    """Run every check on the bundle in ``directory`` (see the module doc); read only."""
    result = VerifyResult(directory)
    try:
        document, raw, actual = await anyio.to_thread.run_sync(load_bundle_document, directory)
    except IntegrityError as exc:
        message = exc.message.removeprefix(f"{DOCUMENT_NAME}: ")
        if (directory / STATE_NAME).exists():
            message = "missing: an unfinished create (rerun the same bundle create to finish it)"
        result.add(DOCUMENT_NAME, message)
        return result
    result.document = document
    _check_signature(result, raw, key)
    if document.content_digest != actual:
        result.add(
            DOCUMENT_NAME,
            "edited after it was written: its content does not match its contentDigest",
        )
    readable = _check_files(result, document)
    manifests = await _stream_parts(result, document, readable)
    _check_graph(result, document, manifests)
    result.problems.sort(key=lambda p: p.rank)  # the most telling first
    return result


# ------------------------------------------------------------------- signature, files


def _check_signature(result: VerifyResult, raw: bytes, key: VerifyKey | None) -> None:
    path = result.directory / SIGNATURE_NAME
    if key is None:
        if path.exists():
            result.notes.append(f"{SIGNATURE_NAME} is present but was not checked (no --key)")
        return
    try:
        signature = read_document(path, SIGNATURE_NAME)
    except IntegrityError:
        result.add(SIGNATURE_NAME, f"missing: a signature by {key.path} is required")
        return
    try:
        key.check(raw, signature, SIGNATURE_NAME)
    except IntegrityError as exc:
        result.add(SIGNATURE_NAME, exc.message.removeprefix(f"{SIGNATURE_NAME}: "))
        return
    result.signed = True


def _check_files(result: VerifyResult, document: BundleDocument) -> set[int]:
    """Parts present at their size (their indexes); missing, wrong-sized and extra files listed."""
    expected = {p.name: i for i, p in enumerate(document.parts)}
    try:
        names = sorted(os.listdir(result.directory))
    except OSError as exc:
        result.add(str(result.directory), f"cannot be listed ({exc.strerror})")
        return set()
    for name in names:
        if name in (DOCUMENT_NAME, SIGNATURE_NAME) or name in expected:
            continue
        hint = " (not listed in bundle.json)" if PART_NAME_RE.fullmatch(name) else ""
        result.add(name, f"unexpected file in the bundle{hint}", RANK_FILE)
    readable = set()
    for name, index in expected.items():
        want = document.parts[index].size
        try:
            size = (result.directory / name).stat().st_size
        except FileNotFoundError:
            result.add(name, "missing", RANK_FILE)
            continue
        if size < want:
            result.add(name, f"{size} bytes, bundle.json says {want} (truncated)", RANK_FILE)
        elif size > want:
            result.add(name, f"{size} bytes, bundle.json says {want} (bytes added)", RANK_FILE)
        else:
            readable.add(index)
    return readable


# ---------------------------------------------------------------------- streaming


class _Sink:
    """Receives the bytes of one entry (or one tar header) in stream order."""

    def __init__(self, label: str, total: int, on_done: Callable[[_Sink], None]) -> None:
        self.label = label
        self.total = total
        self.seen = 0
        self.on_done = on_done
        self.verifier: DigestVerifier | None = None
        self.buffer: bytearray | None = None

    def feed(self, data: memoryview) -> None:
        """The next bytes of the entry; :attr:`on_done` runs after the last."""
        if self.verifier is not None:
            self.verifier.update(data)
        if self.buffer is not None:
            self.buffer += data
        self.seen += len(data)
        if self.seen == self.total:
            self.on_done(self)


@dataclass(slots=True)
class _Interval:
    start: int
    end: int
    sink: _Sink


class _Feeder:
    """Hands each chunk of a part to the sinks whose intervals it overlaps (sorted intervals)."""

    def __init__(self, intervals: list[_Interval]) -> None:
        self.intervals = sorted(intervals, key=lambda i: i.start)
        self.next = 0
        self.active: list[_Interval] = []

    def feed(self, position: int, chunk: bytes) -> None:
        """The part's bytes from ``position``: each overlapping interval gets its slice."""
        end = position + len(chunk)
        view = memoryview(chunk)
        while self.next < len(self.intervals) and self.intervals[self.next].start < end:
            self.active.append(self.intervals[self.next])
            self.next += 1
        still = []
        for iv in self.active:
            lo, hi = max(iv.start, position), min(iv.end, end)
            if lo < hi:
                iv.sink.feed(view[lo - position : hi - position])
            if iv.end > end:
                still.append(iv)
        self.active = still


class _Checks:
    """The sinks of one verification and what they conclude."""

    def __init__(self, result: VerifyResult, document: BundleDocument) -> None:
        self.result = result
        self.document = document
        self.manifests: dict[str, Manifest] = {}
        self.by_part: dict[int, list[_Interval]] = {}

    def _where(self, spans: tuple[Span, ...]) -> str:
        return self.document.parts[spans[0].part].name if spans else DOCUMENT_NAME

    def add_entry(
        self, kind: str, digest: str, size: int, spans: tuple[Span, ...], name: str
    ) -> None:
        """Check the entry at ``spans`` against ``digest`` (and its tar header ``name``)."""
        where = self._where(spans)
        at = f"offset {spans[0].offset}" if spans else "no bytes"
        label = f"{kind} {digest} ({name} at {at})"

        def done(sink: _Sink) -> None:
            assert sink.verifier is not None
            try:
                sink.verifier.verify()
            except IntegrityError:
                self.result.add(where, f"{label} does not match its digest", RANK_ENTRY)
                return
            if sink.buffer is not None:
                self._parsed(digest, bytes(sink.buffer))

        sink = _Sink(label, size, done)
        sink.verifier = DigestVerifier(digest, size)
        if kind == "manifest":
            sink.buffer = bytearray()
        if size == 0:
            done(sink)
        for span in spans:
            self.by_part.setdefault(span.part, []).append(
                _Interval(span.offset, span.offset + span.length, sink)
            )
        if spans:
            self._add_header(spans[0], name, size, where)

    def _add_header(self, first: Span, name: str, size: int, where: str) -> None:
        start = first.offset - BLOCK
        if start < 0:
            self.result.add(
                where,
                f"no room for the tar header of {name} before offset {first.offset}",
                RANK_ENTRY,
            )
            return

        def done(sink: _Sink) -> None:
            assert sink.buffer is not None
            found = parse_header(bytes(sink.buffer))
            if found != (name, size):
                self.result.add(
                    where, f"the tar header of {name} at offset {start} is damaged", RANK_ENTRY
                )

        sink = _Sink(name, BLOCK, done)
        sink.buffer = bytearray()
        self.by_part.setdefault(first.part, []).append(_Interval(start, first.offset, sink))

    def _parsed(self, digest: str, raw: bytes) -> None:
        record = self.document.content.manifests[digest]
        try:
            manifest = parse_manifest(raw, record.media_type)
        except InputError as exc:
            self.result.add(
                f"manifest {digest}", f"not a valid manifest ({exc.message})", RANK_ENTRY
            )
            return
        subject = manifest.subject.digest if manifest.subject else None
        said = (record.media_type, record.subject, record.artifact_type)
        found = (manifest.media_type, subject, manifest.artifact_type)
        if said != found:
            self.result.add(
                f"manifest {digest}",
                f"bundle.json says (mediaType, subject, artifactType) {said}, the manifest {found}",
                RANK_ENTRY,
            )
        self.manifests[digest] = manifest


async def _stream_parts(
    result: VerifyResult, document: BundleDocument, readable: set[int]
) -> dict[str, Manifest]:
    checks = _Checks(result, document)
    for digest, record in document.content.manifests.items():
        checks.add_entry("manifest", digest, record.size, document.spans[digest], blob_path(digest))
    for digest, blob in document.content.blobs.items():
        checks.add_entry("blob", digest, blob.size, document.spans[digest], blob_path(digest))
    for path, stored in document.layout.items():
        checks.add_entry("layout file", stored.digest, stored.size, stored.spans, path)
    for index, part in enumerate(document.parts):
        if index not in readable:
            continue
        feeder = _Feeder(checks.by_part.get(index, []))
        sha = await _read_part(result.directory / part.name, feeder)
        result.bytes_read += part.size
        if sha != part.sha256:
            result.add(
                part.name,
                "SHA-256 does not match bundle.json (the part's bytes changed)",
                RANK_PART,
            )
    return checks.manifests


async def _read_part(path: Path, feeder: _Feeder) -> str:
    """The part's SHA-256 hex, feeding every chunk to ``feeder`` in a second thread."""
    hasher = hashlib.sha256()
    fh = await anyio.to_thread.run_sync(lambda: open(path, "rb", buffering=0))  # noqa: SIM115
    try:
        position = 0
        chunk: bytes = await anyio.to_thread.run_sync(fh.read, READ_CHUNK)
        ahead: list[bytes] = []

        async def read_ahead() -> None:
            ahead.append(await anyio.to_thread.run_sync(fh.read, READ_CHUNK))

        while chunk:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, hasher.update, chunk)
                tg.start_soon(anyio.to_thread.run_sync, feeder.feed, position, chunk)
                tg.start_soon(read_ahead)
            position += len(chunk)
            chunk = ahead.pop()
    finally:
        fh.close()
    return hasher.hexdigest()


# -------------------------------------------------------------------------- graph


def _check_graph(
    result: VerifyResult, document: BundleDocument, manifests: dict[str, Manifest]
) -> None:
    content = document.content
    base = document.base.content if document.base is not None else None
    needs: dict[tuple[str, str, str], BaseNeed] = {}

    def need(kind: NeedKind, repo: str, digest: str, why: str) -> None:
        in_bundle = (
            content.holds_manifest(repo, digest)
            if kind == "manifest"
            else content.holds_blob(digest)
        )
        if in_bundle:
            return
        in_base = base is not None and (
            base.holds_manifest(repo, digest) if kind == "manifest" else base.holds_blob(digest)
        )
        if in_base:
            needs.setdefault((kind, repo, digest), BaseNeed(kind, repo, digest))
            return
        where = "its base" if base is not None else "the bundle"
        result.add(
            f"repository {repo}",
            f"{why}: {kind} {digest} is neither in the bundle nor in {where}",
            RANK_GRAPH,
        )

    for name, repo in sorted(content.repositories.items()):
        for tag, digest in sorted(repo.tags.items()):
            need("manifest", name, digest, f"tag {tag}")
        for digest in sorted(repo.roots):
            need("manifest", name, digest, "root")
        for digest in sorted(repo.manifests):
            if digest not in content.manifests:
                result.add(
                    f"repository {name}",
                    f"lists manifest {digest}, which bundle.json does not store",
                    RANK_GRAPH,
                )
                continue
            manifest = manifests.get(digest)
            if manifest is None:
                continue  # unreadable: its part's problem is listed already
            nexts = successors(manifest)
            for child in nexts.children:
                need("manifest", name, child.digest, f"index {digest[:19]}")
            for blob in nexts.blobs:
                need("blob", name, blob.digest, f"manifest {digest[:19]}")
            if manifest.subject is not None:
                need("manifest", name, manifest.subject.digest, f"referrer {digest[:19]}")
    result.base_needs = list(needs.values())
