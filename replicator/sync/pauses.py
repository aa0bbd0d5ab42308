"""Rate-limit pauses during one sync: how often, and how long, each host was left alone.

The registry transport counts its quota pauses in each target's
:class:`~replicator.targets.base.RequestStats` (``rate_limit_pauses``,
``rate_limit_paused_ms``) for as long as the target lives; a pool may serve
several syncs (watch mode).  :class:`QuotaPauses` notes the counters when a
sync starts and gives what was added since, per host, for the sync's report.
"""

from __future__ import annotations

from replicator.sync.targets import TargetPool
from replicator.targets.base import CountsRequests


class QuotaPauses:
    """The rate-limit pauses of every counting target of ``targets`` since this was made."""

    def __init__(self, targets: TargetPool) -> None:
        self.targets = targets
        self.before = {
            id(t): (t.stats.rate_limit_pauses, t.stats.rate_limit_paused_ms)
            for t in targets.targets()
            if isinstance(t, CountsRequests)
        }

    def since(self) -> dict[str, dict[str, int]]:
        """``host -> {"pauses": n, "paused_ms": ms}`` for every host paused since (others left out)."""
        out: dict[str, dict[str, int]] = {}
        for target in self.targets.targets():
            if not isinstance(target, CountsRequests):
                continue
            pauses, paused_ms = self.before.get(id(target), (0, 0))
            pauses = target.stats.rate_limit_pauses - pauses
            paused_ms = target.stats.rate_limit_paused_ms - paused_ms
            if pauses or paused_ms:
                out[target.display] = {"pauses": pauses, "paused_ms": paused_ms}
        return out
