"""``replicator manifest fetch|delete``: read a manifest, or delete it with its referrers.

``replicator manifest fetch [--pretty] [--descriptor] REF`` writes the exact
manifest bytes to stdout (``--pretty``: indented JSON; ``--descriptor``: the
manifest's descriptor instead).

``replicator manifest delete [-f] REF`` deletes the manifest together with
its whole referrer graph, deepest first, and leaves no referrers fallback tag
of a deleted manifest behind (see :mod:`replicator.artifacts.delete`).  Only
manifests whose own ``subject`` names their parent are deleted: a listed
manifest that does not is left in place, and said so.  Before anything is
deleted it names every tag that goes (a tag on a deleted manifest goes with
it, ``v1`` included when ``v2`` was asked for and both point at the same
digest).  Without ``-f`` it asks for confirmation on a terminal (``n``: prints
``Aborted: nothing was deleted`` and exits 1) and refuses (exit 2) when there
is none to ask on; with ``-f`` it deletes and prints what went, tags included.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from replicator.artifacts.delete import DeleteEvent, DeletePlan, execute_delete, plan_delete
from replicator.cli.context import CliContext
from replicator.cli.output import target_kind, write_line
from replicator.errors import UsageError
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import parse_reference

#: Exit code of a deletion the user declined at the prompt.
EXIT_ABORTED = 1


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


def _can_ask(ctx: CliContext) -> bool:
    return ctx.is_tty and sys.stdin.isatty()


def _summary(plan: DeletePlan) -> list[str]:
    """What the confirmation shows: how much goes, every tag that goes, what stays."""
    n = plan.referrers
    what = f"This deletes {plan.root.digest} and {n} referrer{'' if n == 1 else 's'}."
    names = list(plan.tags)
    tags = f"It removes the tags {', '.join(names)}." if names else "It removes no tag."
    return [what, tags, *plan.notes]


def _confirmed(ctx: CliContext, plan: DeletePlan) -> bool:
    for line in _summary(plan):
        write_line(ctx.out, line)
    ctx.out.write(
        f'Are you sure you want to delete the manifest "{plan.root.digest}" and all its '
        "referrers? [y/N] "
    )
    ctx.out.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _event_line(event: DeleteEvent, root: str) -> str | None:
    desc = event.descriptor
    if event.action == "deleted":
        if desc.digest == root:
            return None
        return f"Deleted {desc.digest} ({desc.artifact_type or desc.media_type})"
    if event.action == "tag_removed":
        return f"Removed tag {event.tag} ({desc.digest})"
    if event.action == "fallback_tag_removed":
        return f"Removed fallback tag {event.tag}"
    return event.note


async def run_delete(args: argparse.Namespace, ctx: CliContext) -> int:
    """Delete REF's manifest and its referrer graph; print what went, tags included."""
    ref = parse_reference(args.reference)
    target = ctx.open_target(ref)
    root = await target.resolve(ref.repository, ref.reference)
    if not args.force and not _can_ask(ctx):
        raise UsageError(
            f"refusing to delete {root.digest} and its referrers without confirmation: "
            "no terminal to ask on; pass -f/--force"
        )
    plan = await plan_delete(target, ref.repository, root)
    if args.force:
        for note in plan.notes:
            write_line(ctx.out, note)
    elif not _confirmed(ctx, plan):
        write_line(ctx.out, "Aborted: nothing was deleted")
        return EXIT_ABORTED

    def on_event(event: DeleteEvent) -> None:
        line = _event_line(event, root.digest)
        if line is not None:
            write_line(ctx.out, line)

    await execute_delete(target, plan, on_event=on_event)
    write_line(ctx.out, f"Deleted {target_kind(ref)} {args.reference}")
    return 0
