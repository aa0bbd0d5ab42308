"""The unattended side of ``replicator sync``: ``--watch``, job locks, metrics.

* ``--watch`` runs :class:`~replicator.sync.watch.Watch` until SIGTERM/SIGINT
  (exit 0, or 75 when a run was interrupted mid-way), reloading the config on
  SIGHUP; ``--metrics-addr HOST:PORT`` serves ``/metrics``, ``/healthz`` and
  ``/readyz`` meanwhile.  The signal handlers stay installed for the watch's
  whole life, its shutdown included: in a container replicator may be PID 1,
  which the kernel protects from every signal it has no handler for.
* A one-shot ``sync`` takes the lock of every selected job before it runs
  (:class:`OneShot`): a job another process is running is left out and named,
  and the command exits 11 unless something worse happened (``--wait-lock``
  waits instead); ``--metrics-file PATH`` writes the run's metrics in the
  node-exporter textfile format at the end, carried over from the previous file
  (:mod:`replicator.observe.textfile`).

docs/UNATTENDED.md describes all of it for operators.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from replicator.cli import heap
from replicator.cli.context import CliContext
from replicator.cli.lockflags import add_wait_lock_flag, wait_lock
from replicator.engine.events import CopyObserver, LogObserver
from replicator.errors import (
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_REFUSED,
    Interrupted,
    LockedError,
    UsageError,
)
from replicator.journal.store import default_journal_path
from replicator.observe.logging import get_logger
from replicator.observe.metrics import ServiceMetrics
from replicator.observe.textfile import write_textfile
from replicator.sync import JournalChoice, StopRequest, concurrency_limits
from replicator.sync.config import SyncConfig
from replicator.sync.expand import selected_jobs
from replicator.sync.locks import HeldLock, Holder, acquire, job_lock_path, locks_allowed
from replicator.sync.schedule import Schedule
from replicator.sync.service_figures import (
    DestinationTally,
    job_figures,
    limit_figures,
    registry_figures,
)
from replicator.sync.shard import Shard
from replicator.sync.syncing import SyncOutcome
from replicator.sync.targets import TargetPool
from replicator.sync.watch import WatchRequest

log = get_logger("replicator.cli")


def add_service_flags(p: argparse.ArgumentParser) -> None:
    """Add ``--watch``, ``--metrics-addr``, ``--metrics-file`` and ``--wait-lock`` to ``sync``."""
    p.add_argument(
        "--watch",
        action="store_true",
        help=(
            "keep running: sync every job once, then each on its own schedule/interval "
            "(default every 10m), never overlapping itself; SIGHUP reloads CONFIG; "
            "SIGTERM stops (docs/UNATTENDED.md)"
        ),
    )
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="with --watch: serve Prometheus /metrics, /healthz and /readyz there (:9090: every interface)",
    )
    p.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write the run's Prometheus metrics to PATH at the end (node-exporter textfile; counters carried over)",
    )
    add_wait_lock_flag(p, "a selected job")


def check_service_flags(args: argparse.Namespace) -> None:
    """Refuse combinations that mean nothing (:class:`UsageError`, exit 2)."""
    problems = []
    if args.metrics_addr and not args.watch:
        problems.append(
            "--metrics-addr serves a watch (--watch); a one-shot run writes --metrics-file"
        )
    if args.watch:
        for flag, given in (
            ("--dry-run", args.dry_run),
            ("--deep", args.deep),
            ("--report", args.report),
            ("--metrics-file", args.metrics_file),
            ("--wait-lock", wait_lock(args) != 0.0),
        ):
            if given:
                problems.append(f"{flag} does not apply to --watch (see docs/UNATTENDED.md)")
    elif args.metrics_file and args.dry_run:
        problems.append("--metrics-file records runs; a --dry-run runs nothing")
    if problems:
        raise UsageError("; ".join(problems))


def journal_path(args: argparse.Namespace) -> Path | None:
    """The journal the command uses (None: ``--no-journal``; locks then live beside the default one)."""
    if args.no_journal:
        return None
    return Path(args.journal or default_journal_path()).expanduser()


class OneShot:
    """Job locks and the metrics file of one ``sync`` run (see the module doc)."""

    def __init__(
        self, args: argparse.Namespace, config: SyncConfig, shard: Shard | None = None
    ) -> None:
        self.config = config
        self.names = [job.name for job in selected_jobs(config, args.job)]
        self.asked = tuple(args.job)
        journal = journal_path(args)
        #: A shard's jobs are locked beside the shard's journal: shards of one job run at once.
        self.journal = (
            journal if shard is None else shard.journal_path(journal or default_journal_path())
        )
        self.dry_run = bool(args.dry_run)
        self.wait = wait_lock(args)
        self.command = (
            "sync",
            str(args.config),
            *(f"--job={j}" for j in args.job),
            *(() if shard is None else (f"--shard={shard.label}",)),
        )
        self.metrics_file = Path(args.metrics_file).expanduser() if args.metrics_file else None
        self.metrics = ServiceMetrics() if self.metrics_file is not None else None
        self.tally: DestinationTally | None = None
        self.held: list[HeldLock] = []
        #: Jobs left out because another process holds them: name -> why.
        self.locked: dict[str, str] = {}
        self.started = time.monotonic()

    def observe(self, observer: CopyObserver) -> CopyObserver:
        """The observer to hand the run: ``observer``, counted per destination for the metrics."""
        if self.metrics is None:
            return observer
        self.tally = DestinationTally(observer)
        return self.tally

    async def lock_jobs(self, stop: StopRequest) -> tuple[str, ...]:
        """Lock the selected jobs (sorted by name); the ``--job`` list the run should take.

        Jobs another process holds are left out (:attr:`locked`).  Raises
        :class:`LockedError` when every job is held elsewhere, and
        :class:`Interrupted` when a stop came while waiting.
        """
        if self.dry_run or not locks_allowed(self.journal):
            return self.asked  # nothing to protect, or a journal path the run refuses (exit 8)
        holder = Holder.me(self.command)
        deadline = None if self.wait is None else time.monotonic() + self.wait
        for name in sorted(self.names):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                held = await acquire(
                    job_lock_path(self.journal, name),
                    holder,
                    what=f"job {name}",
                    wait=left,
                    stopped=lambda: stop.requested,
                )
            except LockedError as exc:
                self.locked[name] = str(exc)
                continue
            if held is None:
                self.release()
                raise Interrupted(f"stopped while waiting for the lock of job {name}: nothing ran")
            self.held.append(held)
        if not self.locked:
            return self.asked
        runnable = tuple(n for n in self.names if n not in self.locked)
        if not runnable:
            await self.write_metrics(None, None, EXIT_LOCKED)
            raise self.all_locked()
        return runnable

    def all_locked(self) -> LockedError:
        """The error of a run whose every job another process holds."""
        if len(self.locked) == 1:
            return LockedError(next(iter(self.locked.values())))
        error = LockedError(f"every selected job ({len(self.locked)}) is being run elsewhere")
        error.details = tuple(self.locked.values())
        return error

    def release(self) -> None:
        """Give every job lock back."""
        for lock in self.held:
            lock.release()
        self.held.clear()

    def exit_code(self, run_code: int) -> int:
        """The run's exit code, or 11 when a job was left out and nothing worse happened."""
        if self.locked and run_code in (EXIT_OK, EXIT_REFUSED):
            return EXIT_LOCKED
        return run_code

    def print_locked(self, ctx: CliContext) -> None:
        """One ``Error:`` line per job left out (an event with JSON logs)."""
        for name, why in self.locked.items():
            if ctx.json_logs:
                log.error("cli.job_locked", job=name, error=why)
            else:
                ctx.err.write(f"Error: {why}\n")  # it names the job
        ctx.err.flush()

    async def write_metrics(
        self, outcome: SyncOutcome | None, targets: TargetPool | None, code: int
    ) -> None:
        """Write ``--metrics-file`` (when given): the run's figures, merged with the file's."""
        if self.metrics is None or self.metrics_file is None:
            return
        metrics, now = self.metrics, time.time()
        for job in selected_jobs(self.config, self.names):
            schedule = Schedule.of(cron=job.schedule, interval=job.interval, anchor=now)
            metrics.declare_job(job.name, schedule.period(now))
        if outcome is not None:
            duration = time.monotonic() - self.started
            figures = job_figures(outcome, finished=now, duration=duration, tally=self.tally)
            for name, fig in figures.items():
                metrics.record_run(name, fig)
            if outcome.run is not None and targets is not None:
                run = outcome.run
                metrics.record_limits(
                    *limit_figures(run.throttle_events, run.report.limits, targets)
                )
        if targets is not None:
            metrics.set_registry_totals(registry_figures(targets.targets()))
        for name in self.locked:
            metrics.record_skipped_tick(name, "locked")
        metrics.exit_code(code)
        await anyio.to_thread.run_sync(write_textfile, self.metrics_file, list(metrics.collect()))


async def run_watch(
    args: argparse.Namespace,
    ctx: CliContext,
    config: SyncConfig,
    *,
    open_pool: Callable[[SyncConfig], TargetPool],
    show: Callable[[str, SyncOutcome], None],
) -> int:
    """``sync CONFIG --watch``: run until SIGTERM/SIGINT (see the module doc).

    ``open_pool`` opens the targets of a config; ``show`` prints a job run's outcome.
    """
    from prometheus_client import ProcessCollector

    from replicator.cli.cmd_copy import _message_printer
    from replicator.observe.metrics_http import Health, MetricsServer
    from replicator.sync.config import load_config
    from replicator.sync.watch import Watch

    metrics, health = ServiceMetrics(), Health()
    server = None
    if args.metrics_addr:
        registry = metrics.registry()
        ProcessCollector(registry=registry)
        server = MetricsServer(args.metrics_addr, registry, health)
        log.info("watch.metrics_serving", address=server.address)
    request = watch_request(args)

    stop = StopRequest()
    watch = Watch(
        request,
        config,
        open_pool=open_pool,
        load=load_config,
        stop=stop,
        metrics=metrics,
        health=health,
        observer=LogObserver(),
        on_outcome=show,
        on_message=_message_printer(ctx),
    )
    heap.settle()
    try:
        # Installed for the whole watch, shutdown included (PID 1 in a container).
        with stop.on_signals(), watch.reload_on_sighup():
            code = await watch.run()
    finally:
        if server is not None:
            server.close()
    return code


def watch_request(args: argparse.Namespace) -> WatchRequest:
    """The watch the command line asks for."""
    path = journal_path(args)
    return WatchRequest(
        config_path=Path(args.config).expanduser(),
        jobs=tuple(args.job),
        journal=JournalChoice.off() if path is None else JournalChoice.at(path, fresh=args.fresh),
        limits=concurrency_limits(args.concurrency),
        chunk_size=args.chunk_size,
    )
