"""A one-shot result many tasks can await: how the engine deduplicates work.

The first task that needs a thing *claims* its :class:`Once` and does the work;
every other task awaits the same result instead of repeating the request.
"""

from __future__ import annotations

from typing import Any

import anyio


class Once:
    """Set once (a value, or an error), awaited by any number of tasks.

    ``claimed`` is a flag for the task that took responsibility for setting it;
    later :meth:`set` calls are ignored, so a cleanup path can set an error
    without overwriting a result.
    """

    __slots__ = ("claimed", "error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: BaseException | None = None
        self.value: Any = None
        self.claimed = False

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome (first call wins) and wake the waiters."""
        if not self.event.is_set():
            self.value = value
            self.error = error
            self.event.set()

    @property
    def done(self) -> bool:
        """True once an outcome is recorded."""
        return self.event.is_set()

    @property
    def ok(self) -> bool:
        """True once a successful outcome is recorded."""
        return self.event.is_set() and self.error is None

    async def wait(self) -> BaseException | None:
        """Wait for the outcome; return its error (None on success)."""
        await self.event.wait()
        return self.error
