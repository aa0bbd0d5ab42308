"""The files of one OCI image layout on disk, and the checks made before trusting them.

Owns the paths (``oci-layout``, ``index.json``, ``blobs/<alg>/<encoded>``),
opening a layout (or creating an empty one), parsing ``oci-layout`` and
``index.json``, and the small helpers every writer uses (atomic whole-file
write, fsync of a file or directory, turning disk errors into one message).

Guarantees:

* A layout that is missing, not a directory, or whose ``oci-layout`` or
  ``index.json`` is unreadable, not JSON, of another major version or holds an
  invalid descriptor raises :class:`~replicator.errors.LayoutError` naming the
  reason; nothing is written into it.
* A blob path is only ever built from a validated digest (``sha256`` or
  ``sha512`` with lowercase hex), so no name from ``index.json``, a manifest or
  the command line can point outside ``blobs/``.
* A whole-file write goes to a temporary file next to the target, is fsynced,
  renamed over the target and the directory fsynced: a reader sees the old
  file or the new one, never a part.
* Nothing is written, renamed or removed through a symbolic link inside the
  layout: writers open ``blobs`` and ``blobs/<alg>`` with ``O_NOFOLLOW`` from
  a descriptor of the root (:func:`open_layout_dir`) and work relative to the
  descriptor they get, so a link planted there (or swapped in while a write
  runs) is refused with a :class:`~replicator.errors.LayoutError` instead of
  being followed out of the layout.  (The root itself is the caller's path
  and may be a link.)  Reads follow links: every byte read is verified
  against its digest.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from replicator.errors import InputError, LayoutError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor, validate_digest
from replicator.oci.manifest import MAX_MANIFEST_SIZE

log = structlog.get_logger(__name__)

#: Version written into a new ``oci-layout`` file.
LAYOUT_VERSION = "1.0.0"
#: What every temporary file of a layout has in its name.
TMP_MARK = ".tmp-"
#: The largest ``index.json`` read (it lists manifests; it is never a blob).
MAX_INDEX_SIZE = MAX_MANIFEST_SIZE * 16


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """fsync a file or (``directory``) a directory by path."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    """Remove ``path``; a file already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def unlink_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` in the directory open as ``dir_fd``; a file already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


class LinkedDirectoryError(OSError):
    """A directory inside a layout is a symbolic link; it is never written through."""


def open_layout_dir(root: Path, *parts: str, create: bool = False) -> int:
    """A descriptor of the directory ``root/parts...``, no part of it followed if a link.

    ``root`` is opened as given (it may be a link: it is the caller's path);
    each of ``parts`` is opened relative to the one before with
    ``O_DIRECTORY | O_NOFOLLOW`` (created first with ``create``), so the
    descriptor returned names a directory inside ``root`` whatever links were
    planted or swapped in.  Raises :class:`LinkedDirectoryError` when a part
    is a symbolic link, other OSErrors as they come (``FileNotFoundError``,
    ``NotADirectoryError``).  The caller closes the descriptor.

    Blocking: call it in a worker thread from async code.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        shown = Path()
        for part in parts:
            shown = shown / part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            child = _open_child_dir(fd, part, shown)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child_dir(dir_fd: int, name: str, shown: Path) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            raise exc from None
        if stat.S_ISLNK(mode):
            raise LinkedDirectoryError(
                errno.ELOOP, f"{shown} is a symbolic link", str(shown)
            ) from None
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably: temporary file, fsync, rename, fsync dir.

    Blocking: call it in a worker thread from async code.
    """
    tmp = path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        unlink_quietly(tmp)
    fsync_path(path.parent, directory=True)


class LayoutFiles:
    """The paths of one layout directory and the checks that open it.

    ``display`` is how the layout is named in messages (``ocidir://PATH``).
    """

    def __init__(self, path: str | os.PathLike[str], display: str) -> None:
        self.root = Path(os.fspath(path))
        self.display = display
        self.blobs = self.root / "blobs"
        self.index_path = self.root / "index.json"
        self.layout_path = self.root / "oci-layout"

    def malformed(self, reason: str) -> LayoutError:
        """The error for a directory that is not a usable layout."""
        return LayoutError(f"{self.display} is not an OCI image layout: {reason}")

    @contextlib.contextmanager
    def disk_errors(self, what: str) -> Iterator[None]:
        """Turn an OSError of a disk operation into one clear LayoutError."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if exc.errno == errno.ENOSPC:
                reason = "no space left on device"
            raise LayoutError(f"{self.display}: cannot {what} ({reason})") from None

    # ---------------------------------------------------------------- opening

    def open(self, create: bool) -> None:
        """Check (or with ``create`` make) the layout; small synchronous file I/O."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise self.malformed("it is not a directory")
        if not root.exists():
            if not create:
                raise self.malformed("the directory does not exist")
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self.malformed(f"cannot create it ({exc.strerror})") from None
        has_layout = self.layout_path.exists()
        has_index = self.index_path.exists()
        if not has_layout and not has_index and create:
            self._create_files()
            return
        if not has_layout:
            raise self.malformed("no oci-layout file")
        self._check_layout_file()
        if not has_index:
            raise self.malformed("no index.json")
        self.parse_index(self.read_small(self.index_path, "index.json"))

    def _create_files(self) -> None:
        empty_index = {"schemaVersion": 2, "mediaType": mediatype.OCI_INDEX, "manifests": []}
        try:
            os.close(open_layout_dir(self.root, "blobs", "sha256", create=True))
            write_atomically(self.index_path, json.dumps(empty_index).encode())
            write_atomically(
                self.layout_path, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
            )
        except OSError as exc:
            raise self.malformed(f"cannot create it ({exc.strerror})") from None
        log.info("layout.created", layout=self.display)

    def read_small(self, path: Path, what: str) -> bytes:
        """The bytes of a layout file (at most :data:`MAX_INDEX_SIZE` + 1)."""
        try:
            with open(path, "rb") as fh:
                return fh.read(MAX_INDEX_SIZE + 1)
        except OSError as exc:
            raise self.malformed(f"cannot read {what} ({exc.strerror})") from None

    def _check_layout_file(self) -> None:
        raw = self.read_small(self.layout_path, "oci-layout")
        try:
            data = json.loads(raw)
        except ValueError:
            raise self.malformed("oci-layout is not JSON") from None
        version = data.get("imageLayoutVersion") if isinstance(data, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise self.malformed(f"unsupported imageLayoutVersion {version!r}")

    def parse_index(self, raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``index.json`` as (document, manifests list); every entry a valid descriptor."""
        try:
            document = json.loads(raw)
        except ValueError:
            raise self.malformed("index.json is not JSON") from None
        if not isinstance(document, dict):
            raise self.malformed("index.json is not a JSON object")
        if document.get("schemaVersion") != 2:
            raise self.malformed("index.json has no schemaVersion 2")
        entries = document.get("manifests", [])
        if not isinstance(entries, list):
            raise self.malformed("index.json has no manifests list")
        for entry in entries:
            try:
                Descriptor.from_json(entry)
            except InputError as exc:
                raise self.malformed(f"index.json: {exc.message}") from None
        return document, entries

    # ------------------------------------------------------------------ blobs

    def blob_path(self, digest: str) -> Path:
        """``blobs/<alg>/<encoded>`` of a validated digest (InputError otherwise)."""
        try:
            validate_digest(digest)
        except InputError as exc:
            raise InputError(f"{self.display}: {exc.message}") from None
        alg, _, encoded = digest.partition(":")
        return self.blobs / alg / encoded

    def open_blob_dir(self, alg: str, *, create: bool) -> int:
        """A descriptor of ``blobs/<alg>`` for writing into it (see :func:`open_layout_dir`).

        A ``blobs`` or ``blobs/<alg>`` that is a symbolic link is refused with
        one LayoutError (nothing is written through it); other disk errors
        become a LayoutError too.  Blocking; the caller closes the descriptor.
        """
        try:
            return open_layout_dir(self.root, "blobs", alg, create=create)
        except LinkedDirectoryError as exc:
            raise self.malformed(
                f"{exc.filename} is a symbolic link (nothing is written through one)"
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise LayoutError(f"{self.display}: cannot open blobs/{alg} ({reason})") from None

    def check_blob_dir(self, digest: str) -> None:
        """Raise what :meth:`open_blob_dir` raises for the directory of ``digest``'s file.

        Lets a change that ends in removing a blob refuse before it starts.
        """
        os.close(self.open_blob_dir(self.blob_path(digest).parent.name, create=False))

    def remove_blob(self, digest: str) -> None:
        """Remove the file stored under ``digest`` (gone already is fine), never through a link.

        Blocking: call it in a worker thread from async code.
        """
        path = self.blob_path(digest)
        try:
            fd = self.open_blob_dir(path.parent.name, create=False)
        except LayoutError:
            if not os.path.lexists(self.blobs / path.parent.name):
                return  # no such directory: nothing to remove
            raise
        try:
            with self.disk_errors(f"remove {digest}"):
                unlink_at(fd, path.name)
        finally:
            os.close(fd)

    def blob_size(self, digest: str) -> int | None:
        """Size of the file stored under ``digest``; None when there is none."""
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None
