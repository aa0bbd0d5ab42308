"""Temporary blob files of a layout: named after their digest, owned through ``flock``.

A blob is written into ``blobs/<alg>/.tmp-<encoded>`` before it is renamed to
``blobs/<alg>/<encoded>``.  Its writer holds an exclusive ``flock`` on that
file for as long as it writes, so the lock says whether anybody is still
working on it: the kernel releases it when the writer closes the file or
dies, whatever the way it dies (SIGKILL included).

The protocol (every function here follows it):

* Whoever removes, truncates or renames a temporary file holds its lock, and
  a process that has just taken the lock checks that the path still names the
  file it locked (same device and inode): if the file was renamed or removed
  in between, it opens the path again.  So a live writer's file is never
  taken, truncated or removed by anybody else.
* A temporary file whose lock can be taken is *abandoned*: a writer of the
  same digest continues it (see ``blobs.py``), :func:`cancel_temp` removes it,
  and :func:`sweep_stale` removes it once it is older than
  :data:`STALE_AFTER`.
* A writer that finds the digest's file locked by a live writer writes into a
  file of its own, ``.tmp-<encoded>.<random>`` (also locked while written);
  such files are never continued, only swept or cancelled.
* Files are opened with ``O_NOFOLLOW``: a symbolic link planted under a
  temporary name is removed, never followed, so nothing outside the layout is
  ever written through one.

Everything here is blocking file-system work: call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from replicator.targets.ocilayout.files import TMP_MARK, unlink_quietly

log = structlog.get_logger(__name__)

#: Age (seconds since the last write) after which an abandoned temporary file
#: is removed when a layout is first written to: 24 hours.  Younger ones stay
#: for a rerun to continue.
STALE_AFTER = 24 * 3600.0

#: ``<alg>/.tmp-<encoded>[.<random>]`` relative to ``blobs/``: the only names
#: :func:`cancel_temp` and :func:`sweep_stale` ever remove there.
_TEMP_NAME = re.compile(r"\.tmp-(?P<encoded>[a-f0-9]{64}|[a-f0-9]{128})(?:\.[a-f0-9]{32})?\Z")
_LOCATION = re.compile(r"blobs/(?P<alg>sha256|sha512)/(?P<name>\.tmp-[a-f0-9.]+)\Z")
_ALG_HEX = {"sha256": 64, "sha512": 128}
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class LockedTemp:
    """A temporary blob file this process holds the lock of.

    ``location`` is its path relative to the layout root (what the journal
    records); ``resumable`` is true for the digest's own name.
    """

    path: Path
    fd: int
    location: str
    resumable: bool

    def close(self) -> None:
        """Close the file, which releases the lock."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def temp_name(encoded: str) -> str:
    """The resumable temporary file name of a blob's encoded digest."""
    return f"{TMP_MARK}{encoded}"


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd``."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_no_follow(path: Path, flags: int) -> int | None:
    """Open ``path`` without following a link; a link or non-file there is removed (None)."""
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        unlink_quietly(path)  # a symbolic link: removed, never followed
        log.warning("layout.temp_link_removed", path=str(path))
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        unlink_quietly(path)
        log.warning("layout.temp_not_a_file_removed", path=str(path))
        return None
    return fd


def lock_resumable(directory: Path, encoded: str, location_dir: str) -> LockedTemp | None:
    """Open (creating it if needed) and lock the digest's own temporary file.

    Returns None when a live writer holds it.  An existing file keeps its
    bytes: the caller decides whether they are worth continuing.
    """
    name = temp_name(encoded)
    path = directory / name
    for _ in range(8):
        fd = _open_no_follow(path, _OPEN_FLAGS | os.O_CREAT)
        if fd is None:
            continue
        if not _try_lock(fd):
            os.close(fd)
            return None
        if _same_file(fd, path):
            return LockedTemp(path, fd, f"{location_dir}/{name}", resumable=True)
        os.close(fd)  # renamed or removed while we waited: open the path again
    raise OSError(errno.EAGAIN, f"{path} keeps changing under us")


def lock_private(directory: Path, encoded: str, location_dir: str) -> LockedTemp:
    """Create and lock a temporary file of our own for the blob (never continued)."""
    name = f"{temp_name(encoded)}.{uuid.uuid4().hex}"
    path = directory / name
    fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # new and unique: nobody else can hold it
    return LockedTemp(path, fd, f"{location_dir}/{name}", resumable=False)


def _remove_if_abandoned(path: Path, *, older_than: float | None = None) -> bool:
    """Remove the temporary file at ``path`` unless a live writer holds it.

    With ``older_than`` (a time stamp) only a file last written before then.
    True when it was removed.
    """
    try:
        if older_than is not None and os.lstat(path).st_mtime >= older_than:
            return False  # young: not even locked for a moment, a writer may want it
        fd = _open_no_follow(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    if fd is None:
        return True  # a link or non-file: removed already
    try:
        if not _try_lock(fd) or not _same_file(fd, path):
            return False
        if older_than is not None and os.fstat(fd).st_mtime >= older_than:
            return False
        unlink_quietly(path)
        return True
    finally:
        os.close(fd)


def parse_location(blobs: Path, location: str) -> Path | None:
    """The temporary blob file a journalled ``location`` names, or None if it names none.

    Only ``blobs/<alg>/.tmp-<encoded>[.<random>]`` with a registered algorithm
    and an encoded digest of the right length is accepted: no other file of
    the layout, and nothing outside it, can be named.
    """
    match = _LOCATION.fullmatch(location)
    if match is None:
        return None
    alg, name = match["alg"], match["name"]
    found = _TEMP_NAME.fullmatch(name)
    if found is None or len(found["encoded"]) != _ALG_HEX[alg]:
        return None
    return blobs / alg / name


def cancel_temp(path: Path) -> bool:
    """Remove an abandoned temporary blob file; a live writer's stays.  True if removed."""
    return _remove_if_abandoned(path)


def sweep_stale(root: Path, blobs: Path, *, now: float | None = None) -> list[str]:
    """Remove the layout's abandoned temporary files older than :data:`STALE_AFTER`.

    Blob temporary files are checked through their lock (a live writer's file
    stays, however old); the layout's own ``index.json``/``oci-layout``
    temporary files are written in one go and renamed at once, so an old one
    is a dead writer's.  Returns the removed paths, relative to ``root``.
    """
    cutoff = (time.time() if now is None else now) - STALE_AFTER
    removed: list[str] = []
    for alg in _ALG_HEX:
        directory = blobs / alg
        for name in _names(directory, _TEMP_NAME.fullmatch):
            try:
                if _remove_if_abandoned(directory / name, older_than=cutoff):
                    removed.append(f"blobs/{alg}/{name}")
            except OSError as exc:
                log.warning("layout.temp_sweep_failed", path=str(directory / name), error=str(exc))
    own = ("index.json" + TMP_MARK, "oci-layout" + TMP_MARK)
    for name in _names(root, lambda n: n.startswith(own)):
        path = root / name
        with contextlib.suppress(OSError):
            if os.stat(path, follow_symlinks=False).st_mtime < cutoff:
                os.unlink(path)
                removed.append(name)
    return removed


def _names(directory: Path, wanted: Callable[[str], object]) -> list[str]:
    """Names in ``directory`` that ``wanted`` accepts, files and links only."""
    try:
        with os.scandir(directory) as listing:
            return [
                e.name
                for e in listing
                if wanted(e.name) and (e.is_symlink() or e.is_file(follow_symlinks=False))
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
