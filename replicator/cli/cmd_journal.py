"""``replicator journal list|show RUN|gc``: inspect and prune the resume journal.

These commands read the journal where it is: a path with no journal is
reported as such (``list`` and ``gc`` exit 0, ``show`` 3) and nothing is
created; a damaged journal or a file that is not one is an error (exit 8) and
nothing is moved.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from replicator.cli.context import CliContext
from replicator.errors import NotFoundError, UsageError
from replicator.journal.store import Journal, RunInfo, default_journal_path

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or a number of seconds → seconds."""
    text = text.strip().lower()
    try:
        if text and text[-1] in _UNITS:
            return float(text[:-1]) * _UNITS[text[-1]]
        return float(text)
    except ValueError:
        raise UsageError(f"invalid age {text!r}: use e.g. 30d, 12h, 90m") from None


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``journal`` command and its sub-commands."""
    parser = subparsers.add_parser(
        "journal",
        help="inspect or prune the resume journal",
        description="Show the runs recorded in the resume journal, or prune old ones.",
    )
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help=f"journal file (default: {default_journal_path()})",
    )
    sub = parser.add_subparsers(dest="journal_command", required=True, metavar="{list,show,gc}")
    ls = sub.add_parser("list", help="list runs, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON")
    show = sub.add_parser("show", help="show one run")
    show.add_argument("run", help="run id (or a unique prefix)")
    gc = sub.add_parser(
        "gc",
        help="delete runs no rerun resumes (done, superseded) older than --older-than",
        description=(
            "Delete runs not updated for --older-than that no rerun can continue: done "
            "runs and runs superseded by a newer run of the same command (abandoned by "
            "--fresh). The newest unfinished run of a command (running, interrupted or "
            "failed) is what rerunning it resumes: it is kept unless --include-unfinished."
        ),
    )
    gc.add_argument("--older-than", default="30d", help="age, e.g. 30d, 12h (default 30d)")
    gc.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also delete unfinished runs (running, interrupted, failed): "
        "rerunning their command then starts over",
    )
    parser.set_defaults(handler=run)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _as_json(info: RunInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "state": info.state,
        "started": info.started,
        "updated": info.updated,
        "finished": info.finished,
        "command": dict(info.command),
        "counts": dict(info.counts),
        "bytes": info.bytes,
        "error": info.error,
    }


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """List, show or prune journal runs."""
    path = _journal_path(args)
    journal = await Journal.open_existing(path)
    if journal is None:
        return _no_journal(args, ctx, path)
    try:
        if args.journal_command == "list":
            _list(args, ctx, journal.runs())
            return 0
        if args.journal_command == "show":
            info = journal.run(args.run)
            if info is None:
                raise NotFoundError(f"no single run matches {args.run!r} in {journal.path}")
            ctx.out.write(json.dumps(_as_json(info), indent=2) + "\n")
            return 0
        return await _gc(args, ctx, journal)
    finally:
        await journal.close()


async def _gc(args: argparse.Namespace, ctx: CliContext, journal: Journal) -> int:
    """Prune old runs; say how many unfinished ones were kept for their reruns."""
    age = parse_age(args.older_than)
    keep = not args.include_unfinished
    kept = journal.resumable_older_than(age) if keep else 0
    removed = journal.gc(older_than=age, keep_unfinished=keep)
    await journal.flush()
    ctx.out.write(f"Removed {removed} run(s) from {journal.path}\n")
    if kept:
        ctx.out.write(
            f"Kept {kept} unfinished run(s) that a rerun resumes "
            "(--include-unfinished removes them too)\n"
        )
    return 0


def _journal_path(args: argparse.Namespace) -> Path:
    return Path(args.journal).expanduser() if args.journal else default_journal_path()


def _no_journal(args: argparse.Namespace, ctx: CliContext, path: Path) -> int:
    """What each sub-command says where no journal exists (nothing is created)."""
    if args.journal_command == "show":
        raise NotFoundError(f"there is no journal at {path}")
    if args.journal_command == "list" and args.json:
        ctx.out.write("[]\n")
    elif args.journal_command == "list":
        ctx.out.write(f"No journal at {path}: no run recorded\n")
    else:
        parse_age(args.older_than)
        ctx.out.write(f"No journal at {path}: nothing to remove\n")
    return 0


def _list(args: argparse.Namespace, ctx: CliContext, runs: list[RunInfo]) -> None:
    if args.json:
        ctx.out.write(json.dumps([_as_json(r) for r in runs], indent=2) + "\n")
        return
    ctx.out.write(f"{'RUN':<24} {'STATE':<12} {'STARTED':<20} {'BYTES':>12}  COMMAND\n")
    for r in runs:
        cmd = " ".join(str(x) for x in r.command.get("argv", [])) or "-"
        ctx.out.write(f"{r.id:<24} {r.state:<12} {_when(r.started):<20} {r.bytes:>12}  {cmd}\n")
