"""The rule for "the same run": normalised references plus selecting options.

Keys come from the run layer (:meth:`replicator.sync.RunRequest.key`), for the
requests ``copy`` builds from its command line; the golden values are what the
command computed before the run layer existed, so unfinished runs journalled
then still resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from replicator.cli.cmd_copy import build_request, command_record, register
from replicator.errors import ConfigError, InputError
from replicator.sync import ReferenceJob, RunRequest, reference_job
from replicator.sync.pairs import read_pairs


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    return parser.parse_args(["copy", *argv])


def run_key(args: argparse.Namespace) -> str:
    return build_request(args).key()


#: Keys computed by ``replicator.cli.cmd_copy.run_key`` at 4c8ae74, before the run layer.
GOLDEN = [
    (
        ["-r", "alpine:3", "reg.example:5000/mirror/alpine"],
        "sha256:3e052677ca7f6818557ed8f1a8ebf2bb27fc268e2e618d174533f872e85c0b08",
    ),
    (
        [
            "a.example/x:1",
            "b.example/x:1,latest",
            "ocidir:///tmp/lay:v1",
            "c.example/y@sha256:" + "a" * 64,
        ],
        "sha256:4b8649c4e97aaddb6c9fa7cf7d0feffa902a0095ea0f5c6985eb054c61e21b60",
    ),
    (
        ["-r", "--all-tags", "a.example/x", "b.example/y"],
        "sha256:4a9985e0f9d5bdc54514f3dd435697c8d18f471893f22a305a4872f776cce5ef",
    ),
    (
        [
            "-r",
            "--artifact-type",
            "application/*",
            "--exclude-artifact-type",
            "b/*",
            "--exclude-artifact-type",
            "a/*",
            "--depth",
            "2",
            "--platform",
            "linux/arm64/v8",
            "--platform",
            "linux/amd64",
            "a.example/x@sha256:" + "b" * 64,
            "b.example/x",
        ],
        "sha256:e65965360e48a86bc2eb2c637319fa860fcb883686de13bf5b1ef243347632da",
    ),
]


@pytest.mark.parametrize(("argv", "key"), GOLDEN, ids=["plain", "tags", "all-tags", "selection"])
def test_keys_are_those_of_earlier_releases(argv: list[str], key: str) -> None:
    assert run_key(_args(*argv)) == key


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
            "--deep-check",
            "--report",
            "r.json",
            "--fresh",
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


def test_a_second_front_end_names_its_run_by_its_own_definition() -> None:
    """A config-file front end keys its run by its definition, not the tags it expanded to."""
    monday = (reference_job("a.example/x:1", ["b.example/x"]),)
    tuesday = (*monday, reference_job("a.example/x:2", ["b.example/x"]))
    definition = {"jobs": [{"source": "a.example/x", "target": "b.example/x", "tags": "*"}]}
    assert (
        RunRequest(monday, definition=definition).key()
        == RunRequest(tuesday, definition=definition).key()
    )
    assert RunRequest(monday).key() != RunRequest(tuesday).key()
    assert RunRequest(monday, definition=definition).key() != RunRequest(monday).key()


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
    jobs = read_pairs(f)
    assert all(isinstance(j, ReferenceJob) for j in jobs)
    assert [(str(j.source), [d.display for d in j.destinations]) for j in jobs] == [
        ("a.example/x:1", ["b.example/x:1", "c.example/x:1"]),
        ("a.example/y:1", ["ocidir://my dir/y:1"]),
        ("a.example/z:1", ["b.example/z:1"]),
    ]
    assert [j.origin for j in jobs] == [f"{f}:3", f"{f}:4", f"{f}:5"]


def test_from_file_reports_every_bad_line_and_what_a_line_may_hold(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text(
        "# header\n"
        "a.example/x:1\n"  # 2: one word
        "a.example/ok:1 b.example/ok:1\n"
        "a 'b\n"  # 4: unbalanced quote
        "a.example/x:1 'b.example/Bad Name:1'\n"  # 5: bad reference
    )
    with pytest.raises(ConfigError) as info:
        read_pairs(f)
    message = str(info.value)
    assert message.startswith(f"3 bad lines in {f}: ")
    assert f"{f}:2: only one word" in message
    assert f"{f}:4: no closing quotation" in message
    assert f"{f}:5: invalid reference" in message
    assert f"{f}:3" not in message
    assert "a line is 'SRC DST [DST...]'" in message and "ocidir://PATH" in message
    assert "Error" not in message and "ValueError" not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"\xff\xfe not text\n", "not UTF-8 text (byte 0xff on line 1)"), (None, "cannot read (")],
    ids=["not-utf8", "missing"],
)
def test_from_file_that_cannot_be_read_says_why_in_words(
    tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    f = tmp_path / "pairs.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_pairs(f, label=f"--from-file {f}")
    message = str(info.value)
    assert message.startswith(f"--from-file {f}: ") and fragment in message
    assert "Error:" not in message and "Decode" not in message and "NotFound" not in message


def test_the_command_record_holds_no_global_flag() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-u")
    parser.add_argument("-p", "--password")
    sub = parser.add_subparsers()
    register(sub)
    args = parser.parse_args(
        ["-u", "me", "--password=hunter22", "copy", "-r", "--depth", "1", "a.example/x:1", "b/x"]
    )
    record = command_record(args)
    assert record == ("copy", "-r", "--depth", "1", "a.example/x:1", "b/x")
    assert build_request(args).command == record
