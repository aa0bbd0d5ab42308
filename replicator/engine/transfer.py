"""Moving blob bytes: one source read fanned out to several uploads.

:class:`BlobTee` reads a blob from its source once and feeds every destination
upload through its own bounded buffer, so memory stays flat (``buffer`` chunks
per destination) however large the blob, and each source byte is read once
however many destinations need it.  Each destination gets a
:data:`~replicator.targets.base.BlobOpener`: its first open at offset 0 reads
the shared stream; any other open (a retried upload, a resume at an offset)
reads the source again on its own, so a destination's retry never disturbs the
others.  A destination that finishes or fails is detached and never stalls the
others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from replicator.errors import ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import BlobOpener, Target

#: Called with the size of each chunk read from the source.
OnBytes = Callable[[int], None]


def reading_opener(
    target: Target, repository: str, blob: Descriptor, on_bytes: OnBytes
) -> BlobOpener:
    """An opener that streams ``blob`` from ``target`` and reports every chunk read.

    An error of the source read (a short, long or corrupt blob, a dropped
    connection) surfaces inside the destination's upload, which iterates this
    stream: it is marked as the source's before it leaves, so it is never
    reported against the destination.
    """

    async def stream(offset: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in target.fetch_blob(repository, blob, offset):
                on_bytes(len(chunk))
                yield chunk
        except ReplicatorError as exc:
            exc.side = exc.side or "source"
            raise

    return stream


class BlobTee:
    """One source read of ``blob`` delivered to ``consumers`` uploads (see module doc).

    Run :meth:`pump` in a task next to the uploads; give consumer ``i``
    :meth:`opener` ``(i)`` and call :meth:`detach` ``(i)`` when its upload ends.
    A source failure is re-raised to every consumer reading the shared stream.
    """

    def __init__(
        self,
        target: Target,
        repository: str,
        blob: Descriptor,
        consumers: int,
        *,
        buffer: int = 8,
        on_bytes: OnBytes | None = None,
    ) -> None:
        self.target = target
        self.repository = repository
        self.blob = blob
        self._on_bytes = on_bytes or (lambda n: None)
        self._channels: list[tuple[MemoryObjectSendStream[bytes], MemoryObjectReceiveStream[bytes]]]
        self._channels = [
            anyio.create_memory_object_stream[bytes](max(1, buffer)) for _ in range(consumers)
        ]
        self._fresh = [True] * consumers
        self._detached: set[int] = set()
        self._opened = anyio.Event()
        self.error: BaseException | None = None
        #: Times the source was read from offset 0 by the shared stream (0 or 1).
        self.shared_reads = 0

    def opener(self, i: int) -> BlobOpener:
        """The opener of consumer ``i``."""

        def open_(offset: int) -> AsyncIterator[bytes]:
            if offset == 0 and self._fresh[i]:
                self._fresh[i] = False
                self._opened.set()
                return self._drain(i)
            # A resume at an offset (or a retry) reads on its own: the shared
            # stream must not wait for this consumer any more.
            self._leave_shared(i)
            return reading_opener(self.target, self.repository, self.blob, self._on_bytes)(offset)

        return open_

    async def _drain(self, i: int) -> AsyncIterator[bytes]:
        receive = self._channels[i][1]
        with receive:
            async for chunk in receive:
                yield chunk
        if self.error is not None:
            raise self.error

    def detach(self, i: int) -> None:
        """Consumer ``i`` is done (or gone): stop feeding it."""
        self._leave_shared(i)

    def _leave_shared(self, i: int) -> None:
        """Consumer ``i`` no longer reads the shared stream: never block the pump on it."""
        self._detached.add(i)
        self._fresh[i] = False
        self._channels[i][1].close()
        if len(self._detached) == len(self._channels):
            self._opened.set()

    async def pump(self) -> None:
        """Read the source once (when the first consumer opens) and feed every live consumer."""
        await self._opened.wait()
        live = {i: s for i, (s, _) in enumerate(self._channels) if i not in self._detached}
        try:
            if not live:
                return
            self.shared_reads += 1
            async for chunk in self.target.fetch_blob(self.repository, self.blob, 0):
                self._on_bytes(len(chunk))
                for i, sender in list(live.items()):
                    try:
                        await sender.send(chunk)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        live.pop(i)
                if not live:
                    return
        except ReplicatorError as exc:
            exc.side = exc.side or "source"
            self.error = exc
        finally:
            for sender, _ in self._channels:
                sender.close()
