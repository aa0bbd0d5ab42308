"""``replicator discover``: show the referrer graph of a manifest.

``replicator discover REF [-o tree|json|table] [--artifact-type T] [--depth N]``

* ``tree`` (default): the reference as given, then one branch per artifact
  type with the referrers' digests under it, their own referrers nested below;
* ``json``: ``{"manifests": [descriptor + nested "manifests", ...]}`` so that
  ``jq -r ".manifests[0].digest"`` picks the first referrer;
* ``table``: digest, artifact type and annotations per referrer.

Siblings are ordered by artifact type, then digest (see
:mod:`replicator.artifacts.discover`).  Only manifests whose own ``subject``
names the node are shown: a listed manifest that does not, and a listing that
names its own subject, are skipped with a warning on stderr.
``--artifact-type`` is a glob, the same rule as ``copy --artifact-type`` (an
exact type matches itself), and filters the first level only; ``--depth``
limits how many levels are followed (default: all).
"""

from __future__ import annotations

import argparse
from typing import Any

from replicator.artifacts.discover import (
    discover_referrers,
    render_json,
    render_table,
    render_tree,
)
from replicator.cli.context import CliContext
from replicator.errors import UsageError
from replicator.oci.reference import parse_reference


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``discover`` command."""
    parser = subparsers.add_parser(
        "discover",
        help="show the referrers (signatures, SBOMs, ...) of a manifest",
        description="Show the graph of referrers attached to a manifest, recursively.",
    )
    parser.add_argument("reference", metavar="REF", help="host/repository:tag or @digest")
    parser.add_argument(
        "-o",
        "--output",
        "--format",
        dest="format",
        choices=("tree", "json", "table"),
        default="tree",
        help="output format (default tree)",
    )
    parser.add_argument(
        "--artifact-type",
        metavar="TYPE",
        help="only referrers whose artifact type matches this glob (first level)",
    )
    parser.add_argument(
        "--depth", type=int, metavar="N", help="levels of referrers to follow (default: all)"
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Resolve REF, walk its referrers and print them in the chosen format."""
    if args.depth is not None and args.depth < 1:
        raise UsageError("--depth must be at least 1")
    ref = parse_reference(args.reference)
    target = ctx.open_target(ref)
    subject = await target.resolve(ref.repository, ref.reference)
    nodes = await discover_referrers(
        target,
        ref.repository,
        subject,
        artifact_type=args.artifact_type,
        depth=args.depth,
    )
    if args.format == "json":
        ctx.out.write(render_json(nodes))
    elif args.format == "table":
        ctx.out.write(render_table(nodes))
    else:
        ctx.out.write(render_tree(args.reference, nodes))
    return 0
