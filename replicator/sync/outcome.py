"""What a run ended with: :class:`RunOutcome`, its messages, and its JSON report.

The outcome is what a front end formats: the engine's
:class:`~replicator.engine.CopyReport` (figures true for the attempt whatever
ended it), the run id and whether it resumed, the final status, every message
meant for the user, and the exit code (``replicator/errors.py``).

Statuses: ``copied`` (complete, something was written), ``up-to-date`` (complete,
nothing was written: no blob, manifest, referrers index or tag), ``failed``
(an error, or something selected is missing), ``interrupted`` (stopped on
request; a rerun resumes).  Each job has a status of its own in the report:
``copied``, ``up-to-date``, ``kept`` (``overwrite: never`` left the destination
tag where it pointed), ``refused`` (a promotion gate) or ``failed``.

The JSON report (:meth:`RunOutcome.to_json`) is the engine report's JSON with
fields added, never removed: ``status``, ``exit_code``, ``error``, ``run``
(``id``, ``resumed``, ``journal``), ``sources_moved``,
``unfinished_upload_bytes``, ``messages``, ``throttle_events`` (per limiter,
how often a registry's "slow down" halved it), and the per-job status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from replicator.engine import CopyReport
from replicator.errors import InputError, ReplicatorError
from replicator.sync.journal_run import SourceMoved

RunStatus = Literal["copied", "up-to-date", "failed", "interrupted"]
JobState = Literal["copied", "up-to-date", "kept", "refused", "failed"]
MessageKind = Literal["info", "warning", "note"]


@dataclass(frozen=True, slots=True)
class Message:
    """Something to tell the user while or after the run (never a result line).

    ``event`` is the log event the run layer logged it under (``run.resumed``).
    """

    kind: MessageKind
    text: str
    event: str

    def line(self) -> str:
        """The line a console shows: ``Warning: ...``, ``Note: ...``, or the text."""
        if self.kind == "warning":
            return f"Warning: {self.text}"
        if self.kind == "note":
            return f"Note: {self.text}"
        return self.text


@dataclass(slots=True)
class RunOutcome:
    """The end of a run (see the module doc)."""

    report: CopyReport
    status: RunStatus
    exit_code: int
    error: ReplicatorError | None = None
    run_id: str | None = None
    resumed: bool = False
    journal: Path | None = None
    messages: list[Message] = field(default_factory=list)
    job_states: list[JobState] = field(default_factory=list)
    sources_moved: list[SourceMoved] = field(default_factory=list)
    unfinished_upload_bytes: int = 0
    #: Per ``"location/kind"`` limiter: how often the registry's "slow down" halved it.
    throttle_events: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the run completed (copied or already up to date)."""
        return self.status in ("copied", "up-to-date")

    def job_state(self, index: int) -> JobState:
        """The status of job ``index`` of the report."""
        if index < len(self.job_states):
            return self.job_states[index]
        status = self.report.jobs[index].status
        if status in ("copied", "up-to-date", "kept", "refused"):
            return status
        return "failed"

    def to_json(self) -> dict[str, Any]:
        """The JSON report (see the module doc)."""
        out = self._head()
        out["jobs"] = [self._job_json(index) for index in range(len(self.report.jobs))]
        return out

    def json_chunks(self) -> Iterator[str]:
        """The text of ``json.dumps(self.to_json(), indent=2) + "\n"``, in pieces.

        One job's entry is built at a time: a run of many thousand jobs writes
        its report without holding a JSON-ready copy of every job (nor the
        whole text) at once.
        """
        yield "{"
        for n, (key, value) in enumerate(self._head().items()):
            yield ("," if n else "") + "\n  " + json.dumps(key) + ": "
            if key == "jobs" and self.report.jobs:
                yield "["
                for index in range(len(self.report.jobs)):
                    yield ("," if index else "") + "\n    " + _nested(self._job_json(index), 4)
                yield "\n  ]"
            else:
                yield _nested(value, 2)
        yield "\n}\n"

    def _head(self) -> dict[str, Any]:
        """Every field of the JSON report, with ``"jobs": []``."""
        out = self.report.summary_json()
        out.update(
            status=self.status,
            exit_code=self.exit_code,
            error=None if self.error is None else str(self.error),
            run={
                "id": self.run_id,
                "resumed": self.resumed,
                "journal": None if self.journal is None else str(self.journal),
            },
            sources_moved=[
                {"source": m.source, "was": m.was, "now": m.now} for m in self.sources_moved
            ],
            unfinished_upload_bytes=self.unfinished_upload_bytes,
            throttle_events=self.throttle_events,
            messages=[{"kind": m.kind, "text": m.text} for m in self.messages],
        )
        return out

    def _job_json(self, index: int) -> dict[str, Any]:
        """Job ``index``'s entry of the JSON report."""
        job = asdict(self.report.jobs[index])
        job["status"] = self.job_state(index)
        return job


def _nested(value: Any, indent: int) -> str:
    """``value`` as ``json.dumps(..., indent=2)`` writes it ``indent`` spaces deep.

    JSON text has no raw line break inside a string, so every line break is
    one of the layout's and is followed by the deeper indentation.
    """
    return json.dumps(value, indent=2).replace("\n", "\n" + " " * indent)


def write_report(path: Path, outcome: RunOutcome) -> None:
    """Write the JSON report to ``path``; :class:`InputError` when it cannot be written.

    Written one job at a time (:meth:`RunOutcome.json_chunks`).
    """
    try:
        with path.open("w", encoding="utf-8") as out:
            for chunk in outcome.json_chunks():
                out.write(chunk)
    except OSError as exc:
        raise InputError(f"cannot write the report {path} ({exc.strerror})") from None
