"""``replicator logout HOST``: forget the credentials ``replicator login`` stored."""

from __future__ import annotations

import argparse
from typing import Any

from replicator.cli.cmd_login import normalize_login_host
from replicator.cli.context import CliContext
from replicator.targets.registry.credentials import remove_login


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``logout`` command."""
    parser = subparsers.add_parser(
        "logout",
        help="forget the stored credentials of a registry",
        description=(
            "Remove the credentials stored for HOST from the Docker config\n"
            "(and from its credential helper, when one is configured)."
        ),
    )
    parser.add_argument("host", metavar="HOST", help="registry host[:port] (or docker.io)")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Remove the stored login for ``args.host``; succeeds when none was stored too.

    A credential helper that cannot erase what it holds is an error (the Docker
    config is then left as it was), never reported as a successful logout.
    """
    key = normalize_login_host(args.host)
    if remove_login(key):
        ctx.out.write(f"Removed login credentials for {key}\n")
    else:
        ctx.out.write(f"Not logged in to {key}\n")
    return 0
