"""The graph copy engine: discovery, planning, transfer and commit, pipelined.

One :class:`CopyEngine` run copies any number of :class:`CopyJob` (a source root
and its destinations) with shared limits, a shared ledger and shared
deduplication.  This module wires the parts and owns the run's life cycle;
each part owns one policy:

* ``jobs.py`` — what a run is asked to do (endpoints, destinations, jobs, options);
* ``state.py`` — the run's typed tables (what is claimed, known, decided);
* ``context.py`` — what the parts share (failure policy, limits, abilities, stop);
* ``sources.py`` — source manifests and referrer listings, read once each;
* ``presence.py`` — whether a destination holds a manifest, at the least cost;
* ``nodes.py`` — the graph visitor: each node, pipelined, per destination;
* ``blobs.py`` — each blob made present once per destination (mount, probe, upload, fan-out);
* ``commit.py`` — manifests pushed children-first, referrers after their subject; repair;
* ``referrers.py`` — referrer walks: admission by ``subject``, filters, one index write;
* ``roots.py`` — a job from its root (platform filter) to its visit;
* ``tagging.py`` — tags last, only on a complete graph.

Guarantees of a run: manifests travel as their exact bytes and every byte is
verified; children are committed before their parents and a referrer after its
subject; a destination is tagged only when every node selected under the
job's root (children, blobs, referrers, recursively) is confirmed there, so a
failure never leaves a tag pointing at an incomplete graph; each source
manifest and blob is read once and each blob sent once per destination
registry, however many jobs name it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from functools import partial

import anyio

from replicator.engine.context import RunContext, run_bounded
from replicator.engine.events import CopyObserver, NullObserver
from replicator.engine.jobs import CopyJob, CopyOptions, DependencyFailed, Destination, Endpoint
from replicator.engine.ledger import DurableLedger, Ledger, MemoryLedger
from replicator.engine.limits import Limits, Signal
from replicator.engine.nodes import GraphVisitor
from replicator.engine.presence import Presence
from replicator.engine.report import OK_STATUSES, CopyReport, JobResult
from replicator.engine.roots import Deferred, JobRunner
from replicator.engine.sources import SourceReader
from replicator.engine.state import DestRepo
from replicator.engine.tagging import Tagger
from replicator.engine.trust import LedgerView, OverlayLedger
from replicator.errors import GateRefusedError, IncompleteCopyError, ReplicatorError
from replicator.targets.base import CountsRequests, Target

__all__ = [
    "CopyEngine",
    "CopyJob",
    "CopyOptions",
    "DependencyFailed",
    "Destination",
    "Endpoint",
    "first_root_error",
    "raise_for_report",
]


#: OCI error codes with which a destination refuses a write because something the
#: write names is missing there: where the ledger vouched for it, a contradiction.
CONTRADICTIONS = frozenset({"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "MANIFEST_UNKNOWN"})


class _Pass:
    """The parts of one pass over the jobs, sharing one context (fresh state)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        sources = SourceReader(ctx)
        presence = Presence(ctx)
        visitor = GraphVisitor(ctx, sources, presence)
        self.tagger = Tagger(ctx, presence)
        self.jobs = JobRunner(ctx, sources, presence, visitor, self.tagger)

    async def run(self, jobs: Sequence[CopyJob], results: list[JobResult]) -> None:
        """Visit every job, then tag those that waited for shared work."""
        deferred: list[Deferred] = []
        with anyio.CancelScope() as scope:
            self.ctx.cancel_scope = scope
            await run_bounded(
                (
                    partial(self.jobs.run, job, result, deferred)
                    for job, result in zip(jobs, results, strict=True)
                ),
                self.ctx.fanout,
            )
        for job, result, root in deferred:
            await self.tagger.finish_job(job, result, root, final=True)


class CopyEngine:
    """Runs copy jobs with shared limits, ledger and deduplication (see the module doc)."""

    def __init__(
        self,
        options: CopyOptions | None = None,
        *,
        ledger: Ledger | None = None,
        limits: Limits | None = None,
        observer: CopyObserver | None = None,
    ) -> None:
        self.options = options or CopyOptions()
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.limits = limits or Limits()
        self.observer: CopyObserver = observer or NullObserver()
        # A dry run reads the ledger but records nothing in it.
        inner: Ledger = OverlayLedger(self.ledger) if self.options.plan else self.ledger
        self._view = LedgerView(inner, distrust_all=self.options.deep_check)
        self._pass = _Pass(RunContext(self.options, self._view, self.limits, self.observer))
        self.report: CopyReport = self._pass.ctx.report
        self._root_error: ReplicatorError | None = None
        self._counters: dict[int, CountsRequests] = {}
        self._counts_before: dict[int, dict[str, int]] = {}

    # ------------------------------------------------------------------ stopping

    @property
    def stopping(self) -> bool:
        """True once :meth:`request_stop` was called."""
        return self._pass.ctx.stop.stopping

    def request_stop(self) -> None:
        """Stop taking new work (SIGTERM/SIGINT): a graceful stop, step one.

        No new blob upload starts, and every chunked upload in flight pauses at
        its next acknowledged chunk (its progress already recorded in the
        ledger), so a rerun resumes it without sending any byte twice.  Wait
        for :meth:`wait_quiet`, then cancel the run (:meth:`cancel`).
        """
        self._pass.ctx.stop.request()

    async def wait_quiet(self) -> None:
        """Return once no upload is between two acknowledged chunks (after :meth:`request_stop`)."""
        await self._pass.ctx.stop.wait_quiet()

    def cancel(self) -> None:
        """Cancel the running :meth:`run` (it returns its partial report)."""
        if self._pass.ctx.cancel_scope is not None:
            self._pass.ctx.cancel_scope.cancel()

    @property
    def root_error(self) -> ReplicatorError | None:
        """The first error met reading a job's root, if any."""
        return self._root_error or self._pass.jobs.root_error

    # ------------------------------------------------------------------ run

    async def run(self, jobs: Sequence[CopyJob]) -> CopyReport:
        """Copy every job; return the report (never raises for copy failures).

        An engine runs once: its deduplication tables and report belong to that run.

        Without ``keep_going`` the first failure stops the run; either way the
        report says which jobs completed.  Use :func:`raise_for_report` to turn an
        incomplete run into the documented error.

        When a destination contradicts what the ledger inherited from an earlier
        attempt (a write refused because something the journal recorded there is
        missing), the jobs that did not complete get one more pass in the same
        run, with the ledger's inherited records of those repositories distrusted
        (see :mod:`replicator.engine.trust`).
        """
        started = time.monotonic()
        results = [
            JobResult(source=j.display, destinations=[d.display for d in j.destinations])
            for j in jobs
        ]
        self.report.jobs = results
        self._register_targets(jobs)
        await self._pass.run(jobs, results)
        contradicted = self._contradicted()
        if contradicted and not self.stopping:
            await self._repair_pass(jobs, results, contradicted)
        if isinstance(self.ledger, DurableLedger) and not self.options.plan:
            # The run's confirmations are committed before it returns: whoever
            # reads the journal next (leftover upload sessions) sees them all.
            with contextlib.suppress(ReplicatorError):
                await self.ledger.flush()
        for result in results:
            if result.status == "pending":
                result.status = "failed"
                result.error = result.error or "stopped before completion"
        self.report.wall_time = round(time.monotonic() - started, 3)
        self.report.limits = self.limits.snapshot()
        self._collect_requests()
        return self.report

    def _contradicted(self) -> set[DestRepo]:
        """Destination repositories that refused a write the inherited ledger vouched for."""
        refused = {
            DestRepo(c.registry, c.repository)
            for c in self.report.causes
            if c.code in CONTRADICTIONS and c.registry and c.repository is not None
        }
        return refused & self._view.inherited_used

    async def _repair_pass(
        self, jobs: Sequence[CopyJob], results: list[JobResult], repos: set[DestRepo]
    ) -> None:
        """Run the jobs that did not complete again, distrusting the ledger in ``repos``."""
        for repo in repos:
            self._view.distrust(repo)
        first = self.report
        self._root_error = self._pass.jobs.root_error
        again = [
            (j, r)
            for j, r in zip(jobs, results, strict=True)
            if r.status not in OK_STATUSES and r.status != "refused"
        ]
        retry_results = [
            JobResult(source=j.display, destinations=[d.display for d in j.destinations])
            for j, _ in again
        ]
        where = ", ".join(sorted(f"{r.location}/{r.repository}" for r in repos))
        for message in first.failures:
            first.warnings.append(f"repaired in the same run: {message}")
        first.warnings.append(
            f"{where} lost content the journal had recorded there: its records are not "
            "trusted in this run, and what is missing is copied again"
        )
        first.failures.clear()
        first.causes.clear()
        ctx = RunContext(self.options, self._view, self.limits, self.observer, report=first)
        ctx.signals.update(self._pass.ctx.signals)
        ctx.stop = self._pass.ctx.stop
        self._pass = _Pass(ctx)
        await self._pass.run([j for j, _ in again], retry_results)
        for (_, old), new in zip(again, retry_results, strict=True):
            index = results.index(old)
            results[index] = new
        first.jobs = results

    def _register_targets(self, jobs: Sequence[CopyJob]) -> None:
        """Note every target's request counter (before the run) and its retry signal."""
        ctx = self._pass.ctx
        for j in jobs:
            for e in (j.source, *(d.endpoint for d in j.destinations)):
                counter = ctx.abilities(e.target).request_counter
                if counter is None:
                    continue
                if id(e.target) not in self._counters:
                    self._counters[id(e.target)] = counter
                    self._counts_before[id(e.target)] = counter.stats.as_dict()
                ctx.signals[e.location] = _retry_signal(counter)

    def _collect_requests(self) -> None:
        """Requests each target made during this run (its counters' increase)."""
        retries = 0
        for key, counter in self._counters.items():
            before = self._counts_before.get(key, {})
            counts = {k: v - before.get(k, 0) for k, v in counter.stats.as_dict().items()}
            if counts:
                self.report.requests[_display(counter)] = counts
                retries += counts.get("retries", 0)
        self.report.retries = retries


def _display(counter: CountsRequests) -> str:
    return counter.display if isinstance(counter, Target) else type(counter).__name__


def _retry_signal(counter: CountsRequests) -> Signal:
    """A counter of the target's retried requests (429/503/5xx/network)."""

    def signal() -> int:
        return counter.stats.retries

    return signal


def raise_for_report(report: CopyReport, root_error: ReplicatorError | None = None) -> None:
    """Raise the documented error unless every job completed.

    A run whose only failures are roots that could not be read re-raises that
    error (exit 3 for an unknown source, 4 for auth...); anything else is an
    :class:`IncompleteCopyError` naming the most severe failure and exiting with
    its code (:data:`~replicator.engine.report.SEVERITY`: a wrong password is 4,
    content that does not verify 6, a partial copy without a more specific
    cause 9); the report lists every cause.
    """
    if report.ok:
        return
    failed = [j for j in report.jobs if j.status not in OK_STATUSES]
    if root_error is not None and all(j.source_digest is None for j in failed):
        raise root_error
    if failed and not report.failures and all(j.status == "refused" for j in failed):
        raise GateRefusedError(
            f"{len(failed)} of {len(report.jobs)} job(s) refused by the promotion gate; "
            f"first: {failed[0].error}"
        )
    cause = report.most_severe_cause()
    what: str | None
    if cause is not None:
        what = cause.message
    else:
        what = report.failures[0] if report.failures else (failed[0].error if failed else "unknown")
    error = IncompleteCopyError(
        f"copy incomplete: {len(failed)} of {len(report.jobs)} job(s) did not complete; "
        f"{'cause' if len(report.causes) < 2 else 'most severe cause'}: {what}"
    )
    error.exit_code = report.exit_code
    raise error


def first_root_error(engine: CopyEngine) -> ReplicatorError | None:
    """The first error met reading a job's root (for :func:`raise_for_report`)."""
    return engine.root_error
