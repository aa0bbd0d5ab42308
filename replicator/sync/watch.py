"""Watch mode: every job of a sync config on its own schedule, never overlapping itself.

:class:`Watch` is what ``replicator sync CONFIG --watch`` runs, callable from
Python.  What it guarantees:

* **A first pass, then schedules.**  At start every selected job runs once;
  then each runs on its own ``schedule:`` (cron) or ``interval:``, or every 10
  minutes (:mod:`replicator.sync.schedule`).  Each run of a job is one
  :func:`~replicator.sync.syncing.run_sync` of that job alone: its own engine
  run and journal run, so one job's failure or slowness never holds another.
* **No overlap.**  A tick that finds the job's previous run still going
  starts nothing and is counted (``replicator_job_ticks_skipped_total``,
  reason ``running``); so is a tick whose job another process holds (reason
  ``locked``: the job's lock file, :mod:`replicator.sync.locks`).
* **Back-off.**  A failed run is retried after 5 s, 10 s, 20 s... capped at the
  job's period, or at its next tick if that is sooner; a success resets it.  A
  promotion gate's refusal is a policy's answer, not a failure: no back-off.
* **Stopping.**  After a stop request (SIGTERM/SIGINT: the caller's
  :class:`~replicator.sync.stop.StopRequest`) no run starts; running ones pause
  at their next acknowledged chunk and flush their journal
  (:func:`~replicator.sync.runner.run_copy`); :meth:`Watch.run` returns 0, or
  75 when a run was interrupted mid-way (its next start resumes it).
* **Reloading.**  :meth:`Watch.request_reload` (SIGHUP) reads the config file
  again.  A file that does not load (any problem, or a ``--job`` it no longer
  has) changes nothing: the watch logs why (``watch.reload_failed``) and goes on
  with the old jobs.  A loaded one takes effect at once: new jobs and jobs
  whose definition changed run now, a changed schedule starts from now,
  removed jobs stop being scheduled (a run in progress finishes), and new runs
  use a new target pool (:mod:`.watch_pools`).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from replicator.engine import LimitSettings
from replicator.engine.events import CopyObserver
from replicator.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    JournalError,
    LockedError,
    ReplicatorError,
)
from replicator.observe.logging import get_logger
from replicator.observe.metrics import JobFigures, ServiceMetrics, activated
from replicator.observe.metrics_http import Health
from replicator.sync.config import SyncConfig, SyncJob
from replicator.sync.expand import selected_jobs
from replicator.sync.locks import HeldLock, Holder, job_lock_path, locks_allowed, try_lock
from replicator.sync.request import JournalChoice
from replicator.sync.runner import MessageSink
from replicator.sync.schedule import Schedule, retry_time
from replicator.sync.service_figures import job_figures, limit_figures
from replicator.sync.stop import StopRequest
from replicator.sync.syncing import SyncOutcome, SyncRequest, run_sync
from replicator.sync.targets import TargetPool
from replicator.sync.watch_pools import PoolOpener, WatchPools

log = get_logger(__name__)

#: The scheduler looks at the clock at least this often (seconds): a clock
#: that jumps is noticed within it.
MAX_SLEEP = 30.0
#: How often the heartbeat (``/healthz``) and the registry counters are refreshed.
REFRESH_SECONDS = 2.0

ConfigLoader = Callable[[Path], SyncConfig]
OutcomeSink = Callable[[str, SyncOutcome], None]


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """What a watch runs: the config file, which of its jobs, and how each run copies.

    ``journal.fresh`` applies to each job's first run only.
    """

    config_path: Path
    jobs: tuple[str, ...] = ()
    journal: JournalChoice = field(default_factory=JournalChoice)
    limits: LimitSettings = field(default_factory=LimitSettings)
    chunk_size: int | None = None


@dataclass(slots=True)
class JobClock:
    """The scheduling state of one job."""

    name: str
    schedule: Schedule
    digest: str
    next_due: float
    failures: int = 0
    running: bool = False
    runs: int = 0
    #: The first tick was handled (a run ended, or the job was locked elsewhere).
    first_done: bool = False


class Watch:
    """Runs the jobs of a config on their schedules until stopped (see the module doc)."""

    def __init__(
        self,
        request: WatchRequest,
        config: SyncConfig,
        *,
        open_pool: PoolOpener,
        load: ConfigLoader,
        stop: StopRequest,
        metrics: ServiceMetrics | None = None,
        health: Health | None = None,
        observer: CopyObserver | None = None,
        on_outcome: OutcomeSink | None = None,
        on_message: MessageSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.request = request
        self.config = config
        self.stop = stop
        self.metrics = metrics or ServiceMetrics()
        self.health = health or Health()
        self._open_pool = open_pool
        self._load = load
        self._observer = observer
        self._on_outcome = on_outcome
        self._on_message = on_message
        self._clock = clock
        self._wake = anyio.Event()
        self._reload_wanted = False
        self._interrupted = False
        self._ready = False
        self.clocks: dict[str, JobClock] = {}
        self._pools: WatchPools | None = None

    # ------------------------------------------------------------ control

    def request_reload(self) -> None:
        """Read the config file again at the next chance (SIGHUP; event loop thread only)."""
        self._reload_wanted = True
        self._wake.set()

    @contextlib.contextmanager
    def reload_on_sighup(self) -> Iterator[None]:
        """Turn SIGHUP into :meth:`request_reload` while the block runs (where the loop can)."""
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    async def run(self) -> int:
        """Watch until stopped; 0, or 75 when a stop interrupted a run mid-way."""
        now = self._clock()
        self.clocks = {job.name: self._new_clock(job, now) for job in self._selected(self.config)}
        self.metrics.config_loaded(True, now, reload=False)
        self.health.not_ready = "first pass running"
        self._pools = WatchPools(self._open_pool, self.config)
        log.info(
            "watch.started",
            config=str(self.request.config_path),
            jobs={c.name: c.schedule.describe() for c in self.clocks.values()},
        )
        try:
            with activated(self.metrics):
                async with (
                    anyio.create_task_group() as runs,
                    anyio.create_task_group() as helpers,
                ):
                    helpers.start_soon(self._wake_on_stop)
                    helpers.start_soon(self._refresh)
                    await self._schedule(runs)
                    helpers.cancel_scope.cancel()
        finally:
            await self._pools.aclose()
        code = EXIT_INTERRUPTED if self._interrupted else EXIT_OK
        log.info("watch.stopped", exit_code=code)
        return code

    # ------------------------------------------------------------ scheduling

    def _selected(self, config: SyncConfig) -> list[SyncJob]:
        return selected_jobs(config, self.request.jobs)

    def _new_clock(self, job: SyncJob, now: float) -> JobClock:
        schedule = Schedule.of(cron=job.schedule, interval=job.interval, anchor=now)
        self.metrics.declare_job(job.name, schedule.period(now))
        self.metrics.job_state(job.name, running=False, next_run=now, failures=0)
        return JobClock(job.name, schedule, self.config.job_digests[job.name], next_due=now)

    async def _schedule(self, runs: anyio.abc.TaskGroup) -> None:
        while not self.stop.requested:
            if self._reload_wanted:
                self._reload_wanted = False
                await self._reload()
            now = self._clock()
            for clock in list(self.clocks.values()):
                self._tick(clock, now, runs)
            await self._sleep()

    def _tick(self, clock: JobClock, now: float, runs: anyio.abc.TaskGroup) -> None:
        """Start ``clock``'s job if it is due, or count the ticks it missed while running."""
        if clock.next_due > now:
            return
        if clock.running:
            for _ in range(10_000):
                if clock.next_due > now:
                    break
                self._skipped(clock, "running", previous_run="still running")
                clock.next_due = clock.schedule.next_tick(clock.next_due)
            self.metrics.job_state(clock.name, next_run=clock.next_due)
            return
        clock.next_due = clock.schedule.next_tick(now)
        clock.running = True
        self.metrics.job_state(clock.name, running=True, next_run=clock.next_due)
        runs.start_soon(self._run_job, clock, self.config)

    def _skipped(self, clock: JobClock, reason: str, **fields: object) -> None:
        self.metrics.record_skipped_tick(clock.name, reason)
        log.warning("watch.tick_skipped", job=clock.name, reason=reason, **fields)

    async def _sleep(self) -> None:
        now = self._clock()
        due = min((c.next_due for c in self.clocks.values()), default=now + MAX_SLEEP)
        with anyio.move_on_after(min(MAX_SLEEP, max(0.0, due - now))):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def _wake_on_stop(self) -> None:
        await self.stop.wait()
        log.info("watch.stopping", reason=self.stop.reasons[0], running=self._running_jobs())
        self._wake.set()

    def _running_jobs(self) -> list[str]:
        return [c.name for c in self.clocks.values() if c.running]

    async def _refresh(self) -> None:
        while True:
            self.health.alive()
            if self._pools is not None:
                self.metrics.set_registry_totals(self._pools.registry_totals())
            await anyio.sleep(REFRESH_SECONDS)

    # ------------------------------------------------------------ one run

    async def _run_job(self, clock: JobClock, config: SyncConfig) -> None:
        """One run of ``clock``'s job with ``config``: lock, sync, record, plan the next."""
        assert self._pools is not None
        lock = None if self.stop.requested else self._lock(clock)
        if lock is None:  # stopping, or another process runs the job
            self._run_over(clock)
            return
        pool = self._pools.lease()
        began, started = self._clock(), time.monotonic()
        outcome: SyncOutcome | None = None
        try:
            outcome = await run_sync(
                self._sync_request(clock, config),
                targets=pool,
                observer=self._observer,
                stop=self.stop,
                on_message=self._on_message,
            )
        except Exception as exc:  # a bug must not end the watch: the run failed, the job backs off
            log.error("watch.job_crashed", job=clock.name, error=_explain(exc))
        finally:
            lock.release()
            if self.clocks.get(clock.name) is not clock:
                pass  # removed by a reload meanwhile: nothing to record
            elif outcome is not None:
                self._record(clock, outcome, began, time.monotonic() - started, pool)
            else:
                now = self._clock()
                self._failed(clock, now)
                figures = JobFigures("failed", now, time.monotonic() - started)
                self.metrics.record_run(clock.name, figures)
            await self._pools.give_back(pool)
            self._run_over(clock)

    def _lock(self, clock: JobClock) -> HeldLock | None:
        """The job's lock, or None (the tick is skipped) when another process holds it."""
        journal = self.request.journal.path
        path = job_lock_path(journal, clock.name)
        try:
            if not locks_allowed(journal):
                raise JournalError(f"{journal} is not a replicator journal: no lock beside it")
            got = try_lock(path, Holder.me(self._command(clock)))
        except ReplicatorError as exc:
            log.error("watch.job_failed", job=clock.name, error=str(exc))
            self._failed(clock, self._clock())
            return None
        if isinstance(got, HeldLock):
            return got
        self._skipped(clock, "locked", holder=got.describe() if got else None, lock=str(path))
        return None

    def _command(self, clock: JobClock) -> tuple[str, ...]:
        return ("sync", str(self.request.config_path), f"--job={clock.name}", "--watch")

    def _sync_request(self, clock: JobClock, config: SyncConfig) -> SyncRequest:
        journal = self.request.journal
        if clock.runs > 0:
            journal = replace(journal, fresh=False)
        clock.runs += 1
        return SyncRequest(
            config=config,
            jobs=(clock.name,),
            journal=replace(journal, wait_lock=0.0),
            limits=self.request.limits,
            chunk_size=self.request.chunk_size,
            command=self._command(clock)[:-1],
        )

    def _record(
        self,
        clock: JobClock,
        outcome: SyncOutcome,
        began: float,
        duration: float,
        pool: TargetPool,
    ) -> None:
        """Metrics, log, next due time and the caller's callback for one finished run."""
        now = self._clock()
        run = outcome.run
        if run is not None and isinstance(run.error, LockedError):
            self._skipped(clock, "locked", holder=str(run.error))
            return
        fig = job_figures(outcome, finished=now, duration=duration)[clock.name]
        self.metrics.record_run(clock.name, fig)
        if run is not None:
            throttles, limits = limit_figures(run.throttle_events, run.report.limits, pool)
            self.metrics.record_limits(throttles, limits)
        if fig.result == "interrupted":
            if run is not None and run.report.jobs:
                self._interrupted = True
        elif fig.result == "failed":
            self._failed(clock, now)
        else:
            clock.failures = 0
        log.info(
            "watch.job_finished",
            job=clock.name,
            result=fig.result,
            exit_code=outcome.exit_code,
            seconds=round(duration, 3),
            graphs=fig.graphs,
            failures=clock.failures,
            next_run=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(clock.next_due)),
        )
        if self._on_outcome is not None:
            self._on_outcome(clock.name, outcome)

    def _failed(self, clock: JobClock, now: float) -> None:
        clock.failures += 1
        clock.next_due = min(clock.next_due, retry_time(clock.schedule, clock.failures, now))

    def _run_over(self, clock: JobClock) -> None:
        clock.running = False
        clock.first_done = True
        if self.clocks.get(clock.name) is clock:  # not removed by a reload meanwhile
            self.metrics.job_state(
                clock.name, running=False, next_run=clock.next_due, failures=clock.failures
            )
        if not self._ready and all(c.first_done for c in self.clocks.values()):
            self._ready = True
            self.health.not_ready = None
            log.info("watch.ready", jobs=len(self.clocks))
        self._wake.set()

    # ------------------------------------------------------------ reloading

    async def _reload(self) -> None:
        """Load the config file again; keep the old one when it does not load (module doc)."""
        now = self._clock()
        try:
            config = await anyio.to_thread.run_sync(self._load, self.request.config_path)
            jobs = self._selected(config)
        except ReplicatorError as exc:
            self.metrics.config_loaded(False, now, reload=True)
            log.error(
                "watch.reload_failed",
                config=str(self.request.config_path),
                error=str(exc),
                problems=list(exc.details),
                kept_jobs=sorted(self.clocks),
            )
            return
        old = self.clocks
        self.config = config
        self.clocks = {}
        changed: list[str] = []
        for job in jobs:
            clock = old.get(job.name)
            if clock is None:
                self.clocks[job.name] = self._new_clock(job, now)
                continue
            schedule = Schedule.of(cron=job.schedule, interval=job.interval, anchor=now)
            digest = config.job_digests[job.name]
            if digest != clock.digest and not clock.running:
                clock.next_due = now
                changed.append(job.name)
            elif (schedule.cron, schedule.interval) != (
                clock.schedule.cron,
                clock.schedule.interval,
            ):
                clock.next_due = schedule.next_tick(now)
                changed.append(job.name)
            clock.schedule, clock.digest = schedule, digest
            self.metrics.declare_job(job.name, schedule.period(now))
            self.clocks[job.name] = clock
        removed = sorted(set(old) - set(self.clocks))
        for name in removed:
            self.metrics.forget_job(name)
        if self._pools is not None:
            await self._pools.renew(config)
        self.metrics.config_loaded(True, now, reload=True)
        log.info(
            "watch.reloaded",
            config=str(self.request.config_path),
            added=sorted(set(self.clocks) - set(old)),
            removed=removed,
            changed=changed,
        )


def _explain(exc: BaseException) -> str:
    """``Type: message`` of the error behind ``exc`` (the first replicator error of a group)."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(exc)
    found = next(
        (e for e in leaves if isinstance(e, ReplicatorError)), leaves[0] if leaves else exc
    )
    return f"{type(found).__name__}: {found}"
