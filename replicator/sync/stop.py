"""Asking a run to stop: the first request is graceful, any further one is hard.

A :class:`StopRequest` is handed to :func:`~replicator.sync.runner.run_copy`;
whoever owns the run calls :meth:`StopRequest.request` (the CLI does it from
SIGTERM/SIGINT through :meth:`StopRequest.on_signals`).  What the run does:

1. first request: no new blob upload starts, chunked uploads in flight pause at
   their next acknowledged chunk (its offset recorded), then the engine is
   cancelled and returns its partial report; the journal run is marked
   ``interrupted`` and a rerun resumes it;
2. a second request, or the grace period running out, cancels whatever is still
   in flight without waiting for a chunk boundary.

Requests may come before the run starts (it then copies nothing) and from any
code running on the run's event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator, Sequence

import anyio

#: Signals that stop a copy gracefully when :meth:`StopRequest.on_signals` is used.
STOP_SIGNALS: tuple[int, ...] = (int(signal.SIGTERM), int(signal.SIGINT))


class StopRequest:
    """Counts stop requests and lets a run wait for the first or the second one."""

    def __init__(self) -> None:
        self._reasons: list[str] = []
        self._events: dict[int, anyio.Event] = {}

    @property
    def requested(self) -> bool:
        """True once a stop was requested."""
        return bool(self._reasons)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why each request was made (``SIGTERM``, ``requested``...), in order."""
        return tuple(self._reasons)

    def request(self, reason: str = "requested") -> None:
        """Ask the run to stop: gracefully the first time, at once after that."""
        self._reasons.append(reason)
        for count, event in self._events.items():
            if count <= len(self._reasons):
                event.set()

    async def wait(self, count: int = 1) -> None:
        """Return once ``count`` stop requests were made."""
        if len(self._reasons) >= count:
            return
        event = self._events.get(count)
        if event is None:
            event = self._events[count] = anyio.Event()
        await event.wait()

    @contextlib.contextmanager
    def on_signals(self, signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
        """Turn ``signals`` into stop requests while the block runs (event loop handlers).

        Where the event loop cannot handle signals (not the main thread, Windows)
        the signals keep their previous behaviour.
        """
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for sig in signals:
            try:
                loop.add_signal_handler(sig, self.request, signal.Signals(sig).name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
