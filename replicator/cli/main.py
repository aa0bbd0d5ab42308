"""The ``replicator`` command line: parser, global flags, error contract.

Each command lives in ``replicator/cli/cmd_<name>.py`` with
``register(subparsers)`` and ``async def run(args, ctx) -> int`` and is listed
in :data:`COMMANDS`.  This module parses the command line, configures logging,
builds the :class:`~replicator.cli.context.CliContext`, runs the command under
anyio (asyncio backend, uvloop when installed) and turns every failure into
exactly one ``Error: ...`` line on stderr and a documented exit code.

Failures and usage errors are reported by :mod:`replicator.cli.failures`.
With ``--log-format json`` every line on stderr is a JSON log event: the
failure is the event ``cli.failed`` (``error``, ``exit_code``, and with
``--debug`` the traceback in ``exception``), an argparse usage error is
``cli.usage_error``, and the process ends with ``cli.exited`` carrying its
``exit_code``.  No value given to a password flag appears in a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import anyio

from replicator import __version__
from replicator.cli import heap
from replicator.cli.context import CliContext
from replicator.cli.failures import (
    EXIT_KEYBOARD_INTERRUPT,
    describe_failure,
    json_usage_error,
    leaves,
    parse_command_line,
    password_values,
    primary_exception,
    report_failure,
)
from replicator.cli.flags import add_global_flags
from replicator.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_INCOMPLETE,
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    EXIT_JOURNAL,
    EXIT_LOCKED,
    EXIT_NETWORK,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_REGISTRY,
    EXIT_USAGE,
    Interrupted,
)
from replicator.observe.logging import configure_logging, get_logger

_log = get_logger("replicator.cli")

__all__ = [
    "COMMANDS",
    "EXIT_BROKEN_PIPE",
    "EXIT_CODES",
    "EXIT_KEYBOARD_INTERRUPT",
    "build_parser",
    "console_main",
    "describe_failure",
    "exit_code_table",
    "iter_command_modules",
    "main",
    "named_command",
    "password_values",
    "primary_exception",
    "report_failure",
    "run_command",
]

#: Command modules, imported as ``replicator.cli.cmd_<name>``; missing ones are skipped.
COMMANDS: tuple[str, ...] = (
    "login",
    "logout",
    "copy",
    "sync",
    "verify",
    "bundle",
    "push",
    "attach",
    "discover",
    "pull",
    "manifest",
    "repo",
    "journal",
    "resolve",
    "version",
)

#: Exit status when stdout was closed under us (``replicator ... | head``).
EXIT_BROKEN_PIPE = 141

Handler = Callable[[argparse.Namespace, CliContext], Awaitable[int | None]]

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_FAILURE, "generic failure, or an internal error"),
    (EXIT_USAGE, "bad command line, malformed reference, configuration or local input"),
    (EXIT_NOT_FOUND, "manifest, tag, blob or repository not found"),
    (EXIT_AUTH, "credentials missing or wrong (401), or access denied (403)"),
    (EXIT_NETWORK, "host unreachable: DNS, refused connection, time-out, TLS verification"),
    (EXIT_INTEGRITY, "digest or size mismatch; a pull would write outside its directory"),
    (EXIT_REGISTRY, "registry error: 429/5xx after retries, protocol violation; bad OCI layout"),
    (EXIT_JOURNAL, "the resume journal cannot be used"),
    (EXIT_INCOMPLETE, "copy finished but something selected is missing at a destination"),
    (EXIT_REFUSED, "a promotion gate refused a graph (a required referrer is missing)"),
    (EXIT_LOCKED, "another process runs the same sync job or copy on this journal"),
    (EXIT_INTERRUPTED, "stopped by SIGTERM/SIGINT during a copy; rerun to resume"),
    (EXIT_KEYBOARD_INTERRUPT, "interrupted by Ctrl-C"),
)

_EPILOG_NOTES = """\
global flags may be given before or after the command name.  Credential flags
apply to every registry named on the command line; without them credentials
come from REPLICATOR_* environment variables or ~/.docker/config.json
(see `replicator login`).  Logs go to stderr, results to stdout.
"""


def exit_code_table() -> str:
    """The exit code table as shown in ``--help`` and docs/CLI.md."""
    return "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)


class _CommandParser(argparse.ArgumentParser):
    """Parser class of every (sub)command: carries the global flags without defaults.

    A command may redefine a global option string for itself
    (``conflict_handler="resolve"``): its own definition wins.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("conflict_handler", "resolve")
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        add_global_flags(self, suppress=True)


def _import_command(name: str) -> ModuleType | None:
    """Import ``replicator.cli.cmd_<name>``; None when that very module does not exist.

    An import error raised *inside* the module (a missing dependency of it, a
    bug) propagates: only the absence of the command module itself is skipped.
    """
    module_name = f"replicator.cli.cmd_{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def iter_command_modules() -> Iterator[ModuleType]:
    """The command modules of :data:`COMMANDS` that exist, in order."""
    for name in dict.fromkeys(COMMANDS):
        module = _import_command(name)
        if module is not None:
            yield module


def _value_flags() -> frozenset[str]:
    """The global flags that take a value (``--username NAME``)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_global_flags(parser, suppress=True)
    return frozenset(
        option
        for action in parser._actions
        if action.nargs != 0
        for option in action.option_strings
    )


def named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, found without importing every command module.

    The first word that is neither an option nor the value of a global flag
    (abbreviations count as the flag they could abbreviate); None when that word
    is no command of :data:`COMMANDS` or there is none (``--help``).
    """
    value_flags = _value_flags()
    words = iter(argv)
    for word in words:
        if word == "--":
            return None
        if word.startswith("--"):
            if "=" not in word and any(f.startswith(word) for f in value_flags if f[1] == "-"):
                next(words, None)
            continue
        if word.startswith("-"):
            if word in value_flags:  # -u NAME (not -uNAME)
                next(words, None)
            continue
        return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every available command registered.

    ``only`` registers that one command alone (what ``main`` does when the
    command line names one: the other command modules are not even imported).
    """
    parser = argparse.ArgumentParser(
        prog="replicator",
        description=(
            "Replicate OCI artifact graphs (images, indexes and the referrers attached\n"
            "to them: signatures, SBOMs, attestations) between registries and OCI\n"
            "image layouts (ocidir://path)."
        ),
        epilog=f"{_EPILOG_NOTES}\nexit codes:\n{exit_code_table()}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"replicator {__version__}")
    add_global_flags(parser, suppress=False)
    subparsers = parser.add_subparsers(
        title="commands",
        dest="command",
        metavar="<command>",
        parser_class=_CommandParser,
    )
    if only is not None and (module := _import_command(only)) is not None:
        module.register(subparsers)
        return parser
    for module in iter_command_modules():
        module.register(subparsers)
    return parser


def _backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


@contextmanager
def _cancel_on_sigterm(scope: anyio.CancelScope) -> Iterator[list[bool]]:
    """Cancel ``scope`` when SIGTERM arrives; yields a flag list that says whether it did.

    The command sees an ordinary cancellation, so its cleanup (journal flush,
    upload bookkeeping) runs as for Ctrl-C.  Without a usable event-loop signal
    API (not the main thread, Windows) SIGTERM keeps its default action.
    """
    fired: list[bool] = []
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        fired.append(True)
        scope.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):
        yield fired
        return
    try:
        yield fired
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _leftover_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler of errors nobody awaited.

    A request cancelled while its connection was being opened (the run stopped
    at its first failure) can leave that connection attempt to fail later, in a
    future nobody awaits any more: asyncio would report it as an error with a
    traceback after the command's own one-line error.  Such a network error is
    only a DEBUG event; anything else goes to asyncio's default handler.
    """
    exc = context.get("exception")
    if context.get("message") == "Future exception was never retrieved" and isinstance(
        exc, OSError
    ):
        _log.debug("cli.unawaited_network_error", error=f"{type(exc).__name__}: {exc}")
        return
    loop.default_exception_handler(context)


#: Commands that call :func:`.heap.settle` themselves, once their own start-up is done.
_SETTLE_THEMSELVES = frozenset({"copy", "cp", "sync", "verify"})


async def _run_handler(handler: Handler, args: argparse.Namespace, ctx: CliContext) -> int:
    result: int | None = None
    asyncio.get_running_loop().set_exception_handler(_leftover_errors)
    if getattr(args, "command", None) not in _SETTLE_THEMSELVES:
        heap.settle()
    try:
        with anyio.CancelScope() as scope, _cancel_on_sigterm(scope) as terminated:
            result = await handler(args, ctx)
        if terminated and scope.cancelled_caught:
            raise Interrupted("stopped by SIGTERM; rerun to resume")
    finally:
        with anyio.CancelScope(shield=True):
            await ctx.aclose()
    return EXIT_OK if result is None else int(result)


def run_command(handler: Handler, args: argparse.Namespace, ctx: CliContext) -> int:
    """Run one command handler to completion on a fresh event loop."""
    return anyio.run(
        _run_handler, handler, args, ctx, backend="asyncio", backend_options=_backend_options()
    )


def _help_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser whose help fits a command line that named no runnable command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    return parser


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``replicator`` console script; returns the exit status.

    Usage errors from argparse exit with 2 (argparse's own message), ``--help``
    and ``--version`` with 0.  Everything else is reported by
    :func:`report_failure`: one line, no traceback unless ``--debug``.  With
    ``--log-format json`` every stderr line is a JSON event, the last one
    ``cli.exited`` with the exit code.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(named_command(words))
    args = parse_command_line(parser, words)
    json_logs = args.log_format == "json"
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        help_parser = _help_parser(parser, getattr(args, "command", None))
        if json_logs:
            json_usage_error("a command is needed", help_parser.format_help(), EXIT_USAGE)
        else:
            help_parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = bool(args.debug)
    configure_logging(debug=debug, fmt=args.log_format)
    code = _run_reported(handler, args, debug=debug, json_logs=json_logs)
    if json_logs:
        _log.info("cli.exited", exit_code=code)
    return code


def _run_reported(
    handler: Handler, args: argparse.Namespace, *, debug: bool, json_logs: bool
) -> int:
    """Run the command; report a failure (one line, or ``cli.failed``); the exit code."""
    try:
        ctx = CliContext.from_args(args)
        code = run_command(handler, args, ctx)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if any(isinstance(leaf, BrokenPipeError) for leaf in leaves(exc)):
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        return report_failure(exc, debug=debug, stderr=sys.stderr, json_logs=json_logs)
    return code


def console_main() -> int:
    """The console script's body (after :func:`replicator.cli.console_main`): :func:`main`, quick exit.

    Once the command returned, everything it owns is closed (journal, sessions,
    files) and only the interpreter's own teardown is left: tens of
    milliseconds of module and object finalization with aiohttp and friends
    loaded (~45 ms measured), a visible share of a short command.  Standard
    streams and log handlers are flushed, then the process exits with the
    command's status without that teardown.  (Exceptions — ``SystemExit`` from
    argparse included — leave the normal way.)
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or EXIT_BROKEN_PIPE
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
