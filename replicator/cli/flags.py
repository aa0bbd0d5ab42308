"""The global flags every command takes (before or after its name).

Logging (``--debug``, ``--log-format``), credentials (``-u``, ``-p``,
``--password-stdin``), TLS (``--insecure``, ``--plain-http``, ``--ca-file``) and
registry time-outs (``--connect-timeout``, ``--timeout``, ``--retry-deadline``),
documented in ``docs/CLI.md``.  :mod:`replicator.cli.context` turns them into
per-registry options.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from replicator.targets.registry.options import RegistryOptions


def add_global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Add the global flags; with ``suppress`` they have no defaults.

    Subcommand parsers carry the flags too so they work after the command
    name; without defaults there, an absent flag does not overwrite the value
    parsed before the command name.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log at DEBUG level and show tracebacks on errors",
    )
    group.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default=default("auto"),
        help="log rendering on stderr: auto (console on a TTY, else JSON lines), console, json",
    )
    _add_credential_flags(group, default)
    _add_tls_flags(group, default)
    _add_timeout_flags(group, default)


#: Turns a flag's default into argparse.SUPPRESS on subcommand parsers.
_Default = Callable[[Any], Any]


def _add_credential_flags(group: argparse._ArgumentGroup, default: _Default) -> None:
    group.add_argument(
        "-u",
        "--username",
        default=default(None),
        help="registry user name (applies to every registry on the command line)",
    )
    group.add_argument(
        "-p",
        "--password",
        default=default(None),
        help="registry password or token (prefer --password-stdin)",
    )
    group.add_argument(
        "--password-stdin",
        action="store_true",
        default=default(False),
        help="read the password from standard input",
    )


def _add_tls_flags(group: argparse._ArgumentGroup, default: _Default) -> None:
    group.add_argument(
        "--insecure",
        action="store_true",
        default=default(False),
        help="do not verify registry TLS certificates (http/https choice unchanged)",
    )
    group.add_argument(
        "--plain-http",
        action="store_true",
        default=default(False),
        help="talk plain HTTP to registries (default: only for localhost / 127.0.0.1)",
    )
    group.add_argument(
        "--ca-file",
        metavar="PATH",
        default=default(None),
        help="PEM bundle of CA certificates to verify registry TLS against; implies HTTPS, "
        "also for loopback hosts",
    )


def _add_timeout_flags(group: argparse._ArgumentGroup, default: _Default) -> None:
    group.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=default(None),
        help="give up a connection attempt to a registry after SECONDS "
        f"(default {_REGISTRY_DEFAULTS.connect_timeout:g})",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=default(None),
        help="longest wait for the next bytes of a registry's answer "
        f"(default {_REGISTRY_DEFAULTS.read_timeout:g})",
    )
    group.add_argument(
        "--retry-deadline",
        metavar="SECONDS",
        type=_seconds,
        default=default(None),
        help="time one request may spend on retries after its first failure "
        f"(default {_REGISTRY_DEFAULTS.retry_deadline:g})",
    )


#: Where the defaults of the time-out flags come from.
_REGISTRY_DEFAULTS = RegistryOptions()


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type of the time-out flags)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value
