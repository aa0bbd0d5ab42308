"""The rule for "the same run": normalised references plus selecting options."""

from __future__ import annotations

import argparse
from pathlib import Path

from replicator.cli.cmd_copy import register, run_key


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
