"""How the command line reports a failure: one line, or one JSON event.

:func:`report_failure` turns any exception into exactly one ``Error: ...`` line
(secrets redacted, a traceback only with ``--debug``) and the documented exit
code — or, with ``--log-format json``, into the log event ``cli.failed``.
:func:`parse_command_line` runs argparse so that a usage error never shows a
value given to a password flag (``--pass=SECRET`` is ambiguous, and argparse
would echo it), and is the event ``cli.usage_error`` with JSON logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from replicator.errors import EXIT_FAILURE, EXIT_USAGE, ReplicatorError
from replicator.observe.logging import MASK, configure_logging, get_logger, redact_text

_log = get_logger("replicator.cli")

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_KEYBOARD_INTERRUPT = 130


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The non-group exceptions inside ``exc``, depth first, in order."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def primary_exception(exc: BaseException) -> BaseException:
    """The exception that explains a failure, looking inside exception groups.

    The first :class:`ReplicatorError` wins, then a ``KeyboardInterrupt``, then
    the first exception that is not a cancellation, then whatever came first.
    """
    found = list(leaves(exc))
    if not found:
        return exc
    for leaf in found:
        if isinstance(leaf, ReplicatorError):
            return leaf
    for leaf in found:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in found:
        if not isinstance(leaf, asyncio.CancelledError):
            return leaf
    return found[0]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe_failure(exc: BaseException, *, debug: bool) -> tuple[str, int]:
    """The ``Error: ...`` line (secrets redacted) and the exit code for ``exc``."""
    chosen = primary_exception(exc)
    if isinstance(chosen, ReplicatorError):
        text = str(chosen)
        if chosen.details:  # the details follow on lines of their own
            text = text.splitlines()[0] if text else text
        message, code = f"Error: {text}", chosen.exit_code
    elif isinstance(chosen, KeyboardInterrupt):
        message, code = "Error: interrupted", EXIT_KEYBOARD_INTERRUPT
    else:
        hint = "" if debug else " (run with --debug for details)"
        detail = str(chosen)
        name = type(chosen).__name__
        text = f"{name}: {detail}" if detail else name
        message, code = f"Error: internal error: {text}{hint}", EXIT_FAILURE
    return redact_text(_one_line(message)), code


def report_failure(
    exc: BaseException, *, debug: bool, stderr: TextIO, json_logs: bool = False
) -> int:
    """Report the failure; return the exit code.

    On ``stderr``: the traceback (only with ``debug``) and the ``Error: ...``
    line.  With ``json_logs`` instead the log event ``cli.failed`` (``error``,
    ``exit_code``, the traceback as ``exception`` with ``debug``).
    """
    line, code = describe_failure(exc, debug=debug)
    chosen = primary_exception(exc)
    details = (
        [redact_text(d) for d in chosen.details] if isinstance(chosen, ReplicatorError) else []
    )
    if json_logs:
        extra: dict[str, Any] = {"exc_info": exc} if debug else {}
        if details:
            extra["details"] = details
        _log.error("cli.failed", error=line.removeprefix("Error: "), exit_code=code, **extra)
        return code
    if debug:
        stderr.write(redact_text("".join(traceback.format_exception(exc))))
    stderr.write(line + "\n")
    for detail in details:
        stderr.write(f"  {detail}\n")
    stderr.flush()
    return code


def password_values(words: Sequence[str]) -> list[str]:
    """Every value ``words`` may hand a password flag, however argparse would read it.

    ``-pVALUE``, ``-p VALUE``, combined short flags (``-rpVALUE``), ``--password
    VALUE``, ``--password=VALUE`` and their abbreviations (``--pass=VALUE``).
    Generous on purpose: what it returns is only masked in a usage error.
    """
    values: list[str] = []
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        if word == "--":
            break
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            if len(name) > 2 and "--password".startswith(name):
                values.append(value if equals else following)
        elif word.startswith("-") and "p" in word[1:]:
            rest = word[1:].split("p", 1)[1]
            values.append(rest or following)
    return sorted({v for v in values if v}, key=len, reverse=True)


def _masked(text: str, words: Sequence[str]) -> str:
    for value in password_values(words):
        text = text.replace(value, MASK)
    return redact_text(text)


def _asks_for_json_logs(words: Sequence[str]) -> bool:
    """Whether ``words`` give ``--log-format json`` (read before the real parse, which may fail)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--log-format")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            known, _ = probe.parse_known_args(list(words))
    except SystemExit:
        return False
    return bool(known.log_format == "json")


def parse_command_line(parser: argparse.ArgumentParser, words: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(words)``; a usage error has any password value masked.

    With ``--log-format json`` the usage error is the event ``cli.usage_error``
    followed by ``cli.exited``; argparse's ``SystemExit`` propagates either way.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(words)
    except SystemExit as exc:
        text = _masked(captured.getvalue(), words)
        if exc.code not in (0, None) and _asks_for_json_logs(words):
            lines = text.strip().splitlines()
            error = lines[-1].split(" error: ", 1)[-1] if lines else "invalid command line"
            json_usage_error(error, "\n".join(lines[:-1]), EXIT_USAGE)
        else:
            sys.stderr.write(text)
            sys.stderr.flush()
        raise


def json_usage_error(error: str, usage: str, code: int) -> None:
    """Report a usage error as the events ``cli.usage_error`` and ``cli.exited`` (JSON logs)."""
    configure_logging(fmt="json")
    _log.error("cli.usage_error", error=error, usage=usage, exit_code=code)
    _log.info("cli.exited", exit_code=code)
