"""``replicator pull``: write an artifact's titled layers into a directory.

``replicator pull REF [-o DIR] [--concurrency N]``

Files are written under their titles, directory layers (``io.deis.oras.content.
unpack``) unpacked; every digest is verified and nothing is placed before all
layers verified.  A title or tar entry that would land outside DIR (``..``,
absolute paths, links pointing out, device files) stops the pull with exit
code 6 and nothing written.  Output as ``oras pull`` prints it.
"""

from __future__ import annotations

import argparse
from typing import Any

from replicator.artifacts.pull import DEFAULT_PULL_CONCURRENCY, pull_artifact
from replicator.cli.context import CliContext
from replicator.cli.output import field_line, target_kind, write_line
from replicator.errors import UsageError
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import parse_reference


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``pull`` command."""
    parser = subparsers.add_parser(
        "pull",
        help="download an artifact's files into a directory",
        description="Download the titled layers of an artifact into a directory.",
    )
    parser.add_argument("reference", metavar="REF", help="host/repository:tag or @digest")
    parser.add_argument(
        "-o", "--output", default=".", metavar="DIR", help="output directory (default .)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_PULL_CONCURRENCY,
        metavar="N",
        help=f"blobs downloaded at once (default {DEFAULT_PULL_CONCURRENCY})",
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Pull REF into the output directory; print blob lines, ``Pulled`` and the digest."""
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    ref = parse_reference(args.reference)
    target = ctx.open_target(ref)

    def on_event(action: str, desc: Descriptor, name: str) -> None:
        write_line(ctx.out, f"{action:<11} {desc.short} {name}")
        ctx.out.flush()

    desc, _ = await pull_artifact(
        target,
        ref.repository,
        ref.reference,
        args.output,
        concurrency=args.concurrency,
        on_event=on_event,
    )
    write_line(ctx.out, f"Pulled {target_kind(ref)} {args.reference}")
    write_line(ctx.out, field_line("Digest", desc.digest))
    return 0
