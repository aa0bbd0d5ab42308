""":class:`BundleWriter`: the Target a ``bundle create`` run writes into.

The engine copies the selected graphs from their sources into this target as
into any destination (blobs and children first, referrers after their subject,
tags last, each byte verified on the way); the writer appends what it receives
to the bundle's tar stream (:mod:`.tarformat`), once per digest, and keeps the
repository, tag and location facts in its durable log (:mod:`.state`).

Guarantees:

* **Written once.**  Blobs go straight into the parts: no staging copy.  A
  blob or manifest already in the bundle — or in the base of an incremental
  bundle — is never written again (``"exists"``).  Small blobs are read from
  their source concurrently into memory and appended whole; larger ones stream
  into the parts while holding the append lock.
* **Durable before confirmed.**  ``push_blob``, ``push_manifest`` and ``tag``
  return only after the part bytes and the log line were fsynced (group
  commit: one fsync serves every push waiting at that moment), so whatever the
  engine's journal records is in the parts after a kill.
* **Nothing half-written stays.**  A member whose source fails or is
  cancelled half way is rolled back (parts truncated, hashes restored).
* **Manifests belong to repositories.**  A manifest present for one repository
  is not taken as present for another (import copies it into each), while its
  bytes are stored once.  Blobs are shared by all repositories.

The bundle's layout files and ``bundle.json`` are written by
:mod:`.layout` and :mod:`.create` once the run succeeded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import structlog

from replicator.bundle.layout import OCI_LAYOUT_FILE
from replicator.bundle.model import Content, Span
from replicator.bundle.spans import read_spans, stream_spans
from replicator.bundle.state import CreateState, Member, MemberKind, StateLog
from replicator.bundle.tarformat import (
    BLOCK,
    PartStream,
    member_length,
    padding,
    tar_header,
)
from replicator.errors import InputError, IntegrityError, LayoutError, NotFoundError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier, digest_bytes, verify_bytes
from replicator.oci.manifest import parse_manifest
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    PushResult,
    UploadProgress,
)

log = structlog.get_logger(__name__)

#: Blobs up to this size are read into memory before they are appended.
PREFETCH_MAX = 4 * 1024 * 1024
#: Streamed blobs are written in pieces of at least this size.
WRITE_PIECE = 1024 * 1024


def blob_path(digest: str) -> str:
    """The tar member name of a blob or manifest (``blobs/sha256/<hex>``)."""
    alg, _, encoded = digest.partition(":")
    return f"blobs/{alg}/{encoded}"


class BundleWriter:
    """A bundle being created, as a write-only Target (see the module doc).

    ``base`` is the content an incremental bundle leaves out.  Open one with
    :func:`replicator.bundle.create.open_writer`, which resumes or starts the
    state and the part stream.
    """

    def __init__(
        self,
        directory: Path,
        state: CreateState,
        stream: PartStream,
        log_file: StateLog,
        base: Content | None,
    ) -> None:
        self.directory = directory
        self.state = state
        self.stream = stream
        self.log_file = log_file
        self.base = base
        self._append_lock = anyio.Lock()
        self._commit_lock = anyio.Lock()
        self._pending: list[dict[str, Any]] = []
        self._queued = 0
        self._durable = 0
        self._inflight: dict[str, anyio.Event] = {}
        self._closed = False

    # ------------------------------------------------------------ identity

    @property
    def display(self) -> str:
        """``bundle DIR``."""
        return f"bundle {self.directory}"

    @property
    def is_local(self) -> bool:
        """A directory on disk: asking costs nothing."""
        return True

    @property
    def location(self) -> str:
        """The location key of this create (unique per bundle id)."""
        return f"ocidir://{self.directory}#{self.state.identity.id}"

    # ----------------------------------------------------------- durability

    def note(self, *records: dict[str, Any]) -> int:
        """Queue log lines for the next commit; the number to :meth:`commit` up to."""
        self._pending.extend(records)
        self._queued += len(records)
        return self._queued

    async def commit(self, upto: int | None = None) -> None:
        """Make everything queued up to ``upto`` durable (parts fsynced, then the log)."""
        upto = self._queued if upto is None else upto
        async with self._commit_lock:
            if self._durable >= upto:
                return
            records, self._pending = self._pending, []
            reached = self._queued
            await anyio.to_thread.run_sync(self._sync_and_log, records)
            self._durable = reached

    def _sync_and_log(self, records: list[dict[str, Any]]) -> None:
        self.stream.sync()
        self.log_file.append(records)

    # ------------------------------------------------------------- appending

    def _part_records(self, parts_before: int) -> list[dict[str, Any]]:
        done = []
        for index, size, sha in self.stream.finished_parts():
            if index >= parts_before - 1 and index not in self.state.parts_done:
                self.state.parts_done[index] = (size, sha)
                done.append({"part": [index, size, sha]})
        return done

    async def start(self) -> None:
        """Begin the stream with ``oci-layout`` and the blob directories (once per bundle)."""
        if "oci-layout" in self.state.layout:
            return
        data = OCI_LAYOUT_FILE
        desc = Descriptor("application/json", digest_bytes(data), len(data))
        mtime = self.state.identity.mtime

        def write() -> list[Span]:
            self.stream.start_member(member_length(len(data)) + 2 * BLOCK)
            spans = self._write_whole("oci-layout", data)
            for name in ("blobs/", "blobs/sha256/"):
                self.stream.write(tar_header(name, 0, mtime, directory=True))
            return spans

        async with self._append_lock:
            spans = await anyio.to_thread.run_sync(write)
            member = Member(
                "layout",
                desc.digest,
                desc.size,
                tuple(spans),
                self.stream.position,
                media_type=desc.media_type,
                path="oci-layout",
            )
            seq = self._record(member, 1, ())
        await self.commit(seq)

    def _write_whole(self, name: str, data: bytes) -> list[Span]:
        """Header, data, padding of one member (blocking); the data spans."""
        stream = self.stream
        stream.start_member(member_length(len(data)))
        stream.write(tar_header(name, len(data), self.state.identity.mtime))
        spans = stream.write(data) if data else []
        stream.write(bytes(padding(len(data))))
        return spans

    async def append_bytes(
        self,
        kind: MemberKind,
        desc: Descriptor,
        data: bytes,
        *,
        path: str | None = None,
        artifact_type: str | None = None,
        subject: str | None = None,
        extra: tuple[dict[str, Any], ...] = (),
    ) -> int:
        """Append one whole member; its log line (and ``extra``) queued; the commit number."""
        name = path or blob_path(desc.digest)
        async with self._append_lock:
            if kind != "layout" and desc.digest in self.state.members:
                return self.note(*extra)  # stored already (another repository's push)
            parts_before = len(self.stream.sizes)
            mark = self.stream.mark()
            try:
                spans = await anyio.to_thread.run_sync(self._write_whole, name, data)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.stream.rollback, mark)
                raise
            member = Member(
                kind,
                desc.digest,
                desc.size,
                tuple(spans),
                self.stream.position,
                media_type=desc.media_type,
                artifact_type=artifact_type,
                subject=subject,
                path=path,
            )
            return self._record(member, parts_before, extra)

    def _record(self, member: Member, parts_before: int, extra: tuple[dict[str, Any], ...]) -> int:
        if member.kind == "layout" and member.path is not None:
            self.state.layout[member.path] = member
        else:
            self.state.members[member.digest] = member
        self.state.end = member.end
        return self.note({"member": member.to_json()}, *self._part_records(parts_before), *extra)

    async def _append_stream(self, desc: Descriptor, opener: BlobOpener, verify: bool) -> int:
        """Stream one large blob into the parts; rolled back if its source fails."""
        verifier = DigestVerifier(desc.digest, desc.size) if verify else None
        async with self._append_lock:
            parts_before = len(self.stream.sizes)
            mark = self.stream.mark()
            try:
                spans = await self._stream_member(desc, opener, verifier)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.stream.rollback, mark)
                raise
            member = Member(
                "blob",
                desc.digest,
                desc.size,
                tuple(spans),
                self.stream.position,
                media_type=desc.media_type,
            )
            return self._record(member, parts_before, ())

    async def _stream_member(
        self, desc: Descriptor, opener: BlobOpener, verifier: DigestVerifier | None
    ) -> list[Span]:
        stream = self.stream
        header = tar_header(blob_path(desc.digest), desc.size, self.state.identity.mtime)

        def start() -> None:
            stream.start_member(member_length(desc.size))
            stream.write(header)

        await anyio.to_thread.run_sync(start)
        spans: list[Span] = []
        piece = bytearray()
        seen = 0
        async for chunk in opener(0):
            seen += len(chunk)
            if seen > desc.size:
                raise IntegrityError(f"{desc.digest}: the source sent more than {desc.size} bytes")
            if verifier is not None:
                verifier.update(chunk)
            piece += chunk
            if len(piece) >= WRITE_PIECE:
                spans += await anyio.to_thread.run_sync(stream.write, bytes(piece))
                piece.clear()
        if piece:
            spans += await anyio.to_thread.run_sync(stream.write, bytes(piece))
        if seen != desc.size:
            raise IntegrityError(f"{desc.digest}: the source sent {seen} of {desc.size} bytes")
        if verifier is not None:
            verifier.verify()
        await anyio.to_thread.run_sync(stream.write, bytes(padding(desc.size)))
        return _merge(spans)

    # ------------------------------------------------------------------ blobs

    def _has_blob(self, digest: str) -> bool:
        return digest in self.state.members or (
            self.base is not None and self.base.holds_blob(digest)
        )

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the bundle (or its base) holds the blob."""
        return self._has_blob(desc.digest)

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Blobs are shared by every repository of a bundle: true when it holds the blob."""
        return self._has_blob(desc.digest)

    async def push_blob(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        *,
        resume: UploadProgress | None = None,
        on_progress: ProgressCallback | None = None,
        chunk_size: int | None = None,
        verify: bool = True,
    ) -> BlobPushResult:
        """Append the blob ``opener`` yields (read from 0), unless held: ``"exists"``.

        ``verify=False`` trusts the opener's stream to verify itself (a
        ``fetch_blob`` read); sizes are always checked.  ``resume``,
        ``on_progress`` and ``chunk_size`` do not apply: a blob cut off by a
        kill is written again from its start.
        """
        while (event := self._inflight.get(desc.digest)) is not None:
            await event.wait()
        if self._has_blob(desc.digest):
            return BlobPushResult("exists")
        event = self._inflight[desc.digest] = anyio.Event()
        try:
            if desc.size <= PREFETCH_MAX:
                data = await _read_all(opener, desc)
                if verify:
                    verify_bytes(data, desc.digest, desc.size)
                seq = await self.append_bytes("blob", desc, data)
            else:
                seq = await self._append_stream(desc, opener, verify)
            await self.commit(seq)
        finally:
            del self._inflight[desc.digest]
            event.set()
        log.debug("bundle.blob_written", digest=desc.digest, size=desc.size)
        return BlobPushResult("uploaded", bytes_sent=desc.size)

    def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """The bytes of a blob written to this bundle (not verified: the writer's own)."""
        member = self.state.members.get(desc.digest)
        if member is None:
            raise NotFoundError(f"{desc.digest} is not in {self.display}")
        return stream_spans(self.directory, member.spans, offset)

    # -------------------------------------------------------------- manifests

    def _holds_manifest(self, repository: str, digest: str) -> bool:
        return digest in self.state.repo_manifests.get(repository, ()) or (
            self.base is not None and self.base.holds_manifest(repository, digest)
        )

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when ``repository`` of the bundle (or of its base) holds the manifest."""
        return self._holds_manifest(repository, desc.digest)

    async def push_manifest(
        self,
        repository: str,
        desc: Descriptor,
        raw: bytes,
        tags: tuple[str, ...] = (),
        *,
        defer_referrers: bool = False,
    ) -> PushResult:
        """Store ``raw`` (verified) for ``repository`` once, and each tag; durable on return."""
        try:
            verify_bytes(raw, desc.digest, desc.size)
            manifest = parse_manifest(raw, desc.media_type)
        except (IntegrityError, InputError) as exc:
            raise IntegrityError(f"{self.display}: manifest refused: {exc.message}") from None
        subject = manifest.subject.digest if manifest.subject else None
        extra: list[dict[str, Any]] = []
        in_base = self.base is not None and self.base.holds_manifest(repository, desc.digest)
        listed = self.state.repo_manifests.get(repository, set())
        if not in_base and desc.digest not in listed:
            extra.append({"repo": repository, "manifest": desc.digest})
        extra += [{"tag": [repository, tag, desc.digest]} for tag in tags]
        if in_base:
            seq = self.note(*extra)
        else:
            stored = Descriptor(manifest.media_type, desc.digest, desc.size)
            seq = await self.append_bytes(
                "manifest",
                stored,
                raw,
                artifact_type=manifest.artifact_type,
                subject=subject,
                extra=tuple(extra),
            )
        if not in_base:
            self.state.repo_manifests.setdefault(repository, set()).add(desc.digest)
        for tag in tags:
            self.state.tags.setdefault(repository, {})[tag] = desc.digest
        await self.commit(seq)
        return PushResult(
            descriptor=Descriptor(
                manifest.media_type,
                desc.digest,
                desc.size,
                artifact_type=manifest.artifact_type,
                annotations=dict(manifest.annotations) or None,
            ),
            referrers_updated=subject is not None,
        )

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` of ``repository`` at the manifest (stored if missing)."""
        await self.push_manifest(repository, desc, raw, (tag,))

    def _descriptor(self, digest: str) -> Descriptor | None:
        member = self.state.members.get(digest)
        if member is None or member.kind != "manifest":
            return None
        return Descriptor(
            member.media_type, digest, member.size, artifact_type=member.artifact_type
        )

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """A tag set in this bundle, or a manifest it holds for ``repository``."""
        digest = reference
        if ":" not in reference:
            found = self.state.tags.get(repository, {}).get(reference)
            if found is None:
                raise NotFoundError(f"{repository}:{reference} not found in {self.display}")
            digest = found
        desc = self._descriptor(digest)
        if desc is None or digest not in self.state.repo_manifests.get(repository, ()):
            raise NotFoundError(f"{repository}@{digest} not found in {self.display}")
        return desc

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """A manifest this bundle holds, read back from the parts and verified."""
        desc = (
            await self.resolve(repository, reference) if isinstance(reference, str) else reference
        )
        member = self.state.members.get(desc.digest)
        if member is None:
            raise NotFoundError(f"{desc.digest} not found in {self.display}")
        raw = await anyio.to_thread.run_sync(read_spans, self.directory, member.spans)
        verify_bytes(raw, desc.digest, desc.size)
        return desc, raw

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests of ``repository`` in this bundle whose subject is ``desc``."""
        out = []
        for digest in sorted(self.state.repo_manifests.get(repository, ())):
            member = self.state.members.get(digest)
            if member is None or member.subject != desc.digest:
                continue
            if artifact_type is None or member.artifact_type == artifact_type:
                out.append(
                    Descriptor(
                        member.media_type, digest, member.size, artifact_type=member.artifact_type
                    )
                )
        return out

    async def tags(self, repository: str) -> list[str]:
        """The tags set for ``repository`` in this bundle, sorted."""
        return sorted(self.state.tags.get(repository, {}))

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Refused: a bundle only grows while it is created."""
        raise LayoutError(f"{self.display}: a bundle being created cannot delete anything")

    async def aclose(self) -> None:
        """Close the part files and release the log (kept for a resume unless removed)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(self.stream.close)
        self.log_file.close()


async def _read_all(opener: BlobOpener, desc: Descriptor) -> bytes:
    """A small blob's bytes, read whole (at most ``desc.size``)."""
    buf = bytearray()
    async for chunk in opener(0):
        buf += chunk
        if len(buf) > desc.size:
            raise IntegrityError(f"{desc.digest}: the source sent more than {desc.size} bytes")
    if len(buf) != desc.size:
        raise IntegrityError(f"{desc.digest}: the source sent {len(buf)} of {desc.size} bytes")
    return bytes(buf)


def _merge(spans: list[Span]) -> list[Span]:
    """Adjacent spans of one part joined (pieces written one after the other)."""
    out: list[Span] = []
    for span in spans:
        if out and out[-1].part == span.part and out[-1].offset + out[-1].length == span.offset:
            last = out.pop()
            span = Span(span.part, last.offset, last.length + span.length)
        out.append(span)
    return out


def remove_parts(directory: Path) -> None:
    """Delete every part file of ``directory`` (a fresh start)."""
    for path in directory.glob("part-*.tar"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
