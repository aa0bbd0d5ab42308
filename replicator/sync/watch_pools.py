"""The target pools of a watch: the one new runs use, and the retired ones runs still hold.

A reloaded config may change how registries are reached (credentials, TLS,
limits, a rotated password file), so every successful reload opens a new
:class:`~replicator.sync.targets.TargetPool` for the runs that start from then
on.  A run keeps the pool it started with; a retired pool is closed when its
last run gives it back.  The request counters of a pool that closes are kept
(:meth:`WatchPools.registry_totals` adds them in), so the service's registry
counters never go backwards.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from replicator.observe.metrics import RegistryFigures
from replicator.sync.config import SyncConfig
from replicator.sync.service_figures import registry_figures
from replicator.sync.targets import TargetPool

#: Opens the pool of a config (its registries' settings over the command line's).
PoolOpener = Callable[[SyncConfig], TargetPool]


class WatchPools:
    """The current pool, the retired ones, and who holds which (see the module doc)."""

    def __init__(self, opener: PoolOpener, config: SyncConfig) -> None:
        self._opener = opener
        self.current = opener(config)
        self._users: dict[int, int] = {}
        self._retired: list[TargetPool] = []
        self._closed_totals: dict[str, RegistryFigures] = {}

    def lease(self) -> TargetPool:
        """The pool a run starting now uses; give it back with :meth:`give_back`."""
        pool = self.current
        self._users[id(pool)] = self._users.get(id(pool), 0) + 1
        return pool

    async def give_back(self, pool: TargetPool) -> None:
        """A run is over with ``pool``: a retired pool nobody holds any more is closed."""
        left = self._users.get(id(pool), 1) - 1
        self._users[id(pool)] = left
        if left <= 0 and pool in self._retired:
            self._retired.remove(pool)
            await self._close(pool)

    async def renew(self, config: SyncConfig) -> None:
        """Open a pool for ``config``; retire the current one (closed at once when unused)."""
        old, self.current = self.current, self._opener(config)
        if self._users.get(id(old), 0) > 0:
            self._retired.append(old)
        else:
            await self._close(old)

    async def _close(self, pool: TargetPool) -> None:
        self._users.pop(id(pool), None)
        for name, fig in registry_figures(pool.targets()).items():
            self._closed_totals.setdefault(name, RegistryFigures()).add(fig)
        with anyio.CancelScope(shield=True):
            await pool.aclose()

    def registry_totals(self) -> dict[str, RegistryFigures]:
        """Per registry: the request counters since the watch started (closed pools included)."""
        totals: dict[str, RegistryFigures] = {}
        for name, fig in self._closed_totals.items():
            totals.setdefault(name, RegistryFigures()).add(fig)
        for pool in (self.current, *self._retired):
            for name, fig in registry_figures(pool.targets()).items():
                totals.setdefault(name, RegistryFigures()).add(fig)
        return totals

    async def aclose(self) -> None:
        """Close every pool (the watch is over)."""
        for pool in (*self._retired, self.current):
            await self._close(pool)
        self._retired.clear()
