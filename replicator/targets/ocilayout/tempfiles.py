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
* Every file operation is relative to a descriptor of the ``blobs/<alg>``
  directory opened without following links
  (:func:`~replicator.targets.ocilayout.files.open_layout_dir`): a
  ``blobs`` or ``blobs/<alg>`` that is a symbolic link is never written,
  renamed or swept through, even if it is swapped in while a write runs.

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

from replicator.targets.ocilayout.files import (
    TMP_MARK,
    LinkedDirectoryError,
    open_layout_dir,
    unlink_at,
)

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

    ``name`` is its name in the directory open as ``dir_fd`` (which the
    caller owns and closes), ``path`` the same file for messages;
    ``location`` is its path relative to the layout root (what the journal
    records); ``resumable`` is true for the digest's own name.
    """

    dir_fd: int
    name: str
    path: Path
    fd: int
    location: str
    resumable: bool

    def close(self) -> None:
        """Close the file, which releases the lock (the directory stays open)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Remove the file by its name in its directory (gone already is fine)."""
        unlink_at(self.dir_fd, self.name)


def temp_name(encoded: str) -> str:
    """The resumable temporary file name of a blob's encoded digest."""
    return f"{TMP_MARK}{encoded}"


def _same_file(fd: int, dir_fd: int, name: str) -> bool:
    """True when ``name`` in ``dir_fd`` still names the file open as ``fd``."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
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


def _open_no_follow(dir_fd: int, name: str, flags: int, shown: Path) -> int | None:
    """Open ``name`` without following a link; a link or non-file there is removed (None)."""
    try:
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        unlink_at(dir_fd, name)  # a symbolic link: removed, never followed
        log.warning("layout.temp_link_removed", path=str(shown))
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        unlink_at(dir_fd, name)
        log.warning("layout.temp_not_a_file_removed", path=str(shown))
        return None
    return fd


def lock_resumable(
    dir_fd: int, directory: Path, encoded: str, location_dir: str
) -> LockedTemp | None:
    """Open (creating it if needed) and lock the digest's own temporary file.

    ``dir_fd`` is the ``blobs/<alg>`` directory the file is in (``directory``
    its path, for messages).  Returns None when a live writer holds it.  An
    existing file keeps its bytes: the caller decides whether they are worth
    continuing.
    """
    name = temp_name(encoded)
    path = directory / name
    for _ in range(8):
        fd = _open_no_follow(dir_fd, name, _OPEN_FLAGS | os.O_CREAT, path)
        if fd is None:
            continue
        if not _try_lock(fd):
            os.close(fd)
            return None
        if _same_file(fd, dir_fd, name):
            return LockedTemp(dir_fd, name, path, fd, f"{location_dir}/{name}", resumable=True)
        os.close(fd)  # renamed or removed while we waited: open the path again
    raise OSError(errno.EAGAIN, f"{path} keeps changing under us")


def lock_private(dir_fd: int, directory: Path, encoded: str, location_dir: str) -> LockedTemp:
    """Create and lock a temporary file of our own for the blob (never continued)."""
    name = f"{temp_name(encoded)}.{uuid.uuid4().hex}"
    fd = os.open(name, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    fcntl.flock(fd, fcntl.LOCK_EX)  # new and unique: nobody else can hold it
    return LockedTemp(dir_fd, name, directory / name, fd, f"{location_dir}/{name}", False)


def _remove_if_abandoned(
    dir_fd: int, name: str, shown: Path, *, older_than: float | None = None
) -> bool:
    """Remove the temporary file ``name`` in ``dir_fd`` unless a live writer holds it.

    With ``older_than`` (a time stamp) only a file last written before then.
    True when it was removed.
    """
    try:
        if (
            older_than is not None
            and os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime >= older_than
        ):
            return False  # young: not even locked for a moment, a writer may want it
        fd = _open_no_follow(dir_fd, name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, shown)
    except FileNotFoundError:
        return False
    if fd is None:
        return True  # a link or non-file: removed already
    try:
        if not _try_lock(fd) or not _same_file(fd, dir_fd, name):
            return False
        if older_than is not None and os.fstat(fd).st_mtime >= older_than:
            return False
        unlink_at(dir_fd, name)
        return True
    finally:
        os.close(fd)


def parse_location(location: str) -> tuple[str, str] | None:
    """``(alg, name)`` of the temporary blob file a journalled ``location`` names, or None.

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
    return alg, name


def cancel_temp(root: Path, alg: str, name: str) -> bool:
    """Remove an abandoned temporary blob file; a live writer's stays.  True if removed.

    ``blobs/<alg>`` is opened without following links: a linked one raises
    :class:`~replicator.targets.ocilayout.files.LinkedDirectoryError`.
    """
    dir_fd = open_layout_dir(root, "blobs", alg)
    try:
        return _remove_if_abandoned(dir_fd, name, root / "blobs" / alg / name)
    finally:
        os.close(dir_fd)


def sweep_stale(root: Path, *, now: float | None = None) -> list[str]:
    """Remove the layout's abandoned temporary files older than :data:`STALE_AFTER`.

    Blob temporary files are checked through their lock (a live writer's file
    stays, however old); a ``blobs`` or ``blobs/<alg>`` that is a symbolic
    link is not swept (a warning says so).  The layout's own
    ``index.json``/``oci-layout`` temporary files are written in one go and
    renamed at once, so an old one is a dead writer's.  Returns the removed
    paths, relative to ``root``.
    """
    cutoff = (time.time() if now is None else now) - STALE_AFTER
    removed: list[str] = []
    for alg in _ALG_HEX:
        removed += _sweep_blob_dir(root, alg, cutoff)
    own = ("index.json" + TMP_MARK, "oci-layout" + TMP_MARK)
    for name in _names(root, lambda n: n.startswith(own)):
        path = root / name
        with contextlib.suppress(OSError):
            if os.stat(path, follow_symlinks=False).st_mtime < cutoff:
                os.unlink(path)
                removed.append(name)
    return removed


def _sweep_blob_dir(root: Path, alg: str, cutoff: float) -> list[str]:
    """Remove abandoned temporary files of ``blobs/<alg>`` last written before ``cutoff``."""
    directory = root / "blobs" / alg
    try:
        dir_fd = open_layout_dir(root, "blobs", alg)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except LinkedDirectoryError as exc:
        log.warning("layout.temp_sweep_skipped", path=str(directory), reason=exc.strerror)
        return []
    removed: list[str] = []
    try:
        for name in _names(dir_fd, _TEMP_NAME.fullmatch):
            try:
                if _remove_if_abandoned(dir_fd, name, directory / name, older_than=cutoff):
                    removed.append(f"blobs/{alg}/{name}")
            except OSError as exc:
                log.warning("layout.temp_sweep_failed", path=str(directory / name), error=str(exc))
    finally:
        os.close(dir_fd)
    return removed


def _names(directory: Path | int, wanted: Callable[[str], object]) -> list[str]:
    """Names in ``directory`` (a path or a descriptor) that ``wanted`` accepts, files and links."""
    try:
        with os.scandir(directory) as listing:
            return [
                e.name
                for e in listing
                if wanted(e.name) and (e.is_symlink() or e.is_file(follow_symlinks=False))
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
