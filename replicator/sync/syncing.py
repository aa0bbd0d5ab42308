"""``sync`` and ``verify`` of a config file, as functions of the run layer.

:func:`run_sync` expands the config's jobs (:mod:`replicator.sync.expand`) and
runs them all in **one** run of the engine (:func:`~replicator.sync.runner.run_copy`):
shared limits, shared deduplication, one journal run whose key is the digest of
the selected jobs' definitions (an edited job starts a new run; a rerun of the
same config resumes).  One job's failure does not stop the others
(``keep_going``).  By default a destination's presence is trusted where it
vouches for it (a tag on the root, a present index for its children, a
subject's referrers listing); ``deep`` asks about every manifest and every
blob instead, so a sync repairs everything ``verify --deep`` reports.  With ``dry_run`` nothing is written anywhere: the engine
plans (``CopyOptions.plan``), the journal is not used, and the outcome's report
lists every write the run would make.

:func:`run_verify` audits without writing: the same expansion (immutable tags
included), then a dry run that asks the destinations about every manifest
(``deep_check``) and, with ``deep``, every blob of the manifests they hold; every
write it would make is a difference (:mod:`replicator.engine.audit`).

After the copy, jobs with ``prune.enabled`` prune what left their source
(:mod:`replicator.sync.prune`; a dry run only plans it): the outcome's
``prunes`` has one :class:`~replicator.sync.prune.JobPrune` per such job, in
the JSON report under each job's ``prune``.  ``rate_limit_pauses`` says, per
host, how often a quota pause (``limits.min-remaining``) held this sync back.

Exit codes: a run's own (0; 9 when something selected is missing at a
destination; 10 when a promotion gate refused a graph; the code of the most
severe failure otherwise), combined with the jobs' listing failures and their
pruning (10 when a prune was refused above ``prune.max``; a failed prune's
error code).  ``verify`` exits 9 when it found a difference.

With a :class:`~replicator.sync.shard.Shard` (``--shard I/N``) both handle only
the source repositories that shard owns; a sync's run key and journal file are
the shard's own (:mod:`replicator.sync.shard`), and the report's ``shard``
section says which shard ran and how many repositories it left to the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from replicator.engine import CopyOptions, LimitSettings
from replicator.engine.audit import Difference, differences
from replicator.engine.events import CopyObserver
from replicator.engine.report import CopyReport, most_severe
from replicator.errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_REFUSED, InputError
from replicator.observe.logging import get_logger
from replicator.oci.reference import Reference
from replicator.sync.config import SyncConfig
from replicator.sync.expand import Expansion, JobPlan, expand, selected_jobs
from replicator.sync.jobs import ReferenceJob
from replicator.sync.mapping import describe_destination
from replicator.sync.outcome import JobState, RunOutcome
from replicator.sync.pauses import QuotaPauses
from replicator.sync.prune import JobPrune, prune_jobs
from replicator.sync.request import JournalChoice, RunRequest
from replicator.sync.runner import MessageSink, run_copy
from replicator.sync.shard import Shard
from replicator.sync.stop import StopRequest
from replicator.sync.targets import TargetPool
from replicator.targets.base import Target
from replicator.targets.memory import MemoryTarget

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """One ``sync`` of a config: which jobs, dry run or not, journal, limits, report."""

    config: SyncConfig
    jobs: tuple[str, ...] = ()
    dry_run: bool = False
    journal: JournalChoice = field(default_factory=JournalChoice)
    limits: LimitSettings = field(default_factory=LimitSettings)
    chunk_size: int | None = None
    report_path: Path | None = None
    command: tuple[str, ...] = ()
    #: Ask the destinations about every manifest and every blob of the manifests
    #: they hold (as ``verify --deep`` does) and copy again what is missing.
    deep: bool = False
    #: Only this shard's source repositories (``--shard I/N``); None: all of them.
    shard: Shard | None = None


@dataclass(slots=True)
class SyncOutcome:
    """What a sync (or verify) ended with: the expansion, the run, differences, the exit code."""

    expansion: Expansion
    run: RunOutcome | None
    exit_code: int
    dry_run: bool = False
    differences: list[Difference] = field(default_factory=list)
    #: One per job with ``prune.enabled`` (see :mod:`replicator.sync.prune`).
    prunes: list[JobPrune] = field(default_factory=list)
    #: ``host -> {"pauses", "paused_ms"}``: quota pauses during this sync.
    rate_limit_pauses: dict[str, dict[str, int]] = field(default_factory=dict)
    shard: Shard | None = None

    @property
    def shard_counts(self) -> tuple[int, int]:
        """``(here, elsewhere)``: source repositories this shard handled and left to the others."""
        here = sum(len(p.repositories) for p in self.expansion.jobs)
        return here, sum(len(p.other_shards) for p in self.expansion.jobs)

    @property
    def report(self) -> CopyReport | None:
        """The engine's report of the run (None when no job had a tag to copy)."""
        return None if self.run is None else self.run.report

    def job_results(self, name: str) -> list[tuple[int, Any]]:
        """``(index, JobResult)`` of the run's jobs that belong to config job ``name``."""
        if self.run is None:
            return []
        return [(i, r) for i, r in enumerate(self.run.report.jobs) if r.name == name]

    def state(self, index: int) -> JobState:
        """What run job ``index`` did to its own graph (in a dry run: would do).

        ``copied`` when it pushed a manifest of its graph, wrote one of its tags
        or kept a backup anywhere; ``up-to-date`` when it changed nothing;
        otherwise the run's state (``kept``, ``refused``, ``failed``).  Unlike the
        run layer's state, another job writing to the same destination
        repository does not make this one ``copied``, and a dry run says what
        the real run would do.
        """
        if self.run is None:
            return "failed"
        state = self.run.job_state(index)
        if state not in ("copied", "up-to-date"):
            return state
        result = self.run.report.jobs[index]
        changed = result.new_manifests or result.tags_moved or result.backups
        return "copied" if changed else "up-to-date"

    def to_json(self) -> dict[str, Any]:
        """The JSON report: a section per job, then the run's own report."""
        out: dict[str, Any] = {
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "jobs": {plan.name: self._job_json(plan) for plan in self.expansion.jobs},
        }
        if self.shard is not None:
            out["shard"] = self.shard.to_json(*self.shard_counts)
        if self.differences:
            out["differences"] = [
                {
                    "kind": d.kind,
                    "destination": d.destination,
                    "digest": d.digest,
                    "detail": d.detail,
                }
                for d in self.differences
            ]
        for prune in self.prunes:
            out["jobs"][prune.name]["prune"] = prune.to_json()
        if self.rate_limit_pauses:
            out["rate_limit_pauses"] = self.rate_limit_pauses
        if self.run is not None:
            out["run"] = self.run.to_json()
            for index, job in enumerate(out["run"]["jobs"]):
                job["status"] = self.state(index)
            if self.dry_run:
                out["bytes_to_move"] = self.run.report.planned_bytes
        return out

    def _job_json(self, plan: JobPlan) -> dict[str, Any]:
        results = []
        for index, result in self.job_results(plan.name):
            state = self.state(index)
            results.append(
                {
                    "source": result.source,
                    "destinations": result.destinations,
                    "status": state,
                    "digest": result.digest,
                    "root_new": result.root_new,
                    "new_manifests": result.new_manifests,
                    "new_referrers": result.new_referrers,
                    "tags_moved": result.tags_moved,
                    "kept": result.kept,
                    "backups": result.backups,
                    "refused": result.refused,
                    "error": result.error,
                }
            )
        return {
            "error": None if plan.error is None else str(plan.error),
            "catalog": [
                {"repository": d.repository, "selected": d.selected, "reason": d.reason}
                for d in plan.catalog
            ],
            "repositories": [
                {
                    "source": str(repo.source),
                    "destinations": [describe_destination(d) for d in repo.destinations],
                    "tags": [
                        {"tag": d.tag, "selected": d.selected, "reason": d.reason}
                        for d in repo.decisions
                    ],
                    "immutable_skipped": [
                        {"tag": t, "destination": where} for t, where in repo.immutable_skipped
                    ],
                }
                for repo in plan.repositories
            ],
            "results": results,
            "other_shards": len(plan.other_shards),
        }


def definition(config: SyncConfig, names: Sequence[str]) -> dict[str, str]:
    """What names the run in the journal: the digest of each selected job's definition."""
    return {job.name: config.job_digests[job.name] for job in selected_jobs(config, names)}


def run_definition(
    command: str, config: SyncConfig, names: Sequence[str], shard: Shard | None
) -> dict[str, Any]:
    """The run key's definition: the jobs' digests, and the shard when there is one."""
    out: dict[str, Any] = {command: definition(config, names)}
    if shard is not None:
        out["shard"] = shard.definition()
    return out


async def run_sync(
    request: SyncRequest,
    *,
    targets: TargetPool,
    observer: CopyObserver | None = None,
    stop: StopRequest | None = None,
    on_message: MessageSink | None = None,
    before_network: Callable[[], None] | None = None,
) -> SyncOutcome:
    """Sync the request's jobs (see the module doc)."""
    if before_network is not None:
        before_network()
    pauses = QuotaPauses(targets)
    if request.dry_run:
        targets = WritesNothingPool(targets)
    expansion = await expand(request.config, request.jobs, targets, shard=request.shard)
    _log_shard(request.shard, expansion)
    run: RunOutcome | None = None
    if expansion.reference_jobs:
        options = CopyOptions(
            keep_going=True,
            chunk_size=request.chunk_size,
            plan=request.dry_run,
            deep_check=request.deep,
            check_blobs=request.deep,
        )
        journal = (
            request.journal if request.shard is None else request.shard.journal(request.journal)
        )
        run_request = RunRequest(
            jobs=tuple(expansion.reference_jobs),
            options=options,
            limits=request.limits,
            journal=JournalChoice.off() if request.dry_run else journal,
            command=request.command,
            definition=run_definition("sync", request.config, request.jobs, request.shard),
        )
        run = await run_copy(
            run_request, targets=targets, observer=observer, stop=stop, on_message=on_message
        )
    outcome = SyncOutcome(
        expansion, run, _exit_code(expansion, run), dry_run=request.dry_run, shard=request.shard
    )
    outcome.prunes = await prune_jobs(
        request.config, expansion, run, targets, dry_run=request.dry_run
    )
    outcome.exit_code = _with_prunes(outcome.exit_code, outcome.prunes)
    outcome.rate_limit_pauses = pauses.since()
    if request.report_path is not None:
        write_sync_report(request.report_path, outcome)
    return outcome


async def run_verify(
    config: SyncConfig,
    names: Sequence[str] = (),
    *,
    targets: TargetPool,
    deep: bool = False,
    limits: LimitSettings | None = None,
    report_path: Path | None = None,
    on_message: MessageSink | None = None,
    shard: Shard | None = None,
) -> SyncOutcome:
    """Audit the jobs ``names`` (all when empty) of ``config`` without writing (see the module doc)."""
    targets = WritesNothingPool(targets)
    expansion = await expand(config, names, targets, honour_immutable=False, shard=shard)
    _log_shard(shard, expansion)
    run: RunOutcome | None = None
    found: list[Difference] = []
    if expansion.reference_jobs:
        jobs = tuple(_audited(job) for job in expansion.reference_jobs)
        options = CopyOptions(keep_going=True, plan=True, deep_check=True, check_blobs=deep)
        run_request = RunRequest(
            jobs=jobs,
            options=options,
            limits=limits or LimitSettings(),
            journal=JournalChoice.off(),
            definition=run_definition("verify", config, names, shard),
        )
        run = await run_copy(run_request, targets=targets, on_message=on_message)
        found = differences(run.report)
    # A tag the promotion gate refuses is not meant to be at the destination.
    code = _exit_code(expansion, run, ignore=(EXIT_REFUSED,))
    if code == 0 and found:
        code = EXIT_INCOMPLETE
    outcome = SyncOutcome(expansion, run, code, dry_run=True, differences=found, shard=shard)
    if report_path is not None:
        write_sync_report(report_path, outcome)
    return outcome


def _log_shard(shard: Shard | None, expansion: Expansion) -> None:
    if shard is not None:
        log.info(
            "sync.shard_selected",
            shard=shard.label,
            repositories=sum(len(p.repositories) for p in expansion.jobs),
            other_shards=sum(len(p.other_shards) for p in expansion.jobs),
        )


def _audited(job: ReferenceJob) -> ReferenceJob:
    """The job as verify runs it: every destination tag must point at the source's digest."""
    dests = tuple(replace(d, overwrite="if-changed", backup=None) for d in job.destinations)
    return replace(job, destinations=dests)


def _exit_code(
    expansion: Expansion, run: RunOutcome | None, *, ignore: tuple[int, ...] = ()
) -> int:
    """The run's exit code combined with the jobs' listing failures (most severe wins)."""
    if run is not None and run.exit_code == EXIT_INTERRUPTED:
        return EXIT_INTERRUPTED
    codes = [e.exit_code for e in expansion.errors]
    if run is not None and run.exit_code and run.exit_code not in ignore:
        codes.append(run.exit_code)
    return most_severe(codes) if codes else 0


def _with_prunes(code: int, prunes: Sequence[JobPrune]) -> int:
    """The exit code with the prunes' refusals and failures (most severe wins)."""
    if code == EXIT_INTERRUPTED:
        return code
    codes = [c for c in (code, *(p.exit_code for p in prunes)) if c]
    return most_severe(codes) if codes else 0


def write_sync_report(path: Path, outcome: SyncOutcome) -> None:
    """Write the JSON report to ``path``; :class:`InputError` when it cannot be written."""
    try:
        path.write_text(json.dumps(outcome.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the report {path} ({exc.strerror})") from None


class WritesNothingPool(TargetPool):
    """The targets of a run that writes nothing (``sync --dry-run``, ``verify``).

    Hands out the targets of ``inner``, except that an OCI layout destination
    that does not exist yet is not created: the run sees an empty, local
    stand-in kept in memory, so it plans (or reports) everything as missing
    there and leaves the disk as it was.  Closing this pool closes only the
    stand-ins; ``inner`` belongs to the caller.
    """

    def __init__(self, inner: TargetPool) -> None:
        super().__init__()
        self._inner = inner
        self._standins: dict[str, Target] = {}

    def open(self, ref: Reference, *, create: bool = False) -> Target:
        """The inner pool's target, or an empty stand-in for a layout that does not exist."""
        standin = self._standins.get(ref.location)
        if standin is not None:
            return standin
        missing_layout = (
            ref.scheme == "ocidir"
            and ref.layout_path is not None
            and self._inner.opened(ref.location) is None
            and not os.path.exists(ref.layout_path)
        )
        if not (create and missing_layout):
            return self._inner.open(ref, create=create)
        standin = MemoryTarget(
            ref.location, referrers_api=True, repository_probe=False, catalog=False, is_local=True
        )
        self._standins[ref.location] = standin
        return standin

    def opened(self, location: str) -> Target | None:
        """The target open for ``location`` (stand-in or inner), if any."""
        return self._standins.get(location) or self._inner.opened(location)

    def targets(self) -> list[Target]:
        """Every target this run opened: the inner pool's and the stand-ins."""
        return [*self._inner.targets(), *self._standins.values()]

    async def aclose(self) -> None:
        """Forget the stand-ins; the inner pool is closed by its owner."""
        self._standins.clear()
