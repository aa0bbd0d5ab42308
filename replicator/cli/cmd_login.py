"""``replicator login HOST``: check credentials against a registry, then remember them.

The credentials come from the global flags (``-u/--username``, ``-p/--password``
or ``--password-stdin``); missing ones are asked for only when standard input is
a terminal.  They are verified by pinging ``/v2/`` with them (which runs the
registry's whole authentication flow, token server included) and then stored in
the Docker config (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``),
through a credential helper when one is configured.  Nothing is stored when
the check fails.  What was stored is then read back the way later commands
look it up (the helper's ``get``, or the rewritten file) and compared:
``Login Succeeded`` is printed only when it reads back the same.  A helper
that is missing, fails, hangs or answers garbage is an error naming it.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from typing import Any, TextIO

from replicator.cli.context import CliContext
from replicator.errors import UsageError
from replicator.oci.reference import DOCKER_HUB_REGISTRY
from replicator.targets.registry.credentials import registry_key, store_login
from replicator.targets.registry.options import Credentials, RegistryOptions

_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$"
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``login`` command."""
    parser = subparsers.add_parser(
        "login",
        help="log in to a registry and remember the credentials",
        description=(
            "Verify a user name and password (or token) against a registry and store\n"
            "them in the Docker config (credential helpers are honoured).\n\n"
            "examples:\n"
            "  replicator login registry.example.com -u alice --password-stdin < pw.txt\n"
            "  replicator login localhost:5000 -u alice   # asks for the password on a TTY"
        ),
    )
    parser.add_argument("host", metavar="HOST", help="registry host[:port] (or docker.io)")
    parser.set_defaults(handler=run)


def normalize_login_host(text: str) -> str:
    """The registry key ``HOST`` stands for (``docker.io`` for Docker Hub).

    URLs (``https://host:5000/``) are accepted; a bare ``host/path`` is not, so a
    repository given by mistake is reported rather than silently cut.  Raises
    :class:`UsageError` for anything that is not a host name.
    """
    raw = text.strip()
    is_url = raw.lower().startswith(("https://", "http://"))
    if not is_url and "/" in raw.rstrip("/"):
        raise UsageError(f"login: {text!r} is not a registry host (leave out the repository)")
    key = registry_key(raw)
    if not _HOST_RE.match(key):
        raise UsageError(f"login: {text!r} is not a registry host name like host[:port]")
    return key


def request_host(key: str) -> str:
    """Where requests for the registry ``key`` go (Docker Hub's API host for docker.io)."""
    return DOCKER_HUB_REGISTRY if key == "docker.io" else key


def _stdin_is_tty(stdin: TextIO) -> bool:
    try:
        return stdin.isatty()
    except (AttributeError, ValueError):
        return False


def ask_credentials(
    host: str,
    username: str | None,
    password: str | None,
    *,
    stdin: TextIO | None = None,
) -> tuple[str, str]:
    """Complete ``username``/``password``, prompting only on an interactive terminal.

    Raises :class:`UsageError` when something is missing and standard input is
    not a terminal (scripts must pass ``-u`` and ``--password-stdin``).
    """
    stream = stdin if stdin is not None else sys.stdin
    if username is None or password is None:
        if not _stdin_is_tty(stream):
            missing = "a user name (-u)" if username is None else "a password"
            raise UsageError(
                f"login {host}: {missing} is needed and standard input is not a terminal; "
                "use -u USER with --password-stdin (or -p)"
            )
        if username is None:
            username = input("Username: ").strip()
        if password is None:
            password = getpass.getpass("Password: ")
    if not username:
        raise UsageError(f"login {host}: the user name is empty")
    if not password:
        raise UsageError(f"login {host}: the password is empty")
    return username, password


async def verify_login(host: str, options: RegistryOptions) -> None:
    """Ping ``host``'s ``/v2/`` with ``options`` through the registry client.

    Returns when the registry accepted the credentials (or needs none); raises
    the client's :mod:`replicator.errors` exception otherwise
    (:class:`~replicator.errors.AuthenticationError` for wrong credentials).
    """
    from replicator.targets.registry.client import RegistryTarget

    target = RegistryTarget(host, options)
    try:
        await target.ping()
    finally:
        await target.aclose()


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Verify the credentials for ``args.host``, store them, read them back; say so."""
    key = normalize_login_host(args.host)
    username, password = ask_credentials(key, ctx.username, ctx.password)
    options = RegistryOptions(
        credentials=Credentials(username=username, password=password),
        plain_http=True if ctx.plain_http else None,
        insecure=ctx.insecure,
        ca_file=ctx.ca_file,
    )
    await verify_login(request_host(key), options)
    store_login(key, username, password)  # reads back what it stored, raises if different
    ctx.out.write("Login Succeeded\n")
    return 0
