"""The CLI imports only the command module the command line names."""

from __future__ import annotations

import pytest

from replicator.cli.main import build_parser, named_command


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["copy", "a", "b"], "copy"),
        (["--debug", "copy", "a", "b"], "copy"),
        (["--username", "copy", "pull", "x"], "pull"),
        (["-u", "copy", "pull", "x"], "pull"),
        (["-ucopy", "pull", "x"], "pull"),
        (["--user", "copy", "pull", "x"], "pull"),  # an abbreviation takes its value too
        (["--log-format=json", "copy"], "copy"),
        (["--password-stdin", "copy"], "copy"),
        (["--help"], None),
        (["cpy", "a"], None),
        ([], None),
    ],
)
def test_named_command(argv: list[str], command: str | None) -> None:
    assert named_command(argv) == command


def test_parser_for_one_command_parses_like_the_full_one() -> None:
    argv = ["-u", "me", "copy", "--debug", "reg.io/a:1", "reg.io/b:1"]
    lean = vars(build_parser(named_command(argv)).parse_args(argv))
    full = vars(build_parser().parse_args(argv))
    assert lean == full
