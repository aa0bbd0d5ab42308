"""The run layer's entry point: :func:`run_copy` runs one :class:`RunRequest` to its end.

One call does what a copy run is: expand the jobs (list the tags of repository
jobs), open the journal and begin or resume the run, run the
:class:`~replicator.engine.CopyEngine` with a graceful stop, then settle the
journal (state, figures, leftover upload sessions), compose the outcome and
write the JSON report.

Guarantees:

* It returns a :class:`~replicator.sync.outcome.RunOutcome` for every
  :class:`~replicator.errors.ReplicatorError`, whenever it happens (the error
  and its exit code are in the outcome); only a bug or a cancellation from
  outside raises, after the journal run is marked and the report written.
* The report is written whatever ends the run (``request.report_path``), with
  the attempt's true figures: wall time and requests even when the engine was
  cancelled, and the bytes destinations acknowledged for uploads left unfinished.
* A journal that fails mid-run ends the run as a journal failure
  (:class:`~replicator.errors.JournalError`, exit 8), not as a destination's.
* Messages for the user are logged as ``run.*`` events and handed to
  ``on_message`` as they arise (``Resuming run ...`` before the copy starts);
  they never go to stdout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from replicator.engine import (
    CopyEngine,
    CopyJob,
    CopyReport,
    Limits,
    MemoryLedger,
    raise_for_report,
)
from replicator.engine.events import CopyObserver
from replicator.engine.limits import Kind
from replicator.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    JournalError,
    ReplicatorError,
)
from replicator.journal.store import DONE, FAILED, INTERRUPTED
from replicator.observe.logging import get_logger
from replicator.sync.figures import AttemptFigures, job_states
from replicator.sync.jobs import expand_jobs
from replicator.sync.journal_run import JournalRun, SourceMoved
from replicator.sync.ledger import AttemptLedger
from replicator.sync.locks import HeldLock, lock_run
from replicator.sync.outcome import Message, MessageKind, RunOutcome, write_report
from replicator.sync.request import RunRequest
from replicator.sync.stop import StopRequest
from replicator.sync.targets import TargetPool

log = get_logger(__name__)

#: How long a graceful stop waits for uploads to reach a chunk boundary.
STOP_GRACE_SECONDS = 30.0
#: How long a stopped engine may take to wind down before it is cancelled outright.
WIND_DOWN_SECONDS = 10.0
#: How often the sources a run resolved are written to the journal while it runs.
SOURCE_POLL_SECONDS = 1.0

MessageSink = Callable[[Message], None]


async def run_copy(
    request: RunRequest,
    *,
    targets: TargetPool,
    observer: CopyObserver | None = None,
    stop: StopRequest | None = None,
    on_message: MessageSink | None = None,
    before_network: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run ``request`` to its end and return its outcome (see the module doc).

    ``targets`` opens (and later closes: the caller's pool) the stores the jobs
    name.  ``observer`` receives the engine's progress.  ``stop`` lets the
    caller stop the run (:class:`StopRequest`).  ``on_message`` receives every
    message for the user when it arises.  ``before_network`` is called once,
    when the run's set-up is over and before its first network request.
    """
    run = _Run(request, targets, observer, stop or StopRequest(), on_message, before_network)
    return await run.execute()


class _Run:
    """One call of :func:`run_copy`."""

    def __init__(
        self,
        request: RunRequest,
        targets: TargetPool,
        observer: CopyObserver | None,
        stop: StopRequest,
        on_message: MessageSink | None,
        before_network: Callable[[], None] | None,
    ) -> None:
        self.request = request
        self.targets = targets
        self.observer = observer
        self.stop = stop
        self.on_message = on_message
        self._before_network = before_network
        self.messages: list[Message] = []
        self.moved: list[SourceMoved] = []
        self.journal: JournalRun | None = None
        self.started = time.monotonic()

    # ------------------------------------------------------------ messages

    def say(
        self, kind: MessageKind, text: str, event: str, *, logged: bool = True, **fields: Any
    ) -> None:
        """Give the user a message: logged as ``event``, kept, handed to ``on_message``."""
        if logged:
            emit = log.warning if kind == "warning" else log.info
            emit(event, message=text, **fields)
        message = Message(kind, text, event)
        self.messages.append(message)
        if self.on_message is not None:
            self.on_message(message)

    def network_starts(self) -> None:
        """Call ``before_network`` the first time only."""
        hook, self._before_network = self._before_network, None
        if hook is not None:
            hook()

    # ------------------------------------------------------------ the run

    async def execute(self) -> RunOutcome:
        """Lock, expand, journal, copy, conclude."""
        try:
            lock = await self._lock()
        except ReplicatorError as exc:  # LockedError (exit 11), or no lock file (exit 8)
            return self._ended_early(exc)
        try:
            if self.stop.requested:  # while waiting for the lock
                return self._ended_early(None)
            return await self._execute()
        finally:
            if lock is not None:
                lock.release()

    async def _lock(self) -> HeldLock | None:
        """Hold the run's lock beside its journal (:func:`.locks.lock_run`); None without one."""
        request = self.request
        return await lock_run(
            request.journal, request.key(), request.command, lambda: self.stop.requested
        )

    async def _execute(self) -> RunOutcome:
        try:
            jobs = await self._expand()
        except ReplicatorError as exc:
            return self._ended_early(exc)
        if jobs is None:
            return self._ended_early(None)
        if not jobs:
            return self._nothing_to_copy()
        try:
            self.journal = await JournalRun.begin(
                self.request.journal, self.request.key(), self.request.command
            )
        except JournalError as exc:
            return self._ended_early(exc)
        try:
            return await self._copy(jobs)
        finally:
            if self.journal is not None:
                await self.journal.close()

    async def _expand(self) -> list[CopyJob] | None:
        """The engine jobs; None when a stop came first (tag listings are cancelled)."""
        jobs: list[CopyJob] | None = None
        error: ReplicatorError | None = None
        async with anyio.create_task_group() as tg:

            async def cancel_on_stop() -> None:
                await self.stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_stop)
            try:
                jobs = await expand_jobs(self.request.jobs, self.targets, self.network_starts)
            except ReplicatorError as exc:  # raised here, not wrapped in the group
                error = exc
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return None if self.stop.requested else jobs

    def _ended_early(self, error: ReplicatorError | None) -> RunOutcome:
        """The outcome of a run that never started its copy: an error, or a stop (None)."""
        report = CopyReport(wall_time=round(time.monotonic() - self.started, 3))
        if error is None:
            outcome = RunOutcome(report, "interrupted", EXIT_INTERRUPTED)
            self.say(
                "info",
                "Interrupted before the copy started: nothing was copied",
                "run.interrupted",
            )
        else:
            outcome = RunOutcome(report, "failed", error.exit_code, error=error)
            log.debug("run.failed", error=str(error), exit_code=error.exit_code)
        outcome.messages = self.messages
        self._write_report(outcome)
        return outcome

    def _nothing_to_copy(self) -> RunOutcome:
        """The outcome of a run whose repositories have no tags: up to date, nothing done."""
        report = CopyReport(wall_time=round(time.monotonic() - self.started, 3))
        outcome = RunOutcome(report, "up-to-date", EXIT_OK, messages=self.messages)
        self._write_report(outcome)
        return outcome

    async def _copy(self, jobs: list[CopyJob]) -> RunOutcome:
        """Run the engine over ``jobs`` under the graceful stop; conclude."""
        self._announce_journal()
        inner = self.journal.ledger if self.journal is not None else MemoryLedger()
        ledger = AttemptLedger(inner)
        limits = Limits(self.request.limits)
        engine = CopyEngine(
            self.request.options, ledger=ledger, limits=limits, observer=self.observer
        )
        figures = AttemptFigures(self.targets, limits)
        try:
            interrupted = await self._drive(engine, jobs)
        except BaseException as exc:
            if not self._journal_failed_under(exc):
                with anyio.CancelScope(shield=True):
                    await self._abandon(engine.report, ledger, figures, exc)
                raise
            interrupted = False
        return await self._conclude(engine, jobs, ledger, figures, interrupted)

    def _journal_failed_under(self, exc: BaseException) -> bool:
        """True when ``exc`` came out of the engine because the journal stopped writing."""
        if self.journal is None or self.journal.write_error is None:
            return False
        if not isinstance(exc, Exception):
            return False
        log.debug("run.engine_failed_with_journal", error=repr(exc))
        return True

    def _announce_journal(self) -> None:
        journal = self.journal
        if journal is None:
            return
        warning = journal.set_aside_warning
        if warning is not None:
            self.say("warning", warning, "journal.set_aside", logged=False)
        if journal.resumed:
            entries, uploads = journal.ledger.resumed_entries, journal.ledger.resumed_uploads
            detail = f"{entries} confirmation(s) journalled"
            if uploads:
                detail += f", {uploads} upload(s) in flight"
            self.say(
                "info",
                f"Resuming run {journal.run_id} ({detail})",
                "run.resumed",
                run=journal.run_id,
                confirmations=entries,
                uploads=uploads,
            )

    async def _drive(self, engine: CopyEngine, jobs: Sequence[CopyJob]) -> bool:
        """Run the engine; True when a stop request interrupted it."""
        if self.stop.requested:
            return True
        interrupted = False
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as hard:

                async def watch() -> None:
                    nonlocal interrupted
                    await self.stop.wait()
                    interrupted = True
                    await self._stop_engine(engine, hard)

                tg.start_soon(watch)
                if self.journal is not None:
                    tg.start_soon(self._watch_sources, engine.report)
                self.network_starts()
                await engine.run(jobs)
            tg.cancel_scope.cancel()
        return interrupted

    async def _stop_engine(self, engine: CopyEngine, hard: anyio.CancelScope) -> None:
        """Graceful stop: pause uploads at a chunk boundary, cancel the engine, then wind down."""
        log.warning("run.stopping", reason=self.stop.reasons[0])
        engine.request_stop()
        with anyio.move_on_after(STOP_GRACE_SECONDS):
            async with anyio.create_task_group() as first:

                async def second_request() -> None:
                    await self.stop.wait(2)
                    first.cancel_scope.cancel()

                async def quiet() -> None:
                    await engine.wait_quiet()
                    first.cancel_scope.cancel()

                first.start_soon(second_request)
                first.start_soon(quiet)
        engine.cancel()  # the engine's run returns its partial report
        with anyio.move_on_after(WIND_DOWN_SECONDS):
            await self.stop.wait(2)
        hard.cancel()

    async def _watch_sources(self, report: CopyReport) -> None:
        """Record the sources the run resolved, once a second (a SIGKILL loses at most that)."""
        while True:
            await anyio.sleep(SOURCE_POLL_SECONDS)
            self._note_sources(report)

    def _note_sources(self, report: CopyReport) -> None:
        if self.journal is None:
            return
        found = [(j.source, digest) for j in report.jobs if (digest := j.source_digest)]
        for moved in self.journal.note_sources(found):
            if all(m.source != moved.source for m in self.moved):
                self.moved.append(moved)
                self.say(
                    "warning",
                    f"{moved.source} now points to {moved.now}, not to {moved.was} as when "
                    f"run {self.journal.run_id} began: this run copies {moved.now}",
                    "run.source_moved",
                    source=moved.source,
                    was=moved.was,
                    now=moved.now,
                )

    # ------------------------------------------------------------ the end

    async def _conclude(
        self,
        engine: CopyEngine,
        jobs: Sequence[CopyJob],
        ledger: AttemptLedger,
        figures: AttemptFigures,
        interrupted: bool,
    ) -> RunOutcome:
        """Settle the journal, compose the outcome, write the report."""
        report = engine.report
        unfinished = figures.complete(report, ledger)
        self._note_sources(report)
        report.warnings.extend(m.text for m in self.messages if m.event == "run.source_moved")
        finished = bool(report.jobs) and report.ok  # a stop before the engine ran leaves no jobs
        outcome = self._verdict(engine, report, interrupted and not finished)
        outcome.unfinished_upload_bytes = unfinished
        outcome.throttle_events = throttle_events(figures.limits)
        outcome.job_states = job_states(jobs, report, ledger)
        if outcome.ok and all(s in ("up-to-date", "kept") for s in outcome.job_states):
            outcome.status = "up-to-date"
        await self._settle_journal(outcome)
        for warning in report.warnings:
            if all(m.text != warning for m in self.messages):
                self.say("warning", warning, "run.warning", logged=False)
        if outcome.status == "interrupted":
            self._say_interrupted()
        outcome.messages = self.messages
        self._write_report(outcome)
        log.debug(
            "run.finished",
            status=outcome.status,
            exit_code=outcome.exit_code,
            run=outcome.run_id,
            resumed=outcome.resumed,
        )
        return outcome

    def _verdict(self, engine: CopyEngine, report: CopyReport, interrupted: bool) -> RunOutcome:
        """Status, exit code and error of a run whose engine returned."""
        journal = self.journal
        outcome = RunOutcome(report, "copied", EXIT_OK)
        if journal is not None:
            outcome.run_id, outcome.resumed = journal.run_id, journal.resumed
            outcome.journal = journal.journal.path
            outcome.sources_moved = list(self.moved)
        if journal is not None and journal.write_error is not None:
            error: ReplicatorError = JournalError(
                f"the journal {journal.journal.path} failed during the run "
                f"({journal.write_error}); the copy stopped. Rerun the same command to "
                "resume from what was journalled"
            )
            outcome.status, outcome.exit_code, outcome.error = "failed", error.exit_code, error
        elif interrupted:
            outcome.status, outcome.exit_code = "interrupted", EXIT_INTERRUPTED
        elif not report.ok:
            try:
                raise_for_report(report, engine.root_error)
            except ReplicatorError as exc:
                outcome.status, outcome.exit_code, outcome.error = "failed", exc.exit_code, exc
        return outcome

    async def _settle_journal(self, outcome: RunOutcome) -> None:
        """Mark the journal run; cancel the leftover upload sessions of a completed one."""
        journal = self.journal
        if journal is None:
            return
        report = outcome.report
        if outcome.ok:
            await journal.cancel_leftover_uploads(self.targets)
            await journal.finish(DONE, report, bytes_sent=report.bytes_sent, error=None)
        elif outcome.status == "interrupted":
            reason = f"interrupted ({self.stop.reasons[0]})" if self.stop.reasons else "interrupted"
            await journal.finish(INTERRUPTED, report, bytes_sent=report.bytes_sent, error=reason)
        else:
            first = report.failures[0] if report.failures else str(outcome.error or "incomplete")
            await journal.finish(FAILED, report, bytes_sent=report.bytes_sent, error=first)

    def _say_interrupted(self) -> None:
        journal = self.journal
        if journal is not None:
            where = f"run {journal.run_id}, journal {journal.journal.path}"
        else:
            where = "no journal: --no-journal was given, a rerun starts over"
        self.say(
            "info", f"Interrupted: rerun the same command to resume ({where})", "run.interrupted"
        )

    async def _abandon(
        self, report: CopyReport, ledger: AttemptLedger, figures: AttemptFigures, exc: BaseException
    ) -> None:
        """A bug or an outside cancellation ended the run: leave what is known behind."""
        figures.complete(report, ledger)
        if self.journal is not None:
            state = INTERRUPTED if _is_cancellation(exc) else FAILED
            with contextlib.suppress(ReplicatorError):
                await self.journal.finish(
                    state,
                    report,
                    bytes_sent=report.bytes_sent,
                    error=str(exc) or type(exc).__name__,
                )
        outcome = RunOutcome(report, "failed", 1, messages=self.messages)
        with contextlib.suppress(Exception):
            self._write_report(outcome)

    def _write_report(self, outcome: RunOutcome) -> None:
        path = self.request.report_path
        if path is None:
            return
        try:
            write_report(path, outcome)
        except ReplicatorError as exc:
            if outcome.error is None:
                outcome.error, outcome.exit_code = exc, exc.exit_code


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, (anyio.get_cancelled_exc_class(), KeyboardInterrupt))


def throttle_events(limits: Limits) -> dict[str, int]:
    """How often each limiter of the run halved its limit (AIMD): ``"location/kind" -> n``."""
    out: dict[str, int] = {}
    kinds: tuple[Kind, ...] = ("meta", "blob")
    for key in limits.snapshot():
        location, named = key.rsplit("/", 1)
        for kind in kinds:
            if named == kind:
                out[key] = limits.limiter(location, kind).decreases
    return out
