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
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
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
            (self.blobs / "sha256").mkdir(parents=True, exist_ok=True)
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

    def blob_size(self, digest: str) -> int | None:
        """Size of the file stored under ``digest``; None when there is none."""
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None
