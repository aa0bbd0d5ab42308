"""``replicator verify CONFIG``: audit the destinations of a config's jobs, writing nothing.

For every tag the jobs select (immutable ones included): is the whole graph
(index children, blobs, referrers at every depth the job selects) at every
destination, and does each destination tag point at the source digest?  Every
difference is listed (tag missing / moved, manifest or referrer missing, blob
missing with ``--deep``, a referrer missing from its subject's index); exit 9
when there is one, 0 otherwise.  See :func:`replicator.sync.syncing.run_verify`.
``--shard I/N`` / ``--shard-from-env N`` audit one shard's source repositories.
"""

from __future__ import annotations

import argparse
from typing import Any

from replicator.cli import heap
from replicator.cli.cmd_copy import _message_printer
from replicator.cli.cmd_sync import (
    add_common,
    add_shard_flags,
    load,
    pool,
    print_errors,
    report_path,
    shard_from_args,
    shard_line,
)
from replicator.cli.context import CliContext
from replicator.cli.sync_output import print_verify
from replicator.sync import concurrency_limits


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``verify`` command."""
    v = subparsers.add_parser(
        "verify",
        help="audit the destinations of a config file's jobs without writing",
        description=(
            "For every tag CONFIG's jobs select: is the whole graph at every destination, and "
            "does each destination tag point at the source digest? Exit 9 with every difference."
        ),
    )
    v.add_argument("config", metavar="CONFIG", help="the sync config file (YAML)")
    add_common(v)
    v.add_argument(
        "--deep", action="store_true", help="also ask about every blob of the manifests present"
    )
    add_shard_flags(v)
    v.set_defaults(handler=run_verify_command)


async def run_verify_command(args: argparse.Namespace, ctx: CliContext) -> int:
    """Load, audit, print every difference; exit 9 when there is one."""
    from replicator.sync.syncing import run_verify

    config = load(args)
    shard = shard_from_args(args)
    heap.settle()
    async with pool(ctx, config) as targets:
        outcome = await run_verify(
            config,
            tuple(args.job),
            targets=targets,
            deep=args.deep,
            limits=concurrency_limits(args.concurrency),
            report_path=report_path(args),
            on_message=_message_printer(ctx),
            shard=shard,
        )
    if (line := shard_line(outcome)) is not None:
        ctx.out.write(line + "\n")
    print_verify(ctx.out, outcome)
    print_errors(ctx, outcome, ignore_refusals=True)
    return outcome.exit_code
