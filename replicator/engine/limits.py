"""Concurrency limits: one global cap plus adaptive (AIMD) limits per location and kind.

The engine never talks to a store without holding a slot.  A slot is taken from

* the global cap (``--concurrency``), shared by every request of the run, and
* the limiter of the location (registry host or layout path) and *kind* of work:
  ``"meta"`` for manifest, tag and referrers requests, ``"blob"`` for blob
  transfers.  Metadata and bytes are limited separately so that a few long layer
  uploads never starve the small requests that discover more work.

Each per-location limiter adapts like TCP congestion control (AIMD): when the
location answers "slow down" (429 / 503 after the target's own retries, i.e. a
:class:`~replicator.errors.RateLimitedError` or a :class:`~replicator.errors.ServerError`
with status 503) its limit is halved; every success grows it back by
``1/limit`` (about one slot per round of requests), up to its maximum.  Only one
halving happens per round: a congestion signal from a request that started before
the last decrease is ignored, so a burst of failures from one overload does not
collapse the limit to 1.

The configured per-location sizes are where a limiter *starts* (its base).  Quick
work may take it further, up to ``burst_per_location`` (by default the global cap):
like TCP's slow start, each quick success adds a whole slot until the location
first signals congestion (the limit doubles per round), then AIMD's ``1/limit``.
A slot held for at least ``quick_hold`` seconds (a large layer) is not quick: it
never grows the limit beyond the base and takes one burst slot back each time, so
many small blobs run wide while large ones stay at the configured width.

The global cap is taken *after* the per-location slots: it counts work that runs,
never work queued behind a busy location, so hundreds of queued blob transfers
cannot hold the global slots that metadata requests (or another location) need.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import anyio

from replicator.errors import RateLimitedError, RegistryError, ServerError

Kind = Literal["meta", "blob"]
T = TypeVar("T")
#: A monotonic counter of retried / throttled answers of one location.
Signal = Callable[[], int]

#: HTTP statuses that mean "the server is overloaded", triggering a decrease.
CONGESTION_STATUSES = frozenset({429, 503})


class _Waiter:
    """A task queued for a slot; ``granted`` once a slot was handed to it."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


def is_congestion(error: BaseException) -> bool:
    """True when ``error`` says the remote is overloaded (429 / 503)."""
    if isinstance(error, RateLimitedError):
        return True
    return isinstance(error, ServerError) and error.status in CONGESTION_STATUSES


class AdaptiveLimit:
    """A semaphore whose size follows AIMD between ``minimum`` and ``maximum``.

    Guarantees: at most ``int(limit)`` holders at any time (never fewer than
    ``minimum``); waiters are served first come, first served.
    """

    def __init__(self, initial: int, *, minimum: int = 1, maximum: int | None = None) -> None:
        if initial < 1:
            raise ValueError("initial limit must be >= 1")
        self.minimum = max(1, minimum)
        #: The configured size: slow work grows the limit back to here, not beyond.
        self.base = initial
        self.maximum = max(initial, maximum if maximum is not None else initial)
        self._limit = float(initial)
        self._in_flight = 0
        self._waiters: list[_Waiter] = []
        self._last_decrease = 0.0
        self.decreases = 0

    @property
    def limit(self) -> int:
        """The number of concurrent holders currently allowed."""
        return max(self.minimum, int(self._limit))

    @property
    def in_flight(self) -> int:
        """Holders right now."""
        return self._in_flight

    async def acquire(self) -> float:
        """Wait for a slot; return the monotonic time the slot was granted."""
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return time.monotonic()
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                # We were granted the slot but are going away: pass it on.
                self._in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise
        return time.monotonic()

    def release(self) -> None:
        """Give a slot back."""
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.pop(0)
            waiter.granted = True
            self._in_flight += 1
            waiter.event.set()

    def on_success(self, *, quick: bool = True) -> None:
        """Grow after a success: slow start, then about one slot per round.

        Until the first congestion signal a quick success adds a whole slot (the
        limit doubles per round); afterwards ``1/limit``.  A slow success (``quick``
        False) only grows the limit up to :attr:`base` and, above it, gives one
        burst slot back.
        """
        if not quick:
            if self._limit > self.base:
                self._limit = max(float(self.base), self._limit - 1.0)
                return
            ceiling = float(self.base)
        else:
            ceiling = float(self.maximum)
        if self._limit < ceiling:
            step = 1.0 if self.decreases == 0 else 1.0 / self._limit
            self._limit = min(ceiling, self._limit + step)
            self._wake()

    def on_congestion(self, started: float) -> None:
        """Multiplicative decrease, once per round (requests started after the last one)."""
        if started < self._last_decrease:
            return
        self._limit = max(float(self.minimum), self._limit / 2.0)
        self._last_decrease = time.monotonic()
        self.decreases += 1


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Sizes of the limits; ``concurrency`` is the global cap.

    ``meta_per_location`` and ``blob_per_location`` are where each location's
    limiters start (and what slow transfers keep them at); quick work may grow
    them up to ``burst_per_location`` (``None``: the global cap).  A slot held
    for less than ``quick_hold`` seconds counts as quick.
    """

    concurrency: int = 32
    meta_per_location: int = 16
    blob_per_location: int = 8
    burst_per_location: int | None = None
    quick_hold: float = 1.0


class Limits:
    """The global cap and the adaptive limiters of every (location, kind) of a run."""

    def __init__(self, settings: LimitSettings | None = None) -> None:
        self.settings = settings or LimitSettings()
        # fast_acquire: no scheduling round when a slot is free (as asyncio's).
        self._global = anyio.Semaphore(max(1, self.settings.concurrency), fast_acquire=True)
        self._limiters: dict[tuple[str, Kind], AdaptiveLimit] = {}

    def limiter(self, location: str, kind: Kind) -> AdaptiveLimit:
        """The limiter of ``location`` for ``kind`` (created on first use)."""
        key = (location, kind)
        lim = self._limiters.get(key)
        if lim is None:
            size = (
                self.settings.meta_per_location
                if kind == "meta"
                else self.settings.blob_per_location
            )
            cap = max(1, self.settings.concurrency)
            size = max(1, min(size, cap))
            burst = self.settings.burst_per_location
            burst = cap if burst is None else max(1, min(burst, cap))
            lim = AdaptiveLimit(size, maximum=burst)
            self._limiters[key] = lim
        return lim

    @contextlib.asynccontextmanager
    async def slot(
        self, kind: Kind, *locations: str, signals: Mapping[str, Signal] | None = None
    ) -> AsyncIterator[None]:
        """Hold one slot of ``kind`` at every location given, then a global slot.

        Locations are acquired in sorted order, the global cap last (deadlock-free
        when several transfers each need a source and destinations).  A slot
        held for less than ``quick_hold`` seconds may grow the limiters beyond
        their base (see the module doc).  Success or congestion
        is reported to each limiter when the block exits.  ``signals`` maps a
        location to a counter of slow-down answers it gave (e.g. a target's
        retry count): when it grew while the slot was held, the location is
        treated as congested even though the request finally succeeded (the
        target's own retries hide 429/503 answers from the caller).
        """
        order = sorted(set(locations))
        limiters = [self.limiter(loc, kind) for loc in order]
        granted: list[tuple[AdaptiveLimit, float]] = []
        try:
            for lim in limiters:
                granted.append((lim, await lim.acquire()))
            # The global cap last: it counts running work, not work queued above.
            async with self._global:
                before = {loc: sig() for loc, sig in (signals or {}).items()}
                began = time.monotonic()
                try:
                    yield
                except BaseException as exc:
                    if is_congestion(exc):
                        where = exc.registry if isinstance(exc, RegistryError) else None
                        blamed = [g for g, loc in zip(granted, order, strict=False) if loc == where]
                        for lim, started in blamed or granted:
                            lim.on_congestion(started)
                    raise
                else:
                    quick = time.monotonic() - began < self.settings.quick_hold
                    for (lim, started), loc in zip(granted, order, strict=True):
                        sig = (signals or {}).get(loc)
                        if sig is not None and sig() > before[loc]:
                            lim.on_congestion(started)
                        else:
                            lim.on_success(quick=quick)
        finally:
            for lim, _ in granted:
                lim.release()

    async def call(
        self,
        kind: Kind,
        location: str,
        fn: Callable[[], Awaitable[T]],
        signal: Signal | None = None,
    ) -> T:
        """Run ``fn()`` while holding a ``kind`` slot at ``location`` (see :meth:`slot`)."""
        async with self.slot(kind, location, signals={location: signal} if signal else None):
            return await fn()

    def snapshot(self) -> dict[str, int]:
        """Current limit of every limiter, ``"location/kind" -> limit`` (for reports)."""
        return {f"{loc}/{kind}": lim.limit for (loc, kind), lim in sorted(self._limiters.items())}
