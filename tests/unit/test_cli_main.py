"""The CLI skeleton: global flags anywhere, exception groups unwrapped, output helpers."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
from typing import Any

import pytest

from replicator.cli import main as cli_main
from replicator.cli.context import CliContext, read_password_stdin
from replicator.cli.output import format_table, human_duration, human_size, short_digest
from replicator.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    AuthenticationError,
    InputError,
    NotFoundError,
    UsageError,
)
from replicator.observe.logging import register_secret


def _parser_with_probe() -> argparse.ArgumentParser:
    """The real parser plus a nested probe command, as command modules build them."""
    parser = cli_main.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    probe = subparsers.add_parser("probe")
    probe.add_argument("ref")
    nested = probe.add_subparsers(dest="probe_cmd")
    leaf = nested.add_parser("leaf")
    leaf.add_argument("-p", "--platform")  # redefines a global short option
    return parser


def test_global_flags_before_and_after_the_command() -> None:
    parser = _parser_with_probe()
    before = parser.parse_args(["--insecure", "-u", "bob", "probe", "x"])
    after = parser.parse_args(["probe", "--insecure", "-u", "bob", "x"])
    for args in (before, after):
        assert args.insecure is True
        assert args.username == "bob"
        assert args.plain_http is False
        assert args.log_format == "auto"


def test_flag_after_command_does_not_clobber_flag_before() -> None:
    parser = _parser_with_probe()
    args = parser.parse_args(["--debug", "--ca-file", "ca.pem", "probe", "--plain-http", "x"])
    assert args.debug is True
    assert args.ca_file == "ca.pem"
    assert args.plain_http is True


def test_nested_command_can_redefine_a_global_option() -> None:
    parser = _parser_with_probe()
    args = parser.parse_args(["probe", "x", "leaf", "-p", "linux/amd64", "--insecure"])
    assert args.platform == "linux/amd64"
    assert args.insecure is True
    assert args.password is None


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli_main.build_parser().parse_args(["--log-format", "xml"])
    assert info.value.code == 2


def test_exception_group_yields_first_replicator_error() -> None:
    inner = NotFoundError("manifest unknown")
    group = BaseExceptionGroup(
        "outer", [ValueError("noise"), ExceptionGroup("inner", [inner, AuthenticationError("x")])]
    )
    assert cli_main.primary_exception(group) is inner
    line, code = cli_main.describe_failure(group, debug=False)
    assert line == "Error: manifest unknown"
    assert code == EXIT_NOT_FOUND


def test_internal_error_line_names_type_and_hint() -> None:
    line, code = cli_main.describe_failure(KeyError("k\nmore"), debug=False)
    assert line == "Error: internal error: KeyError: 'k\\nmore' (run with --debug for details)"
    assert code == EXIT_FAILURE
    line, _ = cli_main.describe_failure(RuntimeError("boom"), debug=True)
    assert line == "Error: internal error: RuntimeError: boom"


def test_error_line_is_single_line_and_redacted() -> None:
    register_secret("very-secret-pw-123")
    err = AuthenticationError("rejected very-secret-pw-123\nfor user")
    line, code = cli_main.describe_failure(err, debug=False)
    assert line == "Error: rejected *** for user"
    assert code == EXIT_AUTH


def test_report_failure_prints_traceback_only_with_debug() -> None:
    quiet, loud = io.StringIO(), io.StringIO()
    try:
        raise RuntimeError("kaput")
    except RuntimeError as exc:
        cli_main.report_failure(exc, debug=False, stderr=quiet)
        cli_main.report_failure(exc, debug=True, stderr=loud)
    assert quiet.getvalue().count("\n") == 1
    assert "Traceback" not in quiet.getvalue()
    assert "Traceback" in loud.getvalue()
    assert loud.getvalue().splitlines()[-1] == "Error: internal error: RuntimeError: kaput"


def test_keyboard_interrupt_in_group_exits_130() -> None:
    group = BaseExceptionGroup("g", [KeyboardInterrupt()])
    assert cli_main.describe_failure(group, debug=False) == ("Error: interrupted", 130)


def _ns(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "username": None,
        "password": None,
        "password_stdin": False,
        "insecure": False,
        "plain_http": False,
        "ca_file": None,
        "debug": False,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_context_options_follow_flags(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    ctx = CliContext.from_args(
        _ns(insecure=True, plain_http=True, ca_file=str(ca)), out=io.StringIO()
    )
    opts = ctx.registry_options("registry.example:5000")
    assert opts.insecure is True
    assert opts.plain_http is True
    assert opts.ca_file == str(ca)
    assert ctx.registry_options("registry.example:5000") is opts
    assert ctx.is_tty is False
    plain = CliContext.from_args(_ns(), out=io.StringIO())
    assert plain.registry_options("registry.example").plain_http is None


def test_context_rejects_missing_ca_file_and_double_password() -> None:
    with pytest.raises(InputError):
        CliContext.from_args(_ns(ca_file="/nonexistent/ca.pem"), out=io.StringIO())
    with pytest.raises(UsageError):
        CliContext.from_args(
            _ns(password="a", password_stdin=True), out=io.StringIO(), stdin=io.StringIO("b\n")
        )


def test_password_stdin_strips_line_break_and_rejects_empty() -> None:
    assert read_password_stdin(io.StringIO("pa ss\r\n")) == "pa ss"
    with pytest.raises(UsageError):
        read_password_stdin(io.StringIO("\n"))


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (5 * 1024**3, "5.00 GiB"),
        (123 * 1024**2, "123.0 MiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_human_size_decimal_and_duration() -> None:
    assert human_size(1500, binary=False) == "1.50 kB"
    assert human_duration(0.25) == "250ms"
    assert human_duration(4.24) == "4.2s"
    assert human_duration(185) == "3m05s"
    assert human_duration(3720) == "1h02m"


def test_short_digest_and_table() -> None:
    assert short_digest("sha256:" + "ab" * 32) == "abababababab"
    assert format_table(["TAG", "DIGEST"], [["v1", "sha256:1"], ["latest", "x"]]) == (
        "TAG     DIGEST\nv1      sha256:1\nlatest  x"
    )


def test_factory_picks_backend_by_scheme(tmp_path: Any) -> None:
    from replicator.oci.reference import parse_reference
    from replicator.targets.factory import open_target
    from replicator.targets.ocilayout import OCILayoutTarget
    from replicator.targets.registry.client import RegistryTarget
    from replicator.targets.registry.options import RegistryOptions

    asked: list[str] = []

    def options_for(host: str) -> RegistryOptions:
        asked.append(host)
        return RegistryOptions()

    async def scenario() -> None:
        layout = open_target(
            parse_reference(f"ocidir://{tmp_path}/out:v1"), options_for=options_for, create=True
        )
        registry = open_target(parse_reference("127.0.0.1:5999/a/b:v1"), options_for=options_for)
        try:
            assert isinstance(layout, OCILayoutTarget)
            assert isinstance(registry, RegistryTarget)
            assert asked == ["127.0.0.1:5999"]
        finally:
            await layout.aclose()
            await registry.aclose()

    asyncio.run(scenario())


def test_context_shares_one_target_per_location_and_closes_them(tmp_path: Any) -> None:
    from replicator.oci.reference import parse_reference

    async def scenario() -> None:
        ctx = CliContext.from_args(_ns(), out=io.StringIO())
        a = ctx.open_target(parse_reference("127.0.0.1:5999/a:v1"))
        b = ctx.open_target(parse_reference("127.0.0.1:5999/b/c@sha256:" + "0" * 64))
        c = ctx.open_target(parse_reference(f"ocidir://{tmp_path}/lay:v1"), create=True)
        assert a is b
        assert c is not a
        await ctx.aclose()
        assert ctx.open_target(parse_reference("127.0.0.1:5999/a:v1")) is not a
        await ctx.aclose()

    asyncio.run(scenario())


def _unretrieved(exc: BaseException, debug: bool) -> list[dict[str, Any]]:
    """What the log shows when a future holding ``exc`` is collected unawaited."""
    import gc

    from replicator.observe.logging import configure_logging

    buf = io.StringIO()
    configure_logging(debug=debug, fmt="json", stream=buf)

    async def leave_one_behind() -> None:
        asyncio.get_running_loop().set_exception_handler(cli_main._leftover_errors)
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        del fut
        gc.collect()

    asyncio.run(leave_one_behind())
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_a_network_error_nobody_awaited_is_a_debug_event_without_traceback() -> None:
    import ssl

    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert _unretrieved(err, debug=False) == []  # below INFO: not shown
    (line,) = [x for x in _unretrieved(err, debug=True) if x["logger"] == "replicator.cli"]
    assert line["level"] == "debug"
    assert line["event"] == "cli.unawaited_network_error"
    assert "SSLCertVerificationError" in str(line["error"])
    assert "Traceback" not in json.dumps(line)


def test_any_other_error_nobody_awaited_is_still_reported() -> None:
    (line,) = _unretrieved(ValueError("a bug"), debug=False)
    assert line["level"] == "error" and line["logger"] == "asyncio"
    assert "ValueError: a bug" in str(line["exception"])
    assert "Traceback" not in str(line["exception"])  # only with --debug


def test_commands_are_the_modules_that_exist_and_all_show_in_help() -> None:
    import importlib.util

    for name in cli_main.COMMANDS:
        assert importlib.util.find_spec(f"replicator.cli.cmd_{name}") is not None, name
    assert not {"tag", "blob"} & set(cli_main.COMMANDS)
    text = cli_main.build_parser().format_help()
    listed = set(re.findall(r"^    ([a-z]+)\b", text, re.M))
    assert set(cli_main.COMMANDS) <= listed, set(cli_main.COMMANDS) - listed


@pytest.mark.parametrize(
    "words",
    [
        ["-pSECRET1x", "copy"],
        ["copy", "-p", "SECRET1x"],
        ["copy", "-rpSECRET1x", "a", "b"],
        ["copy", "-rp", "SECRET1x"],
        ["--password=SECRET1x", "copy"],
        ["--password", "SECRET1x"],
        ["--pass=SECRET1x"],
        ["--passw", "SECRET1x"],
    ],
)
def test_every_form_of_a_password_flag_is_found(words: list[str]) -> None:
    assert "SECRET1x" in cli_main.password_values(words)


def test_a_usage_error_masks_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main.main(["copy", "--pass=SECRET2y", "a.example/x:1", "b.example/x:1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "ambiguous option" in err and "SECRET2y" not in err and "--pass=***" in err


def test_report_failure_as_a_json_event() -> None:
    from replicator.observe.logging import configure_logging

    buf = io.StringIO()
    configure_logging(fmt="json", stream=buf, debug=True)
    try:
        raise NotFoundError("manifest unknown")
    except NotFoundError as exc:
        code = cli_main.report_failure(exc, debug=True, stderr=io.StringIO(), json_logs=True)
    (event,) = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert code == EXIT_NOT_FOUND
    assert event["event"] == "cli.failed" and event["error"] == "manifest unknown"
    assert event["exit_code"] == EXIT_NOT_FOUND and "Traceback" in event["exception"]
