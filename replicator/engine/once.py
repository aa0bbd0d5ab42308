"""A one-shot result many tasks can await: how the engine deduplicates work.

The first task that needs a thing *claims* its :class:`Once` and does the work;
every other task awaits the same result instead of repeating the request.

A run holds one cell per node and destination (and per blob), most of them
settled before anyone waits on them: the event that wakes waiters is made only
when a task actually has to wait, so a settled cell costs a small object and
no event.
"""

from __future__ import annotations

from typing import Any

import anyio


class Once:
    """Set once (a value, or an error), awaited by any number of tasks.

    ``claimed`` is a flag for the task that took responsibility for setting it;
    later :meth:`set` calls are ignored, so a cleanup path can set an error
    without overwriting a result.  Waiting on a settled cell returns at once.
    """

    __slots__ = ("_event", "claimed", "done", "error", "value")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self.error: BaseException | None = None
        self.value: Any = None
        self.claimed = False
        #: True once an outcome is recorded.
        self.done = False

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome (first call wins) and wake the waiters."""
        if not self.done:
            self.value = value
            self.error = error
            self.done = True
            if self._event is not None:
                self._event.set()
                self._event = None

    @property
    def ok(self) -> bool:
        """True once a successful outcome is recorded."""
        return self.done and self.error is None

    async def wait(self) -> BaseException | None:
        """Wait for the outcome; return its error (None on success)."""
        if not self.done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        return self.error
