"""Local inputs of ``push``/``attach``: file arguments, annotations, directory packing.

Directory layers follow the ORAS conventions (see PROTOCOL.md): one
``tar+gzip`` blob whose entries sit under the directory's name, annotated with
``org.opencontainers.image.title`` (the directory name),
``io.deis.oras.content.unpack: "true"`` and ``io.deis.oras.content.digest``
(sha256 of the uncompressed tar).

Packing is deterministic on purpose, so that pushing the same tree twice gives
the same layer digest (and a registry dedups it): entries are sorted by path,
modification times are zero, owners are ``0:0`` without names, permission bits
are kept, and the gzip header carries neither a file name nor a time.  ORAS
keeps modification times instead; both unpack the same way.  Regular files,
directories and symbolic links are packed; other file types are refused.  A
symbolic link is stored as it is, like ORAS does: one pointing outside the
directory is refused again by ``pull`` (see :mod:`replicator.artifacts.extract`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from replicator.errors import InputError
from replicator.oci import mediatype

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_UNPACK = "io.deis.oras.content.unpack"
ANNOTATION_CONTENT_DIGEST = "io.deis.oras.content.digest"

#: The artifact type ORAS gives an artifact pushed without ``--artifact-type``.
DEFAULT_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"
#: Keys of an ORAS annotation file that are not file titles.
MANIFEST_KEY = "$manifest"
CONFIG_KEY = "$config"

_COPY_CHUNK = 1024 * 1024
_GZIP_LEVEL = 6  # what Go's gzip.DefaultCompression means


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One ``FILE[:MEDIATYPE]`` argument: where it is, how to title and type it."""

    path: str
    title: str
    media_type: str
    is_dir: bool


def _title_of(path: str) -> str:
    trimmed = path.rstrip("/") or path
    return os.path.basename(trimmed)


def _looks_like_media_type(text: str) -> bool:
    main, sep, sub = text.partition("/")
    return bool(sep and main and sub and " " not in text)


def parse_file_arg(text: str) -> FileSpec:
    """Parse ``FILE[:MEDIATYPE]`` (or ``DIR[:MEDIATYPE]``) and check the path exists.

    The suffix after the last ``:`` counts as a media type only when it looks
    like one (``type/subtype``) and the whole text is not itself an existing
    path, so file names with colons still work.  Files default to
    ``application/vnd.oci.image.layer.v1.tar``, directories to the ``tar+gzip``
    layer type.  Raises :class:`InputError` for a missing path, a path that is
    neither a regular file nor a directory, or an empty media type.
    """
    path, media_type = text, None
    if not os.path.lexists(text):
        head, sep, tail = text.rpartition(":")
        if sep and head and _looks_like_media_type(tail):
            path, media_type = head, tail
        elif sep and head and not tail:
            raise InputError(f"empty media type in {text!r}")
    if not path:
        raise InputError(f"no file name in {text!r}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    title = _title_of(path)
    if not title or title in (".", ".."):
        raise InputError(f"{path}: cannot derive a title from this path; name the file directly")
    if stat.S_ISDIR(st.st_mode):
        return FileSpec(path, title, media_type or mediatype.OCI_LAYER_GZIP, True)
    if stat.S_ISREG(st.st_mode):
        return FileSpec(path, title, media_type or mediatype.OCI_LAYER, False)
    raise InputError(f"{path}: not a regular file or directory")


def parse_annotation(text: str) -> tuple[str, str]:
    """Parse one ``--annotation KEY=VALUE``; raises :class:`InputError` without ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"invalid annotation {text!r}: expected KEY=VALUE")
    return key, value


def load_annotation_file(path: str) -> dict[str, dict[str, str]]:
    """Read an ORAS annotation file: ``{"$manifest": {...}, "$config": {...}, "<title>": {...}}``.

    Every value must be an object of string to string.  Raises
    :class:`InputError` when the file is unreadable or malformed.
    """
    try:
        with open(path, "rb") as fh:
            data: Any = json.loads(fh.read())
    except OSError as exc:
        raise InputError(f"annotation file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"annotation file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"annotation file {path}: expected a JSON object")
    out: dict[str, dict[str, str]] = {}
    for key, value in data.items():
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InputError(f"annotation file {path}: {key!r} must map to an object of strings")
        out[str(key)] = dict(value)
    return out


def merge_annotations(
    *parts: Mapping[str, str] | None,
) -> dict[str, str]:
    """Later mappings win; ``None`` parts are skipped."""
    merged: dict[str, str] = {}
    for part in parts:
        if part:
            merged.update(part)
    return merged


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, inner: _Writable | None) -> None:
        self._inner = inner
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.count += len(data)
        if self._inner is not None:
            self._inner.write(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        if self._inner is not None:
            self._inner.flush()

    @property
    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


@dataclass(frozen=True, slots=True)
class PackedDirectory:
    """A directory packed to a tar+gzip file.

    ``digest``/``size`` describe the compressed blob at ``path``;
    ``content_digest`` is the sha256 of the uncompressed tar.
    """

    path: str
    digest: str
    size: int
    content_digest: str


def _walk_sorted(root: str) -> list[str]:
    """Relative paths under ``root`` (not following symlinks), sorted bytewise."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return sorted(found, key=lambda p: p.encode("utf-8", "surrogateescape"))


def _tarinfo(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_entry(tar: tarfile.TarFile, source: str, name: str) -> None:
    st = os.lstat(source)
    info = _tarinfo(name, st)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(source)
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
        with open(source, "rb") as fh:
            tar.addfile(info, fh)
    else:
        raise InputError(f"{source}: cannot pack special files (devices, fifos, sockets)")


def pack_directory(source: str, title: str, dest_path: str) -> PackedDirectory:
    """Pack ``source`` as a deterministic tar+gzip at ``dest_path``, entries under ``title/``.

    Streams to disk (nothing is held in memory) and hashes both the compressed
    and the uncompressed stream on the way.  Blocking: run it in a worker
    thread from async code.  Raises :class:`InputError` for unreadable entries
    or special files; ``dest_path`` is removed on failure.
    """
    try:
        with open(dest_path, "wb") as raw:
            compressed = _HashingWriter(raw)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=compressed, compresslevel=_GZIP_LEVEL, mtime=0
            ) as gz:
                plain = _HashingWriter(gz)
                with tarfile.open(
                    fileobj=plain,
                    mode="w",
                    format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                ) as tar:
                    _add_entry(tar, source, title)
                    for rel in _walk_sorted(source):
                        _add_entry(tar, os.path.join(source, rel), f"{title}/{rel}")
            raw.flush()
            os.fsync(raw.fileno())
    except OSError as exc:
        _unlink_quietly(dest_path)
        raise InputError(f"cannot pack {source}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink_quietly(dest_path)
        raise
    return PackedDirectory(dest_path, compressed.digest, compressed.count, plain.digest)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def file_digest(path: str) -> tuple[str, int]:
    """sha256 digest and size of a file, read in chunks (blocking)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}", size
