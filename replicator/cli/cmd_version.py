"""``replicator version``: print the version and the runtime it runs on."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from replicator import __version__
from replicator.cli.context import CliContext


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``version`` command."""
    parser = subparsers.add_parser("version", help="show the version of replicator")
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print ``replicator <version>`` and the Python version; always succeeds."""
    ctx.out.write(f"replicator {__version__}\n")
    ctx.out.write(f"python {platform.python_version()} ({platform.system().lower()})\n")
    return 0
