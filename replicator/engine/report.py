"""The summary of a copy run: what moved, what was skipped, what it cost.

A :class:`CopyReport` is filled while the engine runs and is what ``--report
FILE`` writes as JSON (:meth:`CopyReport.to_json`) and what the CLI prints at the
end.  Counts are per destination: a blob uploaded to two destinations counts
twice in ``blobs_uploaded`` but its bytes were read from the source once
(``bytes_read``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from replicator.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_INCOMPLETE,
    EXIT_INTEGRITY,
    EXIT_JOURNAL,
    EXIT_NETWORK,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_REGISTRY,
    EXIT_USAGE,
)

JobStatus = Literal["copied", "up-to-date", "kept", "refused", "failed", "pending"]

#: Job outcomes that leave the run successful.
OK_STATUSES = frozenset({"copied", "up-to-date", "kept"})

#: Exit codes of a run's failure causes, most severe first: the run exits with
#: the first of these that any cause has.  What needs a person to change
#: something (the command, credentials; content that does not verify; a journal
#: that cannot be used) comes before what may pass on a rerun (a missing
#: manifest, a registry's error, the network); a failure without a more
#: specific cause is "incomplete" (9); a promotion gate's refusal (10) is a
#: policy's answer, not a fault, and counts only when nothing failed.
SEVERITY: tuple[int, ...] = (
    EXIT_USAGE,
    EXIT_AUTH,
    EXIT_INTEGRITY,
    EXIT_JOURNAL,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_REGISTRY,
    EXIT_NETWORK,
    EXIT_FAILURE,
    EXIT_INCOMPLETE,
    EXIT_REFUSED,
)


def most_severe(codes: Iterable[int]) -> int:
    """The exit code of the most severe of ``codes`` (see :data:`SEVERITY`); 9 when none."""
    present = set(codes)
    for code in SEVERITY:
        if code in present:
            return code
    return min(present) if present else EXIT_INCOMPLETE


@dataclass(slots=True)
class FailureCause:
    """One failure of a run: what failed, the exit code of its kind, and which side.

    ``error`` is the kind of error (``AuthenticationError``, ``IntegrityError``...),
    ``side`` is "source", "destination" or None when neither; for a registry's
    error, ``code`` is its OCI error code and ``registry``/``repository`` say where.
    """

    message: str
    exit_code: int
    error: str
    side: str | None = None
    code: str | None = None
    registry: str | None = None
    repository: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    """One write a dry run would make: ``upload``, ``mount``, ``push``, ``index``, ``tag``, ``backup``.

    ``detail`` says more: for ``push`` the node's place (``root``, ``child``,
    ``referrer``); for ``tag`` the digest the tag points at now (None: absent);
    for ``index`` the referrers the subject's index lacks; for ``upload`` of a
    blob a present manifest names, ``lost``.
    """

    action: str
    destination: str
    digest: str
    size: int = 0
    tag: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class JobResult:
    """The outcome of one ``SRC -> DST...`` pair.

    ``digest`` is the root copied to the destinations (differs from
    ``source_digest`` only when a platform filter rebuilt an index, see
    ``note``).  ``missing`` counts selected nodes absent at some destination.

    What the job changed (or, in a dry run, would change): ``new_manifests``
    (manifests of its graph pushed, per destination), ``new_referrers`` (of
    those, referrers), ``root_new`` (the root itself was pushed somewhere),
    ``tags`` (set or confirmed), ``tags_moved`` (written), ``kept`` (tags left
    pointing elsewhere: ``overwrite: never``), ``backups`` (``tag -> digest``
    kept before a move), ``refused`` (required referrer types missing).
    """

    source: str
    destinations: list[str]
    status: JobStatus = "pending"
    digest: str | None = None
    source_digest: str | None = None
    media_type: str | None = None
    tags: list[str] = field(default_factory=list)
    note: str | None = None
    error: str | None = None
    missing: int = 0
    name: str = ""
    new_manifests: int = 0
    new_referrers: int = 0
    root_new: bool = False
    tags_moved: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CopyReport:
    """Counters of a run (per destination) plus per-job outcomes."""

    manifests_pushed: int = 0
    manifests_skipped: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_sent: int = 0
    bytes_read: int = 0
    referrers_found: int = 0
    referrers_filtered: int = 0
    referrer_indexes_updated: int = 0
    tags_set: int = 0
    tags_unchanged: int = 0
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    causes: list[FailureCause] = field(default_factory=list)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    retries: int = 0
    limits: dict[str, int] = field(default_factory=dict)
    wall_time: float = 0.0
    jobs: list[JobResult] = field(default_factory=list)
    #: A dry run: every write the run would make (``CopyOptions.plan``).
    planned: list[PlannedWrite] = field(default_factory=list)
    planned_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when every job copied its whole selected graph to every destination."""
        return not self.failures and all(j.status in OK_STATUSES for j in self.jobs)

    @property
    def exit_code(self) -> int:
        """0 when ok, else the exit code of the most severe cause (see :data:`SEVERITY`)."""
        if self.ok:
            return 0
        return most_severe(c.exit_code for c in self.causes)

    def most_severe_cause(self) -> FailureCause | None:
        """The first cause with the run's exit code (None without causes)."""
        code = self.exit_code
        return next((c for c in self.causes if c.exit_code == code), None)

    @property
    def new_blobs(self) -> int:
        """Blobs this run made present at a destination (uploaded or mounted)."""
        return self.blobs_uploaded + self.blobs_mounted

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (``--report FILE``)."""
        out = self.summary_json()
        out["jobs"] = [asdict(job) for job in self.jobs]
        return out

    def summary_json(self) -> dict[str, Any]:
        """:meth:`to_json` with ``"jobs": []``, in the same key order.

        For writing a report of many jobs one job at a time (each job's entry
        is ``dataclasses.asdict`` of its :class:`JobResult`): the whole
        report is never held as one JSON-ready copy.
        """
        out = asdict(replace(self, jobs=[]))
        out["ok"] = self.ok
        out["new_blobs"] = self.new_blobs
        out["exit_code"] = self.exit_code
        return out
