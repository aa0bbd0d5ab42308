"""``replicator repo tags|ls``: list the tags of a repository, or a registry's repositories.

``replicator repo tags REPO [--include-digest-tags]`` prints the tags sorted,
one per line; tags of the referrers tag schema (``sha256-`` + 64 hex digits)
are bookkeeping, not tags users care about, and are hidden unless asked for.

``replicator repo ls HOST[/NAMESPACE]`` prints the repositories of the
registry catalog (under NAMESPACE when given).
"""

from __future__ import annotations

import argparse
from typing import Any

from replicator.cli.context import CliContext
from replicator.cli.output import write_line
from replicator.errors import UsageError
from replicator.oci.reference import Reference, is_referrers_tag, normalise_host, parse_reference
from replicator.targets.base import CatalogLister


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``repo`` command with its ``tags`` and ``ls`` subcommands."""
    parser = subparsers.add_parser("repo", help="list tags or repositories")
    sub = parser.add_subparsers(dest="repo_command", metavar="<subcommand>", required=True)

    tags = sub.add_parser("tags", help="list the tags of a repository")
    tags.add_argument("repository", metavar="REPO", help="host/repository")
    tags.add_argument(
        "--include-digest-tags",
        action="store_true",
        help="also show referrers fallback tags (sha256-<hex>)",
    )
    tags.set_defaults(handler=run_tags)

    ls = sub.add_parser("ls", help="list the repositories of a registry")
    ls.add_argument("registry", metavar="HOST[/NAMESPACE]", help="registry host")
    ls.set_defaults(handler=run_ls)


async def run_tags(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the repository's tags, sorted, fallback tags hidden unless asked for."""
    ref = parse_reference(args.repository)
    target = ctx.open_target(ref)
    for tag in sorted(await target.tags(ref.repository)):
        if args.include_digest_tags or not is_referrers_tag(tag):
            write_line(ctx.out, tag)
    return 0


async def run_ls(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the repositories of the registry catalog (under a namespace when given)."""
    host_text, _, namespace = args.registry.partition("/")
    host = normalise_host(host_text)
    ref = Reference(scheme="registry", registry=host, repository="", tag=None, digest=None)
    target = ctx.open_target(ref)
    if not isinstance(target, CatalogLister):
        raise UsageError(f"{target.display} cannot list its repositories")
    names = await target.catalog()
    prefix = namespace.strip("/") + "/" if namespace.strip("/") else ""
    for name in sorted(names):
        if name.startswith(prefix):
            write_line(ctx.out, name)
    return 0
