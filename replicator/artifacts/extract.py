"""Safe placement of pulled content: title checks and tar validation/extraction.

A pull must never write outside its output directory, whatever a title or a
tar entry claims.  The rules (close to ORAS's, stricter where ORAS skips):

* a title is a relative path without ``..`` components, NUL bytes or
  backslashes, and not empty or ``.``;
* every tar entry lies at or under the layer's title (``details``,
  ``details/...``), relative, without ``..`` components;
* symbolic links are allowed only with a relative target that, resolved
  lexically from the link's directory, stays inside the title directory;
* hard links must name an earlier regular-file entry of the same tar;
* no entry may pass through a symbolic link entry (``link/file``), and a path
  may not appear twice (except directories);
* device files, fifos and any other entry type are refused.

The whole tar is validated before a single byte is extracted, and extraction
goes into a fresh staging directory: a refused tar leaves nothing behind.
Violations raise :class:`replicator.errors.UnsafePathError`.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field

from replicator.errors import InputError, UnsafePathError

_COPY_CHUNK = 1024 * 1024
_MAX_SHOWN = 120


def _shown(name: str) -> str:
    text = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _clean_relative(name: str, what: str) -> str:
    """Lexically normalise a relative path; refuse absolute paths and ``..``."""
    if not name or "\x00" in name:
        raise UnsafePathError(f"{what} {_shown(name)!r} is empty or contains a NUL byte")
    if "\\" in name:
        raise UnsafePathError(f"{what} {_shown(name)!r} contains a backslash")
    if name.startswith("/"):
        raise UnsafePathError(f"{what} {_shown(name)!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"{what} {_shown(name)!r} contains '..'")
    if not parts:
        raise UnsafePathError(f"{what} {_shown(name)!r} names no file")
    return "/".join(parts)


def check_title(title: str) -> str:
    """Return the normalised relative path a layer titled ``title`` is written to.

    Raises :class:`UnsafePathError` for absolute titles, ``..`` components and
    other names that cannot be placed safely inside the output directory.
    """
    return _clean_relative(title, "title")


@dataclass(slots=True)
class TarPlan:
    """The validated members of a tar, in order, ready for :func:`extract_tar`."""

    root: str
    members: list[tarfile.TarInfo] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + "/")


def validate_tar(tar: tarfile.TarFile, root: str) -> TarPlan:
    """Check every member of ``tar`` against the rules above, before extracting anything.

    ``root`` is the normalised title the entries must sit under.  Returns the
    plan to extract; raises :class:`UnsafePathError` at the first violation.
    """
    plan = TarPlan(root)
    kinds: dict[str, str] = {}
    for member in tar:
        name = _clean_relative(member.name, "tar entry")
        if not _inside(root, name):
            raise UnsafePathError(
                f"tar entry {_shown(member.name)!r} is outside the directory {_shown(root)!r}"
            )
        parents = name.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            parent = "/".join(parents[:i])
            if kinds.get(parent) in ("symlink", "file"):
                raise UnsafePathError(
                    f"tar entry {_shown(member.name)!r} passes through a non-directory entry"
                )
        previous = kinds.get(name)
        if member.isdir():
            if previous not in (None, "dir"):
                raise UnsafePathError(f"tar entry {_shown(member.name)!r} appears twice")
            kinds[name] = "dir"
        elif previous is not None:
            raise UnsafePathError(f"tar entry {_shown(member.name)!r} appears twice")
        elif member.issym():
            _check_symlink(root, name, member.linkname)
            kinds[name] = "symlink"
        elif member.islnk():
            target = _clean_relative(member.linkname, "hard link target")
            if kinds.get(target) != "file":
                raise UnsafePathError(
                    f"hard link {_shown(member.name)!r} points to {_shown(member.linkname)!r}, "
                    "which is not an earlier file of the same directory"
                )
            kinds[name] = "file"
        elif member.isreg():
            kinds[name] = "file"
        elif member.ischr() or member.isblk():
            raise UnsafePathError(f"tar entry {_shown(member.name)!r} is a device file")
        elif member.isfifo():
            raise UnsafePathError(f"tar entry {_shown(member.name)!r} is a fifo")
        else:
            raise UnsafePathError(
                f"tar entry {_shown(member.name)!r} has an unsupported type {member.type!r}"
            )
        plan.members.append(member)
        plan.names.append(name)
    if root not in kinds:
        # A tar without an entry for its root directory still unpacks under it.
        kinds[root] = "dir"
    if kinds.get(root) != "dir":
        raise UnsafePathError(f"tar root {_shown(root)!r} is not a directory")
    return plan


def _check_symlink(root: str, name: str, target: str) -> None:
    if not target or "\x00" in target or target.startswith("/"):
        raise UnsafePathError(
            f"symbolic link {_shown(name)!r} points to {_shown(target)!r}, outside the directory"
        )
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if not _inside(root, resolved):
        raise UnsafePathError(
            f"symbolic link {_shown(name)!r} points to {_shown(target)!r}, outside the directory"
        )


def extract_tar(tar: tarfile.TarFile, plan: TarPlan, staging: str) -> str:
    """Extract a validated plan below the empty directory ``staging``; return the root path.

    Files are created with ``O_EXCL|O_NOFOLLOW`` so nothing is written through
    a link; modes are kept without setuid/setgid/sticky bits; modification
    times are restored when the tar carries them.
    """
    root_path = os.path.join(staging, plan.root)
    os.makedirs(root_path, exist_ok=True)
    dir_modes: list[tuple[str, int, float]] = []
    for member, name in zip(plan.members, plan.names, strict=True):
        path = os.path.join(staging, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if member.isdir():
            os.makedirs(path, exist_ok=True)
            dir_modes.append((path, member.mode, member.mtime))
            continue
        if member.issym():
            os.symlink(member.linkname, path)
            continue
        if member.islnk():
            os.link(os.path.join(staging, _clean_relative(member.linkname, "link")), path)
            continue
        _write_member(tar, member, path)
        _restore_times(path, member.mtime)
    _check_links_resolved(staging, root_path, plan)
    for path, mode, mtime in reversed(dir_modes):
        os.chmod(path, (mode & 0o777) | 0o700)
        _restore_times(path, mtime)
    return root_path


def _check_links_resolved(staging: str, root_path: str, plan: TarPlan) -> None:
    """Resolve every extracted symlink for real: links chained through links
    can escape where the lexical check could not see it."""
    real_root = os.path.realpath(root_path)
    for member, name in zip(plan.members, plan.names, strict=True):
        if not member.issym():
            continue
        resolved = os.path.realpath(os.path.join(staging, name))
        if resolved != real_root and not resolved.startswith(real_root + os.sep):
            raise UnsafePathError(f"symbolic link {_shown(name)!r} resolves outside the directory")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise InputError(f"tar entry {_shown(member.name)!r} has no content")
    mode = (member.mode & 0o777) or 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out, source:
        while chunk := source.read(_COPY_CHUNK):
            out.write(chunk)
    os.chmod(path, mode)


def _restore_times(path: str, mtime: float) -> None:
    if mtime > 0:
        with contextlib.suppress(OSError):
            os.utime(path, (mtime, mtime), follow_symlinks=False)


def check_real_directory(base: str, relative_dir: str) -> None:
    """Raise :class:`UnsafePathError` unless every existing part of ``base/relative_dir``
    is a real directory (parts not there yet are fine: they will be created)."""
    current = base
    for part in [p for p in relative_dir.split("/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(
                f"{_shown(current)} exists and is not a directory (or is a symbolic link)"
            )


def ensure_real_directory(base: str, relative_dir: str) -> str:
    """Create ``base/relative_dir`` (each part a real directory, never a symlink); return it.

    Raises :class:`UnsafePathError` when an existing component is a symlink or
    not a directory, so a title like ``sub/file`` cannot be redirected outside.
    """
    current = base
    for part in [p for p in relative_dir.split("/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(
                f"{_shown(current)} exists and is not a directory (or is a symbolic link)"
            )
    return current


def replace_path(staged: str, final: str) -> None:
    """Move ``staged`` to ``final``, removing what was there (never following a link)."""
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            _rmtree(final)
        else:
            os.unlink(final)
    os.rename(staged, final)


def _rmtree(path: str) -> None:
    shutil.rmtree(path)
