"""The figures of one attempt, true whatever ended it, and the status of each job.

The engine fills its :class:`~replicator.engine.CopyReport` as it runs and
completes it (wall time, requests, limits) when its run returns; a run
cancelled from outside leaves those unset.  :class:`AttemptFigures` fills them
in from the targets' own request counters, and adds to ``bytes_sent`` what the
destinations acknowledged for uploads left unfinished (the engine counts a
blob's bytes once it is complete).  :func:`job_states` tells a copied job from
one that was already up to date, by what the attempt wrote.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from replicator.engine import CopyJob, CopyReport, Limits
from replicator.sync.ledger import AttemptLedger
from replicator.sync.outcome import JobState
from replicator.sync.targets import TargetPool
from replicator.targets.base import CountsRequests


class AttemptFigures:
    """The attempt's figures the engine may leave unset when it is cancelled, from the targets.

    Made right before the engine runs: it notes the time and every target's
    request counters, so that :meth:`complete` can fill in what a cancelled
    engine did not (wall time, requests per target, limits).
    """

    def __init__(self, targets: TargetPool, limits: Limits) -> None:
        self.targets = targets
        self.limits = limits
        self.started = time.monotonic()
        self.before = {id(t): t.stats.as_dict() for t in _counting_targets(targets)}

    def complete(self, report: CopyReport, ledger: AttemptLedger) -> int:
        """Fill in wall time, requests and limits if unset; add unfinished uploads' bytes.

        Returns the bytes of unfinished uploads added to ``report.bytes_sent``.
        """
        if not report.wall_time:
            report.wall_time = round(time.monotonic() - self.started, 3)
        if not report.limits:
            report.limits = self.limits.snapshot()
        if not report.requests:
            for target in _counting_targets(self.targets):
                before = self.before.get(id(target), {})
                counts = {k: v - before.get(k, 0) for k, v in target.stats.as_dict().items()}
                if any(counts.values()):
                    report.requests[target.display] = counts
            report.retries = sum(c.get("retries", 0) for c in report.requests.values())
        unfinished = ledger.unfinished_upload_bytes()
        report.bytes_sent += unfinished
        return unfinished


def _counting_targets(targets: TargetPool) -> list[Any]:
    return [t for t in targets.targets() if isinstance(t, CountsRequests)]


def job_states(
    jobs: Sequence[CopyJob], report: CopyReport, ledger: AttemptLedger
) -> list[JobState]:
    """Per job: copied when one of its destination repositories was written to, else
    up-to-date; kept (``overwrite: never`` left every tag), refused (a promotion
    gate), or failed."""
    states: list[JobState] = []
    for job, result in zip(jobs, report.jobs, strict=False):
        if result.status in ("kept", "refused"):
            states.append(result.status)
        elif result.status not in ("copied", "up-to-date"):
            states.append("failed")
        elif any(d.endpoint.key in ledger.written for d in job.destinations):
            states.append("copied")
        else:
            states.append("up-to-date")
    return states
