"""The append side of a bundle being created: the tar stream, the log, and durability.

:class:`Appender` owns a create's :class:`~.tarformat.PartStream`, its
:class:`~.state.CreateState` and log (:mod:`.state`).  It appends whole members
(manifests, small blobs, layout files) and streams large blobs, one member at a
time under a lock, rolling a member back when its source fails or the task is
cancelled; and it makes what was appended durable by *group commit*: the
parts are fsynced, then the log lines describing them are written and fsynced,
one round for every caller waiting at that moment.  A caller confirms
anything to the engine only after :meth:`Appender.commit` returned.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog

from replicator.bundle.layout import OCI_LAYOUT_FILE
from replicator.bundle.model import Span
from replicator.bundle.spans import stream_spans
from replicator.bundle.state import CreateState, Member, MemberKind, Partial, StateLog
from replicator.bundle.tarformat import (
    BLOCK,
    Mark,
    PartStream,
    member_length,
    padding,
    tar_header,
)
from replicator.errors import IntegrityError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier, digest_bytes
from replicator.targets.base import BlobOpener

log = structlog.get_logger(__name__)

#: Streamed blobs are written in pieces of at least this size.
WRITE_PIECE = 1024 * 1024
#: A streamed blob's progress is made durable and logged every so many bytes.
PROGRESS_EVERY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Pending:
    """A blob half written by an earlier attempt: continued, or dropped, by the next append."""

    partial: Partial
    #: The stream as it stood before the blob's header (to drop it).
    mark: Mark


def blob_path(digest: str) -> str:
    """The tar member name of a blob or manifest (``blobs/sha256/<hex>``)."""
    alg, _, encoded = digest.partition(":")
    return f"blobs/{alg}/{encoded}"


class Appender:
    """Appends members to a create's parts and makes them durable (see the module doc)."""

    def __init__(
        self,
        directory: Path,
        state: CreateState,
        stream: PartStream,
        log_file: StateLog,
        pending: Pending | None = None,
    ) -> None:
        self.directory = directory
        self.pending = pending
        self.state = state
        self.stream = stream
        self.log_file = log_file
        self._append_lock = anyio.Lock()
        self._commit_lock = anyio.Lock()
        self._pending: list[dict[str, Any]] = []
        self._queued = 0
        self._durable = 0
        #: Group commits made (each: the parts fsynced, then the log).
        self.commits = 0

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
            self.commits += 1

    def _sync_and_log(self, records: list[dict[str, Any]]) -> None:
        self.stream.sync()
        self.log_file.append(records)

    # ------------------------------------------------------------- appending

    def _part_records(self) -> list[dict[str, Any]]:
        """``part`` lines for the parts completed since the last (they never change again)."""
        done = []
        for index, size, sha in self.stream.finished_parts():
            if index not in self.state.parts_done:
                self.state.parts_done[index] = (size, sha)
                done.append({"part": [index, size, sha]})
        return done

    async def _settle(self, digest: str | None) -> Pending | None:
        """The pending half-written blob when ``digest`` is it; else drop it (under the lock)."""
        pending, self.pending = self.pending, None
        if pending is None or pending.partial.digest == digest:
            return pending
        await anyio.to_thread.run_sync(self.stream.rollback, pending.mark)
        self.note({"dropped": pending.partial.digest})
        log.info("bundle.partial_dropped", digest=pending.partial.digest)
        return None

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
            await self._settle(None)
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
            seq = self._record(member, ())
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
            await self._settle(None)
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
            return self._record(member, extra)

    def _record(self, member: Member, extra: tuple[dict[str, Any], ...]) -> int:
        if member.kind == "layout" and member.path is not None:
            self.state.layout[member.path] = member
        else:
            self.state.members[member.digest] = member
        self.state.end = member.end
        return self.note({"member": member.to_json()}, *self._part_records(), *extra)

    async def append_stream(self, desc: Descriptor, opener: BlobOpener, verify: bool) -> int:
        """Stream one large blob into the parts; rolled back if its source fails.

        A blob an earlier attempt half wrote continues from where its bytes end
        (they are hashed again); if the whole then does not match the digest
        it is written again from its start.
        """
        async with self._append_lock:
            pending = await self._settle(desc.digest)
            mark = pending.mark if pending is not None else self.stream.mark()
            try:
                try:
                    spans = await self._stream_member(desc, opener, verify, pending)
                except IntegrityError:
                    if pending is None:
                        raise
                    log.warning("bundle.partial_discarded", digest=desc.digest)
                    await anyio.to_thread.run_sync(self.stream.rollback, mark)
                    spans = await self._stream_member(desc, opener, verify, None)
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
            return self._record(member, ())

    async def _stream_member(
        self, desc: Descriptor, opener: BlobOpener, verify: bool, pending: Pending | None
    ) -> list[Span]:
        """Header (unless continuing), data, padding of one streamed blob; its data spans."""
        stream = self.stream
        spans: list[Span] = []
        if pending is None:
            verifier = DigestVerifier(desc.digest, desc.size) if verify else None
            header = await anyio.to_thread.run_sync(self._start_member, desc)
        else:
            verifier = DigestVerifier(desc.digest, desc.size)  # the bytes kept were not checked
            header = pending.partial.header
            spans = list(pending.partial.spans)
            async for chunk in stream_spans(self.directory, spans):
                verifier.update(chunk)
            log.info("bundle.partial_resumed", digest=desc.digest, offset=pending.partial.written)
        seen = sum(s.length for s in spans)
        logged = seen
        piece = bytearray()
        async for chunk in opener(seen):
            seen += len(chunk)
            if seen > desc.size:
                raise IntegrityError(f"{desc.digest}: the source sent more than {desc.size} bytes")
            if verifier is not None:
                verifier.update(chunk)
            piece += chunk
            if len(piece) >= WRITE_PIECE:
                spans += await anyio.to_thread.run_sync(stream.write, piece)
                piece = bytearray()  # the thread had the last one: no copy, no reuse
                if seen - logged >= PROGRESS_EVERY and seen < desc.size:
                    spans = _merge(spans)
                    await self._note_partial(desc, header, spans)
                    logged = seen
        if piece:
            spans += await anyio.to_thread.run_sync(stream.write, piece)
        if seen != desc.size:
            raise IntegrityError(f"{desc.digest}: the source sent {seen} of {desc.size} bytes")
        if verifier is not None:
            verifier.verify()
        await anyio.to_thread.run_sync(stream.write, bytes(padding(desc.size)))
        return _merge(spans)

    def _start_member(self, desc: Descriptor) -> tuple[int, int]:
        """Place a streamed blob and write its header (blocking); where the header lies."""
        self.stream.start_member(member_length(desc.size))
        at = self.stream.position
        self.stream.write(tar_header(blob_path(desc.digest), desc.size, self.state.identity.mtime))
        return at

    async def _note_partial(
        self, desc: Descriptor, header: tuple[int, int], spans: list[Span]
    ) -> None:
        """Make the blob's bytes so far durable and log them (a kill keeps them)."""
        partial = Partial(desc.digest, desc.size, desc.media_type, header, tuple(spans))
        await self.commit(self.note({"partial": partial.to_json()}))

    def close(self) -> None:
        """Close the part files and release the log (blocking; kept for a resume)."""
        with contextlib.suppress(OSError):
            self.stream.close()
        self.log_file.close()


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
