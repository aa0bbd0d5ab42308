"""``replicator manifest fetch|delete``: read a manifest, or delete it with its referrers.

``replicator manifest fetch [--pretty] [--descriptor] REF`` writes the exact
manifest bytes to stdout (``--pretty``: indented JSON; ``--descriptor``: the
manifest's descriptor instead).

``replicator manifest delete [-f] REF`` deletes the manifest together with
its whole referrer graph, deepest first, and leaves no referrers fallback tag
behind.  Without ``-f`` it asks for confirmation on a terminal and refuses
(exit 2) when there is none to ask on.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from replicator.artifacts.delete import delete_graph
from replicator.cli.context import CliContext
from replicator.cli.output import target_kind, write_line
from replicator.errors import UsageError
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import parse_reference


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``manifest`` command with its ``fetch`` and ``delete`` subcommands."""
    parser = subparsers.add_parser("manifest", help="fetch or delete manifests")
    sub = parser.add_subparsers(dest="manifest_command", metavar="<subcommand>", required=True)

    fetch = sub.add_parser("fetch", help="print a manifest (exact bytes)")
    fetch.add_argument("reference", metavar="REF", help="host/repository:tag or @digest")
    fetch.add_argument("--pretty", action="store_true", help="indent the JSON")
    fetch.add_argument(
        "--descriptor", action="store_true", help="print the manifest's descriptor instead"
    )
    fetch.set_defaults(handler=run_fetch)

    delete = sub.add_parser("delete", help="delete a manifest and all its referrers")
    delete.add_argument("reference", metavar="REF", help="host/repository:tag or @digest")
    delete.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=run_delete)


def _write_bytes(ctx: CliContext, raw: bytes) -> None:
    buffer = getattr(ctx.out, "buffer", None)
    ctx.out.flush()
    if buffer is not None:
        buffer.write(raw)
        buffer.flush()
    else:
        ctx.out.write(raw.decode("utf-8", "replace"))


async def run_fetch(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the manifest REF names: exact bytes, pretty JSON or its descriptor."""
    ref = parse_reference(args.reference)
    target = ctx.open_target(ref)
    desc, raw = await target.fetch_manifest(ref.repository, ref.reference)
    if args.descriptor:
        plain = Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)
        text = json.dumps(plain.to_json(), indent=2 if args.pretty else None)
        write_line(ctx.out, text)
    elif args.pretty:
        write_line(ctx.out, json.dumps(json.loads(raw), indent=2, ensure_ascii=False))
    else:
        _write_bytes(ctx, raw)
    return 0


def _confirm(ctx: CliContext, digest: str) -> None:
    question = (
        f'Are you sure you want to delete the manifest "{digest}" and all its referrers? [y/N] '
    )
    if not (ctx.is_tty and sys.stdin.isatty()):
        raise UsageError(
            f"refusing to delete {digest} and its referrers without confirmation: "
            "no terminal to ask on; pass -f/--force"
        )
    ctx.out.write(question)
    ctx.out.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("deletion cancelled")


async def run_delete(args: argparse.Namespace, ctx: CliContext) -> int:
    """Delete REF's manifest and its referrer graph; print what went."""
    ref = parse_reference(args.reference)
    target = ctx.open_target(ref)
    root = await target.resolve(ref.repository, ref.reference)
    if not args.force:
        _confirm(ctx, root.digest)

    def on_event(action: str, desc: Descriptor) -> None:
        if desc.digest != root.digest:
            kind = desc.artifact_type or desc.media_type
            write_line(ctx.out, f"{action} {desc.digest} ({kind})")

    await delete_graph(target, ref.repository, root, on_event=on_event)
    write_line(ctx.out, f"Deleted {target_kind(ref)} {args.reference}")
    return 0
