"""Reading an entry's bytes back from the parts, by the spans ``bundle.json`` lists.

No unpacking: a blob is read where it lies, part after part for a split one.
:func:`read_spans` reads a small entry whole (blocking); :func:`stream_spans`
streams a large one in chunks from a byte offset, reading in a worker thread.
A part shorter than a span needs raises :class:`~replicator.errors.IntegrityError`
naming the part (it was truncated after it was verified).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio

from replicator.bundle.model import Span, part_name
from replicator.errors import IntegrityError

#: Bytes read per chunk when streaming.
CHUNK = 1024 * 1024


def _read_at(path: Path, offset: int, length: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise IntegrityError(f"{path.name}: missing") from None
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise IntegrityError(f"{path.name}: shorter than bundle.json says (truncated)")
    return data


def read_spans(directory: Path, spans: Sequence[Span]) -> bytes:
    """Every byte of ``spans``, in order (blocking; for manifests and other small entries)."""
    return b"".join(_read_at(directory / part_name(s.part), s.offset, s.length) for s in spans)


async def stream_spans(
    directory: Path, spans: Sequence[Span], offset: int = 0, chunk: int = CHUNK
) -> AsyncIterator[bytes]:
    """The bytes of ``spans`` from ``offset`` on, in chunks of at most ``chunk`` bytes."""
    skip = offset
    for span in spans:
        if skip >= span.length:
            skip -= span.length
            continue
        path = directory / part_name(span.part)
        position, end = span.offset + skip, span.offset + span.length
        skip = 0
        while position < end:
            n = min(chunk, end - position)
            data = await anyio.to_thread.run_sync(_read_at, path, position, n)
            position += n
            yield data
