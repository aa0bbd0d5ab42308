"""``replicator sync CONFIG`` and ``replicator verify CONFIG``: jobs from a config file.

``sync`` parses the config (``docs/SYNC-CONFIG.md``), hands it to the run layer
(:func:`~replicator.sync.syncing.run_sync`: the jobs expanded and run in one
engine run, one journal run) and prints per job what was selected, copied,
found up to date, kept, refused or failed.  ``--dry-run`` writes nothing: it
prints the plan (``replicator.sync.syncing``).  ``verify`` audits without writing
and lists every difference (exit 9 when there is one).

Exit codes: 0; 9 when something selected is missing at a destination (or, for
``verify``, any difference); 10 when a promotion gate refused a graph; the code
of the most severe failure otherwise; 11 when a selected job was left out
because another process was running it (and nothing failed); 75 after
SIGTERM/SIGINT (a rerun of the same config resumes).  ``--watch``,
``--metrics-addr``, ``--metrics-file`` and ``--wait-lock`` are
:mod:`replicator.cli.sync_service`'s (docs/UNATTENDED.md).

``--shard I/N`` (or ``--shard-from-env N``, the index from
``JOB_COMPLETION_INDEX``) runs only the source repositories shard I of N owns,
as a run, a journal file and job locks of its own (docs/SCALING.md,
:mod:`replicator.sync.shard`); ``verify`` takes the same flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from replicator.cli import heap
from replicator.cli.cmd_copy import (
    _message_printer,
    _observer,
    _positive,
    _size_arg,
    request_lines,
    summary_line,
)
from replicator.cli.context import CliContext
from replicator.cli.lockflags import wait_lock
from replicator.cli.sync_output import print_plan, print_sync
from replicator.cli.sync_service import OneShot, add_service_flags, check_service_flags, run_watch
from replicator.errors import EXIT_INTERRUPTED, GateRefusedError, UsageError
from replicator.journal.store import default_journal_path
from replicator.sync import JournalChoice, StopRequest, TargetPool, concurrency_limits
from replicator.sync.shard import INDEX_VARIABLE, Shard


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``sync`` command (``verify`` is in :mod:`.cmd_verify`)."""
    p = subparsers.add_parser(
        "sync",
        help="run the jobs of a config file: selection, mapping, gates, overwrite policy",
        description=(
            "Run the jobs of CONFIG (YAML, see docs/SYNC-CONFIG.md) once, in one run with "
            "shared limits and one journal. --dry-run prints the plan and writes nothing."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="the sync config file (YAML)")
    add_common(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing anywhere")
    p.add_argument(
        "--deep",
        action="store_true",
        help=(
            "ask the destinations about every manifest and every blob (as verify --deep), "
            "not only where nothing vouches for them: repairs content deleted there out of band"
        ),
    )
    p.add_argument(
        "--chunk-size",
        type=_size_arg,
        default=None,
        metavar="SIZE",
        help="upload blobs larger than SIZE in chunks of SIZE",
    )
    p.add_argument(
        "--journal",
        metavar="PATH",
        help=f"resume journal (default {default_journal_path()}); a rerun of the same config resumes",
    )
    p.add_argument("--fresh", action="store_true", help="ignore an unfinished run: start over")
    p.add_argument("--no-journal", action="store_true", help="run without a journal (no resume)")
    add_service_flags(p)  # --watch, --metrics-addr, --metrics-file, --wait-lock (sync_service)
    add_shard_flags(p)
    p.set_defaults(handler=run_sync_command)


def _shard_arg(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_shard_flags(p: argparse.ArgumentParser) -> None:
    """``--shard I/N`` and ``--shard-from-env N`` (one or the other); read with :func:`shard_from_args`.

    For every command that expands a config's source repositories: ``sync``,
    ``verify``, and the hook for ``bundle create``.
    """
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--shard",
        type=_shard_arg,
        default=None,
        metavar="I/N",
        help="handle only shard I of N (0 <= I < N): the source repositories whose name hashes "
        "to I (docs/SCALING.md); its own run and journal file",
    )
    group.add_argument(
        "--shard-from-env",
        type=_positive,
        default=None,
        metavar="N",
        help=f"shard I of N with I from ${INDEX_VARIABLE} (a Kubernetes Indexed Job "
        "of N completions)",
    )


def shard_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Shard | None:
    """The shard the command line asks for, None for all; :class:`UsageError` for a bad index."""
    if args.shard is not None:
        shard: Shard = args.shard
        return shard
    if args.shard_from_env is not None:
        return Shard.from_environment(
            args.shard_from_env, os.environ if environ is None else environ
        )
    return None


def shard_line(outcome: Any) -> str | None:
    """``Shard I/N: ...`` for a sharded outcome, None otherwise."""
    if outcome.shard is None:
        return None
    here, elsewhere = outcome.shard_counts
    return (
        f"Shard {outcome.shard.label}: {here} source repositor{'y' if here == 1 else 'ies'} "
        f"here, {elsewhere} in other shards"
    )


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this job (repeatable; default: every job)",
    )
    p.add_argument("--report", metavar="FILE", help="write a JSON report (a section per job)")
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=32,
        metavar="N",
        help="global cap on concurrent requests (default 32)",
    )


def load(args: argparse.Namespace) -> Any:
    from replicator.sync.config import load_config

    return load_config(Path(args.config).expanduser())


def report_path(args: argparse.Namespace) -> Path | None:
    """Where ``--report`` writes, if given."""
    return Path(args.report).expanduser() if args.report else None


def pool(ctx: CliContext, config: Any) -> TargetPool:
    """Targets with each host's settings from the config, over the command line's."""
    return TargetPool(lambda host: config.registry_options(host, base=ctx.registry_options(host)))


async def run_sync_command(args: argparse.Namespace, ctx: CliContext) -> int:
    """Load, run, print; raise nothing for job failures: the exit code says it.

    ``--watch`` hands over to :func:`~replicator.cli.sync_service.run_watch`; a
    one-shot run locks its jobs first (:class:`~replicator.cli.sync_service.OneShot`).
    """
    check_service_flags(args)
    config = load(args)
    shard = shard_from_args(args)
    if args.watch:
        if shard is not None:
            raise UsageError(
                "--shard does not apply to --watch: run one sync per shard on a schedule (docs/SCALING.md)"
            )
        return await run_watch(
            args, ctx, config, open_pool=lambda c: pool(ctx, c), show=_shower(ctx)
        )
    journal = (
        JournalChoice.off()
        if args.no_journal
        else JournalChoice.at(
            args.journal or default_journal_path(), fresh=args.fresh, wait_lock=wait_lock(args)
        )
    )
    service = OneShot(args, config, shard)  # job locks, --metrics-file
    try:
        outcome = await _run(args, ctx, config, service, journal, shard)
    finally:
        service.release()
    if (line := shard_line(outcome)) is not None:
        ctx.out.write(line + "\n")
    if args.dry_run:
        print_plan(ctx.out, outcome)
    else:
        print_sync(ctx.out, outcome)
    if outcome.report is not None and not args.dry_run:
        ctx.out.write(summary_line(outcome.report) + "\n")
        for line in request_lines(outcome.report):
            ctx.out.write(line + "\n")
    print_errors(ctx, outcome)
    service.print_locked(ctx)
    if outcome.exit_code == EXIT_INTERRUPTED:
        return EXIT_INTERRUPTED
    return service.exit_code(outcome.exit_code)


async def _run(
    args: argparse.Namespace,
    ctx: CliContext,
    config: Any,
    service: OneShot,
    journal: JournalChoice,
    shard: Shard | None,
) -> Any:
    """Lock the jobs, run the sync of those locked; write ``--metrics-file`` while the targets are open."""
    from replicator.sync.syncing import SyncRequest, run_sync

    observer, display = _observer(ctx)
    stop = StopRequest()
    async with pool(ctx, config) as targets:
        with display, stop.on_signals():
            request = SyncRequest(
                config=config,
                jobs=await service.lock_jobs(stop),  # the selected jobs nobody else runs
                dry_run=args.dry_run,
                journal=journal,
                limits=concurrency_limits(args.concurrency),
                chunk_size=args.chunk_size,
                report_path=report_path(args),
                command=service.command,
                deep=args.deep,
                shard=shard,
            )
            outcome = await run_sync(
                request,
                targets=targets,
                observer=service.observe(observer),
                stop=stop,
                on_message=_message_printer(ctx),
                before_network=heap.settle,
            )
        code = outcome.exit_code
        await service.write_metrics(outcome, targets, service.exit_code(code))
    return outcome


def _shower(ctx: CliContext) -> Any:
    """What a watch prints after each job's run: its results and errors."""

    def show(job: str, outcome: Any) -> None:
        print_sync(ctx.out, outcome)
        ctx.out.flush()
        print_errors(ctx, outcome)

    return show


def print_errors(ctx: CliContext, outcome: Any, *, ignore_refusals: bool = False) -> None:
    """One ``Error:`` line per job that could not be listed, and the run's own error."""
    lines = [f"job {p.name}: {p.error}" for p in outcome.expansion.jobs if p.error is not None]
    error = None if outcome.run is None else outcome.run.error
    if error is not None and not (ignore_refusals and isinstance(error, GateRefusedError)):
        lines.append(str(error))
    for line in lines:
        if ctx.json_logs:
            from replicator.observe.logging import get_logger

            get_logger("replicator.cli").error("cli.job_failed", error=line)
        else:
            ctx.err.write(f"Error: {line}\n")
    ctx.err.flush()
