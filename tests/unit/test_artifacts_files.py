"""Local inputs of push/attach: file arguments, annotations and directory packing."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from replicator.artifacts.files import (
    load_annotation_file,
    pack_directory,
    parse_annotation,
    parse_file_arg,
)
from replicator.errors import InputError
from replicator.oci import mediatype


def _tree(root: Path) -> Path:
    d = root / "details"
    (d / "sub").mkdir(parents=True)
    (d / "readme-details.md").write_text("Detailed Content\n")
    (d / "readme-more-details.md").write_text("More detailed Content\n")
    (d / "sub" / "deep.txt").write_text("deep\n")
    os.symlink("readme-details.md", d / "link.md")
    return d


def test_file_arg_with_media_type(tmp_path: Path) -> None:
    f = tmp_path / "readme.md"
    f.write_text("Readme Content\n")
    spec = parse_file_arg(f"{f}:application/markdown")
    assert (spec.path, spec.title, spec.media_type, spec.is_dir) == (
        str(f),
        "readme.md",
        "application/markdown",
        False,
    )


def test_file_arg_defaults(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    assert parse_file_arg(str(f)).media_type == mediatype.OCI_LAYER
    d = tmp_path / "dir"
    d.mkdir()
    spec = parse_file_arg(str(d) + "/")
    assert spec.is_dir and spec.title == "dir" and spec.media_type == mediatype.OCI_LAYER_GZIP


def test_file_arg_keeps_colons_of_existing_names(tmp_path: Path) -> None:
    f = tmp_path / "a:b"
    f.write_bytes(b"x")
    spec = parse_file_arg(str(f))
    assert spec.title == "a:b" and spec.media_type == mediatype.OCI_LAYER


@pytest.mark.parametrize("suffix", ["", ":application/json"])
def test_file_arg_missing_file_is_input_error(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(InputError, match="no such file"):
        parse_file_arg(str(tmp_path / "nope.json") + suffix)


def test_file_arg_empty_media_type(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="empty media type"):
        parse_file_arg(f"{f}:")


def test_annotation_parsing() -> None:
    assert parse_annotation("a=b=c") == ("a", "b=c")
    assert parse_annotation("k=") == ("k", "")
    with pytest.raises(InputError):
        parse_annotation("novalue")


def test_annotation_file(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"$manifest": {"k": "v"}, "readme.md": {"x": "y"}}))
    assert load_annotation_file(str(p)) == {"$manifest": {"k": "v"}, "readme.md": {"x": "y"}}
    p.write_text(json.dumps({"$manifest": {"k": 1}}))
    with pytest.raises(InputError, match="object of strings"):
        load_annotation_file(str(p))
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_annotation_file(str(p))
    with pytest.raises(InputError):
        load_annotation_file(str(tmp_path / "missing.json"))


def test_pack_directory_layout_and_digests(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    packed = pack_directory(str(src), "details", str(tmp_path / "out.tgz"))
    blob = (tmp_path / "out.tgz").read_bytes()
    assert packed.size == len(blob)
    assert packed.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    plain = gzip.decompress(blob)
    assert packed.content_digest == "sha256:" + hashlib.sha256(plain).hexdigest()
    # gzip header: no name flag, mtime zero
    assert blob[3] & 0x08 == 0 and blob[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == [
            "details",
            "details/link.md",
            "details/readme-details.md",
            "details/readme-more-details.md",
            "details/sub",
            "details/sub/deep.txt",
        ]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
        link = tar.getmember("details/link.md")
        assert link.issym() and link.linkname == "readme-details.md"
        f = tar.extractfile("details/readme-details.md")
        assert f is not None and f.read() == b"Detailed Content\n"


def test_pack_directory_is_reproducible(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    first = pack_directory(str(src), "details", str(tmp_path / "1.tgz"))
    os.utime(src / "readme-details.md", (1_000_000, 1_000_000))
    second = pack_directory(str(src), "details", str(tmp_path / "2.tgz"))
    assert first.digest == second.digest
    assert first.content_digest == second.content_digest


def test_pack_directory_refuses_fifo_and_cleans_up(tmp_path: Path) -> None:
    src = tmp_path / "d"
    src.mkdir()
    os.mkfifo(src / "pipe")
    dest = tmp_path / "out.tgz"
    with pytest.raises(InputError, match="special files"):
        pack_directory(str(src), "d", str(dest))
    assert not dest.exists()
