"""Request bodies of blob uploads, streamed from the blob's source.

An upload never holds a chunk in memory: each ``PATCH`` (or the monolithic
``PUT``) streams the opener's pieces as aiohttp sends them, so reading the
source overlaps sending to the registry.

* :class:`ChunkSource` cuts the source's stream into consecutive request
  bodies of exact sizes without a chunk buffer (only a piece straddling the end
  of a body is cut, its tail opening the next body), re-opens the source at any
  offset a retry or recovery needs, and keeps the hash state at the start of
  each chunk so that a chunk sent again from its start is still verified end to
  end.  A failure of the source itself is recorded (:attr:`ChunkSource.failed`):
  no upload retry can mend it.
* :func:`verified` passes a stream through, holding its last piece back until
  the digest verified; :func:`sized` only checks that the stream holds exactly
  the declared number of bytes (for sources that verify themselves);
  :func:`whole_body` is the one body of a monolithic upload, :func:`read_whole`
  a small blob read into memory (so that every retry can resend it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from replicator.errors import IntegrityError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier
from replicator.targets.base import BlobOpener


def _fork(verifier: DigestVerifier | None) -> DigestVerifier | None:
    """An independent copy of ``verifier`` (same bytes hashed so far), or None."""
    return verifier.copy() if verifier is not None else None


async def _close_stream(stream: AsyncIterator[bytes]) -> None:
    """Close an opener's stream; one still being read by an abandoned request is left to it.

    aiohttp sends a streamed body from a task of its own and cancels that task
    when the request fails: a stream that task is reading cannot be closed from
    here (``already running``), the cancellation ends it instead.
    """
    closer = getattr(stream, "aclose", None)
    if closer is None:
        return
    with contextlib.suppress(RuntimeError):
        await closer()


@dataclass(slots=True, eq=False)
class _Cursor:
    """One open stream of the source: where it stands and what was hashed."""

    stream: AsyncIterator[bytes]
    position: int
    verifier: DigestVerifier | None
    #: The tail of a piece cut at a body's end, first in the next body.
    carry: bytes = b""
    #: A read was in progress (or broke off): the stream is not to be used again.
    busy: bool = False
    eof: bool = False


class ChunkSource:
    """The blob's bytes, handed to PATCH requests as bodies without a chunk buffer.

    Each body pulls its bytes straight from the opener's stream as aiohttp sends
    them, so reading the source and sending to the registry overlap and memory
    holds a few of the stream's pieces, not a chunk.  Only a piece straddling the
    end of a body is cut (its tail opens the next body).

    A body that was not sent completely cannot be replayed from memory: the
    source is re-opened at the offset to continue from (:meth:`rewind`).  The
    hash state at the start of each chunk is kept (:meth:`mark`), so a chunk sent
    again from its start is still verified end to end.  A failure of the source
    itself is recorded in :attr:`failed` (no upload retry can mend it).
    """

    def __init__(self, opener: BlobOpener, offset: int, verifier: DigestVerifier | None) -> None:
        self._opener = opener
        self._cursor = _Cursor(opener(offset), offset, verifier)
        self._mark: tuple[int, DigestVerifier | None] = (offset, _fork(verifier))
        self.failed: BaseException | None = None

    @property
    def position(self) -> int:
        """Offset of the next byte the current stream gives."""
        return self._cursor.position

    @property
    def verifier(self) -> DigestVerifier | None:
        """The hash of every byte before :attr:`position`, when it is known."""
        return self._cursor.verifier

    def mark(self) -> None:
        """Remember the hash state here: a chunk starting at this offset can be sent again."""
        cursor = self._cursor
        self._mark = (cursor.position, _fork(cursor.verifier))

    def can_continue_at(self, offset: int) -> bool:
        """True when the current stream stands at ``offset`` and is safe to read on."""
        cursor = self._cursor
        return cursor.position == offset and not cursor.busy

    async def rewind(self, offset: int) -> None:
        """Continue at ``offset`` (re-opening the source there unless it stands there already)."""
        if self.can_continue_at(offset):
            return
        old = self._cursor
        mark_offset, mark_verifier = self._mark
        verifier = _fork(mark_verifier) if mark_offset == offset else None
        self._cursor = _Cursor(self._opener(offset), offset, verifier)
        await _close_stream(old.stream)

    async def _pull(self, cursor: _Cursor) -> bytes | None:
        """The next non-empty piece of ``cursor``'s stream; None at its end."""
        if cursor.carry:
            piece, cursor.carry = cursor.carry, b""
            return piece
        while not cursor.eof:
            cursor.busy = True
            try:
                piece = await anext(cursor.stream)
            except StopAsyncIteration:
                cursor.eof = True
                cursor.busy = False
                return None
            except Exception as exc:
                self.failed = exc
                raise
            cursor.busy = False
            if piece:
                return piece
        return None

    async def body(self, n: int) -> AsyncIterator[bytes]:
        """Exactly the next ``n`` bytes (an :class:`IntegrityError` if the source ends sooner)."""
        cursor = self._cursor
        left = n
        while left > 0:
            piece = await self._pull(cursor)
            if piece is None:
                self.failed = IntegrityError(
                    f"source ended after {cursor.position} bytes, {left} short of the chunk"
                )
                raise self.failed
            if len(piece) > left:
                cursor.carry = piece[left:]
                piece = piece[:left]
            left -= len(piece)
            cursor.position += len(piece)
            if cursor.verifier is not None:
                cursor.verifier.update(piece)
            yield piece

    def resend(self, offset: int, n: int) -> AsyncIterator[bytes]:
        """A body of ``n`` bytes from ``offset``, re-opening the source when needed."""

        async def again() -> AsyncIterator[bytes]:
            await self.rewind(offset)
            async for piece in self.body(n):
                yield piece

        return again()

    async def at_end(self) -> bool:
        """True when the source has nothing after :attr:`position`."""
        cursor = self._cursor
        piece = await self._pull(cursor)
        if piece is None:
            return True
        cursor.carry = piece
        return False

    async def aclose(self) -> None:
        """Close the current stream."""
        await _close_stream(self._cursor.stream)


async def sized(source: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Pass ``source`` through, checking only that it holds exactly ``size`` bytes.

    For sources that verify themselves (``verify=False``): the registry checks
    the digest at the closing ``PUT``.
    """
    seen = 0
    try:
        async for chunk in source:
            seen += len(chunk)
            if seen > size:
                raise IntegrityError(f"source is longer than the declared {size} bytes")
            yield chunk
        if seen != size:
            raise IntegrityError(f"source ended after {seen} of the declared {size} bytes")
    finally:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()


async def verified(source: AsyncIterator[bytes], verifier: DigestVerifier) -> AsyncIterator[bytes]:
    """Pass ``source`` through, holding the last chunk back until the digest verified."""
    pending: bytes | None = None
    try:
        async for chunk in source:
            if not chunk:
                continue
            verifier.update(chunk)
            if pending is not None:
                yield pending
            pending = chunk
        verifier.verify()
        if pending is not None:
            yield pending
    finally:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()


def whole_body(desc: Descriptor, opener: BlobOpener, verify: bool) -> AsyncIterator[bytes]:
    """The whole blob as one request body: hashed when ``verify``, sized always."""
    if verify:
        return verified(opener(0), DigestVerifier(desc.digest, desc.size))
    return sized(opener(0), desc.size)


async def read_whole(desc: Descriptor, opener: BlobOpener, verify: bool) -> bytes:
    """A small blob's bytes, read whole (hashed when ``verify``; sized always)."""
    verifier = DigestVerifier(desc.digest, desc.size) if verify else None
    parts: list[bytes] = []
    source = opener(0) if verify else sized(opener(0), desc.size)
    try:
        async for chunk in source:
            if verifier is not None:
                verifier.update(chunk)
            parts.append(chunk)
    finally:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
    if verifier is not None:
        verifier.verify()
    return b"".join(parts)
