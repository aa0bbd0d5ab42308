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
from pathlib import Path
from typing import Any

import anyio

from replicator.bundle.layout import OCI_LAYOUT_FILE
from replicator.bundle.model import Span
from replicator.bundle.state import CreateState, Member, MemberKind, StateLog
from replicator.bundle.tarformat import BLOCK, PartStream, member_length, padding, tar_header
from replicator.errors import IntegrityError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier, digest_bytes
from replicator.targets.base import BlobOpener

#: Streamed blobs are written in pieces of at least this size.
WRITE_PIECE = 1024 * 1024


def blob_path(digest: str) -> str:
    """The tar member name of a blob or manifest (``blobs/sha256/<hex>``)."""
    alg, _, encoded = digest.partition(":")
    return f"blobs/{alg}/{encoded}"


class Appender:
    """Appends members to a create's parts and makes them durable (see the module doc)."""

    def __init__(
        self, directory: Path, state: CreateState, stream: PartStream, log_file: StateLog
    ) -> None:
        self.directory = directory
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

    async def append_stream(self, desc: Descriptor, opener: BlobOpener, verify: bool) -> int:
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
                spans += await anyio.to_thread.run_sync(stream.write, piece)
                piece = bytearray()  # the thread had the last one: no copy, no reuse
        if piece:
            spans += await anyio.to_thread.run_sync(stream.write, piece)
        if seen != desc.size:
            raise IntegrityError(f"{desc.digest}: the source sent {seen} of {desc.size} bytes")
        if verifier is not None:
            verifier.verify()
        await anyio.to_thread.run_sync(stream.write, bytes(padding(desc.size)))
        return _merge(spans)

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
