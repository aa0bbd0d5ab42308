"""The tar stream of a bundle: headers, and members placed across parts of bounded size.

A bundle's parts are consecutive slices of **one** tar stream: ``cat
part-*.tar`` is a plain tar file (ustar headers, GNU base-256 sizes for members
of 8 GiB and more), and that tar file is an OCI image layout.  Only the last
part ends with the end-of-archive marker.

Placement (:meth:`PartStream.start_member`): every part is at most
``max_part_size`` bytes, a multiple of 512, so every part starts on a tar block
boundary.  A member (header, data, padding) that fits in what is left of the
current part goes there; one that does not fit there but fits in an empty part
starts a new part; one larger than a part starts where it is (when at least a
header and one block fit) and continues over the next parts — its data is
*split* (``bundle.json`` lists every span).  So a part that holds no piece of
a split member is a tar file on its own as well.

:class:`PartStream` writes the stream sequentially (blocking calls: run them in
a worker thread), hashes every part as it goes, and can roll back to a mark (a
member whose source failed half way leaves nothing behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicator.bundle.model import Span, part_name

BLOCK = 512
#: End of the archive: two zero blocks.
END_OF_ARCHIVE = bytes(2 * BLOCK)
#: The smallest ``--max-part-size`` accepted.
MIN_PART_SIZE = 8 * BLOCK
_OCTAL_SIZE_LIMIT = 8**11


def padding(size: int) -> int:
    """Zero bytes that follow ``size`` bytes of member data to the next block."""
    return (-size) % BLOCK


def member_length(size: int) -> int:
    """Bytes a member of ``size`` data bytes takes in the stream (header and padding included)."""
    return BLOCK + size + padding(size)


def round_part_size(size: int) -> int:
    """``size`` rounded down to whole tar blocks."""
    return size - size % BLOCK


def tar_header(name: str, size: int, mtime: int, *, directory: bool = False) -> bytes:
    """A ustar header for a regular file (or a directory) of ``size`` bytes.

    Owner 0:0, mode 0644 (0755 for a directory), no user or group names.
    Sizes from 8 GiB on use the GNU base-256 encoding.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name too long: {name!r}")
    buf = bytearray(BLOCK)
    buf[0 : len(raw)] = raw
    buf[100:108] = b"%07o\0" % (0o755 if directory else 0o644)
    buf[108:116] = b"0000000\0"
    buf[116:124] = b"0000000\0"
    if size < _OCTAL_SIZE_LIMIT:
        buf[124:136] = b"%011o\0" % size
    else:
        buf[124:136] = b"\x80" + size.to_bytes(11, "big")
    buf[136:148] = b"%011o\0" % max(0, mtime)
    buf[148:156] = b" " * 8
    buf[156:157] = b"5" if directory else b"0"
    buf[257:263] = b"ustar\0"
    buf[263:265] = b"00"
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def parse_header(block: bytes) -> tuple[str, int] | None:
    """``(name, size)`` of a ustar header block whose checksum holds; None otherwise."""
    if len(block) != BLOCK or block[257:262] != b"ustar":
        return None
    stored = block[148:156].split(b"\0", 1)[0].strip()
    try:
        checksum = int(stored or b"-1", 8)
    except ValueError:
        return None
    if checksum != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        return None
    name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    field = block[124:136]
    if field[0] & 0x80:
        size = int.from_bytes(field[1:], "big")
    else:
        try:
            size = int(field.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
    return name, size


class RecordedHash:
    """The SHA-256 of a part completed by an earlier attempt (its bytes never change again)."""

    def __init__(self, hexdigest: str) -> None:
        self._hex = hexdigest

    def hexdigest(self) -> str:
        """The recorded hex digest."""
        return self._hex

    def copy(self) -> RecordedHash:
        """Itself: it never changes."""
        return self

    def update(self, data: bytes | memoryview) -> None:
        """A completed part takes no more bytes."""
        raise ValueError("a completed part cannot grow")


def hash_prefix(path: Path, size: int) -> Any:
    """A SHA-256 hasher fed the first ``size`` bytes of ``path`` (blocking)."""
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        left = size
        while left:
            data = fh.read(min(left, 4 * 1024 * 1024))
            if not data:
                raise ValueError(f"{path.name} is shorter than {size} bytes")
            hasher.update(data)
            left -= len(data)
    return hasher


@dataclass(frozen=True, slots=True)
class Mark:
    """Where the stream stood: part count, the last part's size and hash state."""

    parts: int
    size: int
    hasher: Any


class PartStream:
    """Writes the bundle's tar stream into ``part-NNN.tar`` files (see the module doc).

    ``sizes`` and ``hashers`` describe parts already on disk (a resumed
    create): their files are truncated to those sizes on open.  All methods
    block; a single writer calls them in order.
    """

    def __init__(
        self,
        directory: Path,
        max_part_size: int,
        sizes: list[int] | None = None,
        hashers: list[Any] | None = None,
    ) -> None:
        self.directory = directory
        self.max = round_part_size(max_part_size)
        if self.max < MIN_PART_SIZE:
            raise ValueError(f"part size below {MIN_PART_SIZE} bytes")
        self.sizes: list[int] = list(sizes or [0])
        self.hashers: list[Any] = list(hashers or [hashlib.sha256() for _ in self.sizes])
        self._fds: dict[int, int] = {}
        self._dirty: set[int] = set()
        #: A part file was created or removed since the last :meth:`sync`.
        self._entries_changed = True
        #: Guards ``_fds`` and ``_dirty``: :meth:`sync` runs while a member is written.
        self._lock = threading.Lock()
        self._open_last()

    # ---------------------------------------------------------------- files

    def path(self, index: int) -> Path:
        """The file of part ``index``."""
        return self.directory / part_name(index)

    def _fd(self, index: int) -> int:
        with self._lock:
            fd = self._fds.get(index)
            if fd is None:
                fd = os.open(self.path(index), os.O_RDWR | os.O_CREAT, 0o644)
                self._fds[index] = fd
            return fd

    def _touch(self, index: int) -> None:
        with self._lock:
            self._dirty.add(index)

    def _open_last(self) -> None:
        last = len(self.sizes) - 1
        fd = self._fd(last)
        if os.fstat(fd).st_size != self.sizes[last]:
            os.ftruncate(fd, self.sizes[last])
            self._touch(last)

    @property
    def current(self) -> int:
        """The part being written."""
        return len(self.sizes) - 1

    @property
    def position(self) -> tuple[int, int]:
        """``(part, offset)`` the next byte goes to."""
        return self.current, self.sizes[-1]

    # ------------------------------------------------------------- placement

    def start_member(self, length: int) -> None:
        """Place a member of ``length`` stream bytes: start a new part when the rule says so."""
        room = self.max - self.sizes[-1]
        if length <= room or self.sizes[-1] == 0:
            return
        if length <= self.max or room < 2 * BLOCK:
            self._new_part()

    def _new_part(self) -> None:
        self._entries_changed = True
        self.sizes.append(0)
        self.hashers.append(hashlib.sha256())
        self._fd(self.current)
        self._touch(self.current)

    def write(self, data: bytes | bytearray | memoryview) -> list[Span]:
        """Append ``data`` at the position, continuing into new parts; the spans written."""
        spans: list[Span] = []
        view = memoryview(data)
        while view:
            if self.sizes[-1] == self.max:
                self._new_part()
            index, offset = self.position
            take = min(len(view), self.max - offset)
            chunk = view[:take]
            os.pwrite(self._fd(index), chunk, offset)
            self.hashers[index].update(chunk)
            self.sizes[index] = offset + take
            self._touch(index)
            spans.append(Span(index, offset, take))
            view = view[take:]
        return spans

    # ------------------------------------------------------------- roll back

    def mark(self) -> Mark:
        """The current position and hash state, to :meth:`rollback` to."""
        return Mark(len(self.sizes), self.sizes[-1], self.hashers[-1].copy())

    def rollback(self, mark: Mark) -> None:
        """Forget everything written since ``mark``: later parts removed, the part truncated."""
        for index in range(mark.parts, len(self.sizes)):
            self._entries_changed = True
            with self._lock:
                fd = self._fds.pop(index, None)
                self._dirty.discard(index)
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(index))
        del self.sizes[mark.parts :]
        del self.hashers[mark.parts :]
        last = mark.parts - 1
        self.sizes[last] = mark.size
        self.hashers[last] = mark.hasher.copy()
        os.ftruncate(self._fd(last), mark.size)
        self._touch(last)

    # ------------------------------------------------------------ durability

    def sync(self) -> None:
        """fsync every part written since the last call, and the directory when parts came or went."""
        with self._lock:
            dirty, self._dirty = sorted(self._dirty), set()
            fds = [self._fds[i] for i in dirty if i in self._fds]
            entries, self._entries_changed = self._entries_changed, False
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile by a roll back: nothing to keep
                os.fsync(fd)
        if entries:
            fsync_directory(self.directory)

    def finished_parts(self) -> Iterator[tuple[int, int, str]]:
        """``(index, size, sha256 hex)`` of every part but the one being written."""
        for index in range(len(self.sizes) - 1):
            yield index, self.sizes[index], self.hashers[index].hexdigest()

    def digests(self) -> list[tuple[int, str]]:
        """``(size, sha256 hex)`` of every part, the current one included."""
        return [(s, h.hexdigest()) for s, h in zip(self.sizes, self.hashers, strict=True)]

    def close(self) -> None:
        """Close every open part file."""
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


def fsync_directory(path: Path) -> None:
    """fsync a directory (new or renamed entries made durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
