"""Tar validation and extraction: what a pull refuses, and what it unpacks."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from replicator.artifacts.extract import check_title, extract_tar, validate_tar
from replicator.errors import UnsafePathError


def make_tar(entries: Sequence[tuple[str, str, str | bytes]]) -> bytes:
    """entries: (name, kind, payload) kind in file|dir|sym|link|chr|fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "link": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind in ("sym", "link"):
                info.linkname = str(payload)
            if kind == "dir":
                info.mode = 0o755
            tar.addfile(info)
    return buf.getvalue()


def unpack(tmp_path: Path, data: bytes, root: str = "details") -> Path:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        plan = validate_tar(tar, root)
        return Path(extract_tar(tar, plan, str(staging)))


def test_valid_tar_unpacks_with_links_inside(tmp_path: Path) -> None:
    data = make_tar(
        [
            ("details/", "dir", ""),
            ("details/a.md", "file", "A\n"),
            ("details/sub/b.md", "file", "B\n"),
            ("details/l.md", "sym", "sub/b.md"),
            ("details/h.md", "link", "details/a.md"),
        ]
    )
    root = unpack(tmp_path, data)
    assert (root / "a.md").read_text() == "A\n"
    assert (root / "sub" / "b.md").read_text() == "B\n"
    assert os.readlink(root / "l.md") == "sub/b.md"
    assert (root / "h.md").read_text() == "A\n"
    assert os.stat(root / "h.md").st_ino == os.stat(root / "a.md").st_ino


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("details/../escape", "file", "x")], "'..'"),
        ([("../escape", "file", "x")], "'..'"),
        ([("/tmp/abs", "file", "x")], "absolute"),
        ([("other/x", "file", "x")], "outside the directory"),
        ([("details/etc", "sym", "/etc"), ("details/etc/passwd", "file", "x")], "outside"),
        ([("details/up", "sym", "../../x")], "outside"),
        ([("details/d", "sym", "sub"), ("details/d/f", "file", "x")], "non-directory"),
        ([("details/h", "link", "/etc/passwd")], "absolute"),
        ([("details/h", "link", "other/file")], "not an earlier file"),
        ([("details/dev", "chr", "")], "device file"),
        ([("details/pipe", "fifo", "")], "fifo"),
        ([("details/a", "file", "1"), ("details/a", "file", "2")], "twice"),
        ([("details", "file", "x")], "not a directory"),
    ],
)
def test_unsafe_tars_are_refused_before_writing(
    tmp_path: Path, entries: list[tuple[str, str, str]], message: str
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    with (
        tarfile.open(fileobj=io.BytesIO(make_tar(entries))) as tar,
        pytest.raises(UnsafePathError, match=message),
    ):
        validate_tar(tar, "details")
    assert list(staging.iterdir()) == []


def test_symlink_chain_escaping_is_caught_on_resolution(tmp_path: Path) -> None:
    # Lexically inside, but b -> "." makes b/.. resolve to the parent of details.
    data = make_tar([("details/b", "sym", "."), ("details/a", "sym", "b/..")])
    with pytest.raises(UnsafePathError, match="resolves outside"):
        unpack(tmp_path, data)


@pytest.mark.parametrize("title", ["../x", "/tmp/x", "a/../../x", "", ".", "a\\b", "x\x00y"])
def test_bad_titles(title: str) -> None:
    with pytest.raises(UnsafePathError):
        check_title(title)


def test_good_titles_are_normalised() -> None:
    assert check_title("readme.md") == "readme.md"
    assert check_title("./docs//a.md") == "docs/a.md"
