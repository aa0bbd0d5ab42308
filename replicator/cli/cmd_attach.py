"""``replicator attach``: push an artifact that refers to REF through ``subject``.

``replicator attach REF --artifact-type T [FILE[:MEDIATYPE] | DIR]...
[-a KEY=VALUE]... [--annotation-file F] [--concurrency N]``

REF is resolved to its manifest descriptor, which becomes the new manifest's
``subject``; the referrer is pushed by digest only (no tag).  On a registry
without the referrers API the target maintains the fallback referrers index.
Output as ``oras attach`` prints it: blob lines, ``Attached to [registry] REF``
and the referrer's ``Digest:``.
"""

from __future__ import annotations

import argparse
from typing import Any

from replicator.artifacts.push import push_artifact
from replicator.cli.cmd_push import (
    add_artifact_arguments,
    allow_intermixed,
    build_spec,
    printer,
)
from replicator.cli.context import CliContext
from replicator.cli.output import field_line, target_kind, write_line
from replicator.errors import UsageError
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import parse_reference


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``attach`` command."""
    parser = subparsers.add_parser(
        "attach",
        help="attach files to an existing manifest as a referrer",
        description=(
            "Push an artifact whose subject is the manifest REF names (by tag or\n"
            "digest), e.g. a signature or an SBOM.  The referrer gets no tag; find it\n"
            "again with `replicator discover REF`."
        ),
    )
    parser.add_argument("reference", metavar="REF", help="host/repository:tag or @digest")
    parser.add_argument(
        "--artifact-type", required=True, metavar="TYPE", help="artifact type of the referrer"
    )
    add_artifact_arguments(parser, files_required=False)
    allow_intermixed(parser)
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Resolve REF, push the referrer; print ``Attached to [...] REF`` and its digest."""
    if not args.files and not args.annotation and not args.annotation_file:
        raise UsageError("attach needs at least one file or annotation")
    ref = parse_reference(args.reference)
    target = ctx.open_target(ref)
    found = await target.resolve(ref.repository, ref.reference)
    subject = Descriptor(media_type=found.media_type, digest=found.digest, size=found.size)
    spec = build_spec(args, artifact_type=args.artifact_type, subject=subject)
    result = await push_artifact(
        target,
        ref.repository,
        spec,
        concurrency=args.concurrency,
        on_event=printer(ctx),
    )
    write_line(ctx.out, f"Attached to {target_kind(ref)} {args.reference}")
    write_line(ctx.out, field_line("Digest", result.descriptor.digest))
    return 0
