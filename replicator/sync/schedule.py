"""When the jobs of a watch run: each job's ticks, and the back-off after a failure.

Pure logic: no I/O and no clock of its own; every function is given the time
(seconds since the epoch) it reasons about, so it is tested without waiting.

* A job with ``interval:`` ticks on a grid anchored where the watch (or the
  reload that gave it this interval) started: ``anchor + k * interval``.  The
  grid does not drift with run times, so a run that outlasts its interval makes
  the next tick find it still running: that tick is skipped (and counted), as
  cron's "skip if still running" and Kubernetes' ``concurrencyPolicy: Forbid``
  do.
* A job with ``schedule:`` ticks when its cron expression matches, in the local
  time zone of the process (``TZ``; UTC in a container without one).
* A job with neither ticks every :data:`DEFAULT_INTERVAL` seconds.  A
  ``defaults:`` section's ``schedule`` or ``interval`` cascades into every job
  that does not set its own (the config loader does that), so the default
  applies only when neither the job nor ``defaults`` says when.
* After ``n`` failed runs in a row a job is tried again after
  ``min(BACKOFF_BASE * 2^(n-1), period)``, or at its next tick if that comes
  first: retries double, never come rarer than the schedule, and one failing
  job never delays another.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

from croniter import croniter  # type: ignore[import-untyped]

#: Seconds between the runs of a job that names neither ``schedule`` nor ``interval``.
DEFAULT_INTERVAL = 600.0
#: The first retry of a failed job comes this many seconds after the failure.
BACKOFF_BASE = 5.0


@dataclass(frozen=True, slots=True)
class Schedule:
    """When one job ticks: a cron expression, or an interval on a grid from ``anchor``."""

    cron: str | None = None
    interval: float = DEFAULT_INTERVAL
    anchor: float = 0.0

    @classmethod
    def of(
        cls, *, cron: str | None, interval: datetime.timedelta | None, anchor: float
    ) -> Schedule:
        """The schedule of a job's ``schedule``/``interval`` keys (both None: the default)."""
        if cron is not None:
            return cls(cron=cron, anchor=anchor)
        seconds = DEFAULT_INTERVAL if interval is None else interval.total_seconds()
        return cls(interval=max(1.0, seconds), anchor=anchor)

    def describe(self) -> str:
        """``cron '*/15 * * * *'`` or ``every 600s``, for logs."""
        if self.cron is not None:
            return f"cron {self.cron!r}"
        return f"every {self.interval:g}s"

    def next_tick(self, after: float) -> float:
        """The first tick strictly after ``after``."""
        if self.cron is not None:
            start = datetime.datetime.fromtimestamp(after).astimezone()
            return float(croniter(self.cron, start).get_next(float))
        if after < self.anchor:
            return self.anchor
        tick = self.anchor + (math.floor((after - self.anchor) / self.interval) + 1) * self.interval
        return tick if tick > after else tick + self.interval  # rounding on a tick itself

    def period(self, at: float) -> float:
        """The time between two ticks around ``at``: the interval, or between the next two cron ticks."""
        if self.cron is None:
            return self.interval
        first = self.next_tick(at)
        return self.next_tick(first) - first

    def ticks_between(self, start: float, end: float, *, limit: int = 10_000) -> int:
        """How many ticks fall in ``(start, end]`` (at most ``limit``)."""
        count, tick = 0, self.next_tick(start)
        while tick <= end and count < limit:
            count += 1
            tick = self.next_tick(tick)
        return count


def backoff_delay(failures: int, cap: float, base: float = BACKOFF_BASE) -> float:
    """Seconds before retrying a job that failed ``failures`` times in a row (0 when it did not)."""
    if failures <= 0:
        return 0.0
    return min(max(cap, 0.0), base * 2.0 ** min(failures - 1, 60))


def retry_time(schedule: Schedule, failures: int, failed_at: float) -> float:
    """When a job that failed at ``failed_at`` (``failures`` in a row) runs next.

    The back-off delay, capped at the job's period, or its next tick if sooner.
    """
    tick = schedule.next_tick(failed_at)
    if failures <= 0:
        return tick
    delay = backoff_delay(failures, schedule.period(failed_at))
    return min(tick, failed_at + delay)
