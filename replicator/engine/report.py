"""The summary of a copy run: what moved, what was skipped, what it cost.

A :class:`CopyReport` is filled while the engine runs and is what ``--report
FILE`` writes as JSON (:meth:`CopyReport.to_json`) and what the CLI prints at the
end.  Counts are per destination: a blob uploaded to two destinations counts
twice in ``blobs_uploaded`` but its bytes were read from the source once
(``bytes_read``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

JobStatus = Literal["copied", "failed", "pending"]


@dataclass(slots=True)
class JobResult:
    """The outcome of one ``SRC -> DST...`` pair.

    ``digest`` is the root copied to the destinations (differs from
    ``source_digest`` only when a platform filter rebuilt an index, see
    ``note``).  ``missing`` counts selected nodes absent at some destination.
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
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    retries: int = 0
    limits: dict[str, int] = field(default_factory=dict)
    wall_time: float = 0.0
    jobs: list[JobResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every job copied its whole selected graph to every destination."""
        return not self.failures and all(j.status == "copied" for j in self.jobs)

    @property
    def new_blobs(self) -> int:
        """Blobs this run made present at a destination (uploaded or mounted)."""
        return self.blobs_uploaded + self.blobs_mounted

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (``--report FILE``)."""
        out = asdict(self)
        out["ok"] = self.ok
        out["new_blobs"] = self.new_blobs
        return out
