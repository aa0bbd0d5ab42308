"""The rule for "the same run": normalised references plus selecting options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from replicator.cli.cmd_copy import _pairs, register, run_key
from replicator.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    return parser.parse_args(["copy", *argv])


def test_same_references_written_differently_are_the_same_run() -> None:
    a = run_key(_args("-r", "alpine:3", "reg.example:5000/mirror/alpine:3"))
    b = run_key(_args("-r", "docker.io/library/alpine:3", "reg.example:5000/mirror/alpine"))
    assert a == b


def test_how_options_do_not_change_the_run() -> None:
    base = run_key(_args("-r", "a.example/x:1", "b.example/x:1"))
    other = run_key(
        _args(
            "-r",
            "--concurrency",
            "4",
            "--chunk-size",
            "8MiB",
            "--keep-going",
            "--report",
            "r.json",
            "a.example/x:1",
            "b.example/x:1",
        )
    )
    assert base == other


def test_selecting_options_and_destinations_change_the_run() -> None:
    base = run_key(_args("-r", "a.example/x:1", "b.example/x:1"))
    variants = [
        _args("a.example/x:1", "b.example/x:1"),
        _args("-r", "--artifact-type", "application/*", "a.example/x:1", "b.example/x:1"),
        _args("-r", "--depth", "1", "a.example/x:1", "b.example/x:1"),
        _args("-r", "--platform", "linux/amd64", "a.example/x:1", "b.example/x:1"),
        _args("-r", "a.example/x:1", "b.example/x:1,latest"),
        _args("-r", "a.example/x:1", "b.example/y:1"),
        _args("-r", "a.example/x:1", "b.example/x:1", "c.example/x:1"),
    ]
    keys = {run_key(v) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_from_file_lines_are_part_of_the_key(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("a.example/x:1 b.example/x:1\n")
    one = run_key(_args("-r", "--from-file", str(f)))
    assert one == run_key(_args("-r", "a.example/x:1", "b.example/x:1"))
    f.write_text("a.example/x:1 b.example/x:1\na.example/y:1 b.example/y:1\n")
    assert run_key(_args("-r", "--from-file", str(f))) != one


def test_from_file_lines_split_like_a_shell(tmp_path: Path) -> None:
    """Plain lines split at blanks, quoted ones through shlex; comments and blank lines skipped."""
    f = tmp_path / "pairs.txt"
    f.write_text(
        "# promotion\n"
        "\n"
        "a.example/x:1\tb.example/x:1  c.example/x:1   # two destinations\n"
        "  a.example/y:1 'ocidir://my dir/y:1'\r\n"
        'a.example/z:1 "b.example/z:1"\n'
    )
    pairs = _pairs(_args("--from-file", str(f)))
    assert [(src, dsts) for src, dsts, _ in pairs] == [
        ("a.example/x:1", ["b.example/x:1", "c.example/x:1"]),
        ("a.example/y:1", ["ocidir://my dir/y:1"]),
        ("a.example/z:1", ["b.example/z:1"]),
    ]
    assert [where for _, _, where in pairs] == [f"{f}:3", f"{f}:4", f"{f}:5"]


def test_from_file_bad_lines_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    for text, fragment in (("a.example/x:1\n", "expected"), ("a 'b\n", "quotation")):
        f.write_text("# header\n" + text)
        with pytest.raises(ConfigError) as info:
            _pairs(_args("--from-file", str(f)))
        assert f"{f}:2" in str(info.value) and fragment in str(info.value)
