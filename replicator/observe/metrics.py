"""Prometheus metrics of unattended runs: per sync job, per registry, and of the process.

:class:`ServiceMetrics` keeps every figure as a plain number under a lock, and
is a Prometheus collector: ``/metrics`` in watch mode
(:mod:`replicator.observe.metrics_http`) and the node-exporter textfile of a
one-shot run (:mod:`replicator.observe.textfile`) render the same families.
The run layer feeds it (``replicator.sync.service_figures``); nothing here
knows about registries or engines, only names and numbers.

Names and units follow Prometheus' conventions (``_total`` counters,
``_seconds``, ``_bytes``, timestamps in seconds since the epoch).  Per-job
series carry the label ``sync_job``, not ``job``: Prometheus gives every
scraped series the ``job`` label of its scrape configuration and would rename
ours.  Every family and label is listed in docs/UNATTENDED.md.

Pruning (deletion propagation) reports the tags it deleted with
:func:`count_pruned`, which reaches whichever :class:`ServiceMetrics` the
caller made active (:func:`activated`); without one it does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

JobResultName = Literal["success", "refused", "failed", "interrupted"]
#: How a run of a job ended: success (copied, up to date, kept), refused (a
#: promotion gate refused a graph, nothing failed), failed, interrupted (SIGTERM).
JOB_RESULTS: tuple[JobResultName, ...] = ("success", "refused", "failed", "interrupted")
GRAPH_STATES = ("copied", "up_to_date", "kept", "refused", "failed")
#: Why a tick did not start a run: the job's previous run was still going, or
#: another process held the job's lock.
SKIP_REASONS = ("running", "locked")

Kind = Literal["counter", "gauge"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: name (``_total`` included for counters), type, help, labels."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


def _job(name: str, kind: Kind, text: str, *labels: str) -> Family:
    return Family(name, kind, text, ("sync_job", *labels))


JOB_FAMILIES: tuple[Family, ...] = (
    _job("replicator_job_runs_total", "counter", "Runs of a sync job, by result.", "result"),
    _job(
        "replicator_job_last_run_timestamp_seconds",
        "gauge",
        "When the last run of a sync job ended.",
    ),
    _job(
        "replicator_job_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run of a sync job ended (result success).",
    ),
    _job(
        "replicator_job_last_run_duration_seconds", "gauge", "How long the last run of a job took."
    ),
    _job(
        "replicator_job_interval_seconds",
        "gauge",
        "The time between two scheduled runs of a job (its interval, or its cron period).",
    ),
    _job("replicator_job_running", "gauge", "1 while a run of the job is going (watch mode)."),
    _job(
        "replicator_job_next_run_timestamp_seconds",
        "gauge",
        "When the next run of the job is due (watch mode).",
    ),
    _job(
        "replicator_job_consecutive_failures",
        "gauge",
        "Failed runs of the job since its last success (the back-off grows with it).",
    ),
    _job(
        "replicator_job_ticks_skipped_total",
        "counter",
        "Scheduled ticks that started no run: the previous run was still going, or another "
        "process held the job's lock.",
        "reason",
    ),
    _job(
        "replicator_job_graphs_total",
        "counter",
        "Graphs (one per selected tag and source) a job's runs handled, by outcome.",
        "status",
    ),
    _job(
        "replicator_job_manifests_total",
        "counter",
        "Manifests per destination: copied (pushed) or skipped (already there).",
        "action",
    ),
    _job(
        "replicator_job_blobs_total",
        "counter",
        "Blobs per destination: copied (uploaded), mounted, or skipped (already there).",
        "action",
    ),
    _job("replicator_job_sent_bytes_total", "counter", "Blob bytes sent to destinations."),
    _job("replicator_job_tags_pruned_total", "counter", "Destination tags deleted by pruning."),
    _job(
        "replicator_job_gate_refusals_total",
        "counter",
        "Graphs a promotion gate refused (a required referrer type missing at the source).",
    ),
)

REGISTRY_FAMILIES: tuple[Family, ...] = (
    Family(
        "replicator_registry_requests_total",
        "counter",
        "HTTP requests sent to a registry (every attempt), by kind and status class "
        "(2xx..5xx, none: no answer).",
        ("registry", "kind", "status_class"),
    ),
    Family(
        "replicator_registry_retries_total",
        "counter",
        "Requests sent again after a failed attempt.",
        ("registry",),
    ),
    Family(
        "replicator_registry_sent_bytes_total",
        "counter",
        "Request body bytes sent to a registry.",
        ("registry",),
    ),
    Family(
        "replicator_registry_received_bytes_total",
        "counter",
        "Response body bytes received from a registry.",
        ("registry",),
    ),
    Family(
        "replicator_registry_throttle_events_total",
        "counter",
        "Times a registry's 'slow down' (429/503) halved a concurrency limit (AIMD).",
        ("registry", "kind"),
    ),
    Family(
        "replicator_registry_concurrency_limit",
        "gauge",
        "The adaptive concurrency limit of a registry at the end of the last run using it.",
        ("registry", "kind"),
    ),
)

PROCESS_FAMILIES: tuple[Family, ...] = (
    Family(
        "replicator_config_last_reload_successful",
        "gauge",
        "1 when the last (re)load of the config file succeeded, 0 when it was refused.",
    ),
    Family(
        "replicator_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the config file was last loaded successfully.",
    ),
    Family(
        "replicator_config_reloads_total",
        "counter",
        "Reloads of the config file (SIGHUP), by result.",
        ("result",),
    ),
    Family(
        "replicator_sync_last_exit_code",
        "gauge",
        "Exit code of the last one-shot sync (docs/CLI.md).",
    ),
)

FAMILIES: dict[str, Family] = {
    f.name: f for f in (*JOB_FAMILIES, *REGISTRY_FAMILIES, *PROCESS_FAMILIES)
}


@dataclass(slots=True)
class JobFigures:
    """What one run of one sync job did: the figures it adds to the job's series."""

    result: JobResultName
    finished: float
    duration: float
    graphs: dict[str, int] = field(default_factory=dict)
    manifests_copied: int = 0
    manifests_skipped: int = 0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_sent: int = 0
    gate_refusals: int = 0


@dataclass(slots=True)
class RegistryFigures:
    """Totals of the requests sent to one registry since the process started."""

    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def add(self, other: RegistryFigures) -> None:
        """Add ``other``'s totals to these."""
        for key, n in other.requests.items():
            self.requests[key] = self.requests.get(key, 0) + n
        self.retries += other.retries
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received


Labels = tuple[str, ...]


class ServiceMetrics:
    """Every figure of the process, safe to read from the metrics server's thread.

    Writers run on the event loop; :meth:`collect` may run on any thread.  A
    job's series start at zero when it is declared (:meth:`declare_job`), so
    ``increase()`` and absence alerts work from its first scrape.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = {name: {} for name in FAMILIES}

    # ------------------------------------------------------------ writing

    def _add(self, name: str, labels: Labels, amount: float) -> None:
        with self._lock:
            series = self._values[name]
            series[labels] = series.get(labels, 0.0) + amount

    def _set(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            self._values[name][labels] = value

    def declare_job(self, job: str, interval: float) -> None:
        """Make ``job``'s series exist (counters at zero) and note its period in seconds."""
        zeros: list[tuple[str, Labels]] = [
            *(("replicator_job_runs_total", (job, r)) for r in JOB_RESULTS),
            *(("replicator_job_ticks_skipped_total", (job, r)) for r in SKIP_REASONS),
            *(("replicator_job_graphs_total", (job, s)) for s in GRAPH_STATES),
            *(("replicator_job_manifests_total", (job, a)) for a in ("copied", "skipped")),
            *(("replicator_job_blobs_total", (job, a)) for a in ("copied", "mounted", "skipped")),
            ("replicator_job_sent_bytes_total", (job,)),
            ("replicator_job_tags_pruned_total", (job,)),
            ("replicator_job_gate_refusals_total", (job,)),
        ]
        with self._lock:
            for name, labels in zeros:
                self._values[name].setdefault(labels, 0.0)
            self._values["replicator_job_interval_seconds"][(job,)] = interval

    def forget_job(self, job: str) -> None:
        """Drop every series of ``job`` (removed from the config)."""
        with self._lock:
            for family in JOB_FAMILIES:
                series = self._values[family.name]
                for labels in [k for k in series if k[0] == job]:
                    del series[labels]

    def job_state(
        self,
        job: str,
        *,
        running: bool | None = None,
        next_run: float | None = None,
        failures: int | None = None,
    ) -> None:
        """Note what a watch knows of ``job`` now (each argument given is set)."""
        if running is not None:
            self._set("replicator_job_running", (job,), 1.0 if running else 0.0)
        if next_run is not None:
            self._set("replicator_job_next_run_timestamp_seconds", (job,), next_run)
        if failures is not None:
            self._set("replicator_job_consecutive_failures", (job,), float(failures))

    def record_run(self, job: str, figures: JobFigures) -> None:
        """Add one finished run of ``job``."""
        self._add("replicator_job_runs_total", (job, figures.result), 1)
        self._set("replicator_job_last_run_timestamp_seconds", (job,), figures.finished)
        self._set("replicator_job_last_run_duration_seconds", (job,), figures.duration)
        if figures.result == "success":
            self._set("replicator_job_last_success_timestamp_seconds", (job,), figures.finished)
        for state, n in figures.graphs.items():
            self._add("replicator_job_graphs_total", (job, state), n)
        adds = (
            ("replicator_job_manifests_total", "copied", figures.manifests_copied),
            ("replicator_job_manifests_total", "skipped", figures.manifests_skipped),
            ("replicator_job_blobs_total", "copied", figures.blobs_copied),
            ("replicator_job_blobs_total", "mounted", figures.blobs_mounted),
            ("replicator_job_blobs_total", "skipped", figures.blobs_skipped),
        )
        for name, action, n in adds:
            self._add(name, (job, action), n)
        self._add("replicator_job_sent_bytes_total", (job,), figures.bytes_sent)
        self._add("replicator_job_gate_refusals_total", (job,), figures.gate_refusals)

    def record_skipped_tick(self, job: str, reason: str) -> None:
        """A tick of ``job`` started no run (``running`` or ``locked``)."""
        self._add("replicator_job_ticks_skipped_total", (job, reason), 1)

    def record_pruned(self, job: str, tags: int) -> None:
        """Pruning deleted ``tags`` destination tags for ``job``."""
        self._add("replicator_job_tags_pruned_total", (job,), tags)

    def set_registry_totals(self, totals: Mapping[str, RegistryFigures]) -> None:
        """Replace the request totals of each registry named (totals since the process started)."""
        with self._lock:
            for registry, fig in totals.items():
                requests = self._values["replicator_registry_requests_total"]
                for (kind, status), n in fig.requests.items():
                    requests[(registry, kind, status)] = n
                self._values["replicator_registry_retries_total"][(registry,)] = fig.retries
                self._values["replicator_registry_sent_bytes_total"][(registry,)] = fig.bytes_sent
                received = self._values["replicator_registry_received_bytes_total"]
                received[(registry,)] = fig.bytes_received

    def record_limits(
        self, throttles: Mapping[tuple[str, str], int], limits: Mapping[tuple[str, str], int]
    ) -> None:
        """Add a run's limit decreases and set the limits it ended with, per (registry, kind)."""
        for key, n in throttles.items():
            self._add("replicator_registry_throttle_events_total", key, n)
        for key, value in limits.items():
            self._set("replicator_registry_concurrency_limit", key, value)

    def config_loaded(self, ok: bool, at: float, *, reload: bool) -> None:
        """The config file was (re)loaded at ``at``; ``ok`` False: refused, the old one kept."""
        self._set("replicator_config_last_reload_successful", (), 1.0 if ok else 0.0)
        if ok:
            self._set("replicator_config_last_reload_success_timestamp_seconds", (), at)
        if reload:
            self._add("replicator_config_reloads_total", ("success" if ok else "failure",), 1)

    def exit_code(self, code: int) -> None:
        """The exit code a one-shot sync ends with."""
        self._set("replicator_sync_last_exit_code", (), float(code))

    # ------------------------------------------------------------ reading

    def value(self, name: str, *labels: str) -> float | None:
        """The value of one series (None when it does not exist), for tests and logs."""
        with self._lock:
            return self._values[name].get(tuple(labels))

    def collect(self) -> Iterable[Metric]:
        """The families with at least one series (the Prometheus collector protocol)."""
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items() if series}
        for name, series in snapshot.items():
            family = FAMILIES[name]
            metric: Metric
            if family.kind == "counter":
                metric = CounterMetricFamily(name, family.help, labels=family.labels)
            else:
                metric = GaugeMetricFamily(name, family.help, labels=family.labels)
            for labels, value in sorted(series.items()):
                metric.add_metric(list(labels), value)
            yield metric

    def registry(self) -> CollectorRegistry:
        """A Prometheus registry holding these metrics alone."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry


_ACTIVE: ContextVar[ServiceMetrics | None] = ContextVar("replicator_metrics", default=None)


@contextlib.contextmanager
def activated(metrics: ServiceMetrics | None) -> Iterator[None]:
    """Make ``metrics`` the target of :func:`count_pruned` in this context (and its tasks)."""
    token = _ACTIVE.set(metrics)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def count_pruned(job: str, tags: int) -> None:
    """Pruning deleted ``tags`` tags for sync job ``job``: count them (no-op without metrics)."""
    metrics = _ACTIVE.get()
    if metrics is not None and tags:
        metrics.record_pruned(job, tags)
