"""``replicator resolve REF``: print the digest a reference resolves to.

A small plumbing command: scripts use it to pin a tag to a digest, and the CLI
error-contract tests use it as the simplest command that talks to a registry.
"""

from __future__ import annotations

import argparse
from typing import Any

from replicator.cli.context import CliContext
from replicator.oci.reference import parse_reference


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``resolve`` command."""
    parser = subparsers.add_parser(
        "resolve",
        help="print the digest a reference resolves to",
        description="Print the digest of the manifest REF names.",
    )
    parser.add_argument(
        "reference", metavar="REF", help="host/repository:tag, @digest or ocidir://"
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Resolve ``args.reference`` and print its digest; errors propagate to main."""
    ref = parse_reference(args.reference)
    target = ctx.open_target(ref)
    desc = await target.resolve(ref.repository, ref.reference)
    ctx.out.write(desc.digest + "\n")
    return 0
