"""The figures the service metrics need, taken from a sync's outcome and from the targets.

* :func:`job_figures` splits a :class:`~replicator.sync.syncing.SyncOutcome` by
  config job.  Graphs and gate refusals come from the engine's per-graph
  results (``JobResult.name`` names the config job).  Manifests, blobs and
  bytes are counted by the engine per run: a run of one config job (every run
  of a watch) gives them to that job as they are; a run of several jobs (a
  one-shot ``sync``) gives each job what the :class:`DestinationTally` saw
  reach the destination repositories that job writes (a repository several of
  the run's jobs write counts for the first of them; a job's bytes are then
  the sizes of the blobs uploaded for it).
* :func:`registry_figures` reads the request counters of every target of a
  pool (``CountsRequests``), keyed by the target's display name.
* :func:`limit_figures` turns a run's throttle events and limits into
  ``(registry, kind)`` keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from replicator.engine.events import CopyObserver
from replicator.engine.report import CopyReport
from replicator.observe.metrics import JobFigures, JobResultName, RegistryFigures
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import Reference
from replicator.sync.expand import Expansion
from replicator.sync.syncing import SyncOutcome
from replicator.sync.targets import TargetPool
from replicator.targets.base import CountsRequests, Target


class DestinationTally:
    """A :class:`CopyObserver` that counts what reached each destination repository.

    Passes every call on to ``inner`` (the display or the log observer).
    """

    def __init__(self, inner: CopyObserver | None = None) -> None:
        self.inner = inner
        #: ``(destination, "blob"|"manifest", how) -> count``; ``how`` as the engine says it.
        self.counts: Counter[tuple[str, str, str]] = Counter()
        #: destination -> bytes of the blobs uploaded there.
        self.uploaded_bytes: Counter[str] = Counter()

    def blob_started(self, desc: Descriptor, destinations: int) -> None:
        """Pass on."""
        if self.inner is not None:
            self.inner.blob_started(desc, destinations)

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        """Pass on."""
        if self.inner is not None:
            self.inner.blob_advanced(desc, nbytes)

    def blob_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Count the blob at its destination, then pass on."""
        self.counts[(destination, "blob", how)] += 1
        if how == "uploaded":
            self.uploaded_bytes[destination] += desc.size
        if self.inner is not None:
            self.inner.blob_finished(desc, how, destination)

    def manifest_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Count the manifest at its destination, then pass on."""
        self.counts[(destination, "manifest", how)] += 1
        if self.inner is not None:
            self.inner.manifest_finished(desc, how, destination)

    def warning(self, message: str) -> None:
        """Pass on."""
        if self.inner is not None:
            self.inner.warning(message)


def endpoint_name(ref: Reference) -> str:
    """How the engine names the destination repository of ``ref`` in its events."""
    if ref.scheme == "ocidir":
        return f"{ref.location}{':' + ref.repository if ref.repository else ''}"
    return f"{ref.location}/{ref.repository}"


def job_result(outcome: SyncOutcome, job: str) -> JobResultName:
    """How ``job``'s part of the sync ended (see ``JOB_RESULTS``).

    A job whose every graph completed succeeded even when a stop interrupted
    the run's other jobs; one that selected nothing succeeded too.
    """
    plan = next((p for p in outcome.expansion.jobs if p.name == job), None)
    if plan is not None and plan.error is not None:
        return "failed"
    run = outcome.run
    expected = any(j.name == job for j in outcome.expansion.reference_jobs)
    if run is None or not expected:
        return "success"
    results = outcome.job_results(job)
    interrupted = run.status == "interrupted"
    if not results:  # the run ended before its engine started (a stop, a lock, the journal)
        return "interrupted" if interrupted else "success" if run.ok else "failed"
    states = [run.job_state(i) for i, _ in results]
    unfinished = "failed" in states or any(r.status == "pending" for _, r in results)
    if unfinished and interrupted:  # a graph the stop cut short: the next run resumes it
        return "interrupted"
    if unfinished:
        return "failed"
    if "refused" in states:
        return "refused"
    return "success"


def job_figures(
    outcome: SyncOutcome,
    *,
    finished: float,
    duration: float,
    tally: DestinationTally | None = None,
) -> dict[str, JobFigures]:
    """Per config job of the sync: its result and the figures its runs add (see the module doc)."""
    names = [plan.name for plan in outcome.expansion.jobs]
    out: dict[str, JobFigures] = {}
    for name in names:
        fig = JobFigures(job_result(outcome, name), finished, duration)
        for index, result in outcome.job_results(name):
            if result.status == "pending" or outcome.run is None:
                continue
            state = outcome.run.job_state(index).replace("-", "_")
            if state == "failed" and fig.result == "interrupted":
                continue  # cut short by the stop, not failed: the next run resumes it
            fig.graphs[state] = fig.graphs.get(state, 0) + 1
        fig.gate_refusals = fig.graphs.get("refused", 0)
        out[name] = fig
    report = outcome.report
    if report is None:
        return out
    if len(names) == 1:
        _whole_report(out[names[0]], report)
    elif tally is not None:
        owners = destination_owners(outcome.expansion)
        for (where, what, how), n in tally.counts.items():
            owner = owners.get(where)
            if owner in out:
                _count(out[owner], what, how, n)
        for where, size in tally.uploaded_bytes.items():
            owner = owners.get(where)
            if owner in out:
                out[owner].bytes_sent += size
    return out


def _whole_report(fig: JobFigures, report: CopyReport) -> None:
    fig.manifests_copied = report.manifests_pushed
    fig.manifests_skipped = report.manifests_skipped
    fig.blobs_copied = report.blobs_uploaded
    fig.blobs_mounted = report.blobs_mounted
    fig.blobs_skipped = report.blobs_skipped
    fig.bytes_sent = report.bytes_sent


def _count(fig: JobFigures, what: str, how: str, n: int) -> None:
    if what == "manifest":
        if how == "pushed":
            fig.manifests_copied += n
        else:
            fig.manifests_skipped += n
    elif how == "uploaded":
        fig.blobs_copied += n
    elif how == "mounted":
        fig.blobs_mounted += n
    else:
        fig.blobs_skipped += n


def destination_owners(expansion: Expansion) -> dict[str, str]:
    """Destination repository (as engine events name it) -> the first config job writing it."""
    owners: dict[str, str] = {}
    for job in expansion.reference_jobs:
        for dest in job.destinations:
            owners.setdefault(endpoint_name(dest.ref), job.name)
    return owners


def registry_figures(targets: Iterable[Target]) -> dict[str, RegistryFigures]:
    """The request counters of each counting target, by display name."""
    out: dict[str, RegistryFigures] = {}
    for target in targets:
        if not isinstance(target, CountsRequests):
            continue
        stats = target.stats
        fig = RegistryFigures(
            requests=dict(stats.answers),
            retries=stats.retries,
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
        )
        out.setdefault(target.display, RegistryFigures()).add(fig)
    return out


def limit_figures(
    throttles: Mapping[str, int], limits: Mapping[str, int], targets: TargetPool
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """A run's ``"location/kind"`` throttle events and limits as ``(registry, kind)`` keys.

    Only registries count (a layout has no limits worth watching); a location
    is named as its target displays itself.
    """

    def keyed(values: Mapping[str, int], *, add: bool) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for key, value in values.items():
            location, kind = key.rsplit("/", 1)
            target = targets.opened(location)
            if target is None or target.is_local:
                continue
            name = (target.display, kind)
            out[name] = out.get(name, 0) + value if add else value
        return out

    return keyed(throttles, add=True), keyed(limits, add=False)
