"""The engine's ledger for one attempt of a run: the run's ledger plus a tally of what
this attempt wrote.

:class:`AttemptLedger` passes every call through to the run's own ledger (the
journal's, or one in memory) and keeps, on the side, what the run layer needs
to report truthfully whatever ends the attempt:

* which destination repositories received a write (a blob mounted or
  uploaded, a manifest pushed, a referrers index updated, a tag set) — a job
  whose destinations received none was already *up to date*;
* how far each upload this attempt worked on got, from the offsets the
  destinations acknowledged: the bytes of uploads left unfinished (a stop, a
  failure) are counted in the attempt's bytes sent, which the engine counts
  only for blobs it completed.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicator.engine import Confirmation, Ledger
from replicator.engine.ledger import DurableLedger, RepairableLedger
from replicator.targets.base import UploadProgress

#: How a confirmation says the destination was written to (not merely found).
WRITES = frozenset({"mounted", "uploaded", "pushed", "updated", "tagged"})

_Key = tuple[str, str, str]  # (location, repository, digest)


@dataclass(slots=True)
class _Upload:
    """Offsets of one upload as this attempt saw them acknowledged."""

    start: int
    latest: int
    abandoned: int = 0  # acknowledged bytes of sessions that had to start over


class AttemptLedger:
    """A :class:`~replicator.engine.Ledger` that tallies one attempt's writes (see module doc)."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        #: ``(location, repository)`` of every destination repository written to.
        self.written: set[tuple[str, str]] = set()
        #: Uploads this attempt worked on and did not finish (finished ones are dropped).
        self._uploads: dict[_Key, _Upload] = {}

    async def record(self, confirmation: Confirmation) -> None:
        """Pass the confirmation on; note a write and a finished upload."""
        c = confirmation
        if c.how in WRITES:
            self.written.add((c.location, c.repository))
        if c.kind == "blob":
            self._uploads.pop((c.location, c.repository, c.digest), None)
        await self.inner.record(confirmation)

    async def lookup(self, location: str, repository: str, digest: str) -> Confirmation | None:
        """The run ledger's confirmation for ``digest`` there, if any."""
        return await self.inner.lookup(location, repository, digest)

    async def locate(self, location: str, digest: str) -> list[str]:
        """Repositories of ``location`` the run ledger knows to hold ``digest``."""
        return await self.inner.locate(location, digest)

    async def tagged(self, location: str, repository: str, tag: str) -> str | None:
        """The digest the run ledger confirmed for the tag, if any."""
        return await self.inner.tagged(location, repository, tag)

    async def upload_progress(
        self, location: str, repository: str, digest: str
    ) -> UploadProgress | None:
        """The upload session an earlier attempt left, if the run ledger knows one."""
        return await self.inner.upload_progress(location, repository, digest)

    async def record_progress(
        self, location: str, progress: UploadProgress, *, durable: bool = True
    ) -> None:
        """Note the acknowledged offset, then pass the progress on."""
        key = (location, progress.repository, progress.digest)
        seen = self._uploads.get(key)
        if seen is None:
            earlier = await self.inner.upload_progress(*key)
            resumed = earlier is not None and 0 < earlier.offset <= progress.offset
            start = earlier.offset if resumed and earlier is not None else 0
            self._uploads[key] = _Upload(start, progress.offset)
        elif progress.offset < seen.latest:  # the session started over
            seen.abandoned += seen.latest - seen.start
            seen.start = seen.latest = progress.offset
        else:
            seen.latest = progress.offset
        await self.inner.record_progress(location, progress, durable=durable)

    async def flush(self) -> None:
        """Make what the run ledger holds durable (a no-op for a ledger in memory)."""
        if isinstance(self.inner, DurableLedger):
            await self.inner.flush()

    async def forget(self, location: str, repository: str, digest: str) -> None:
        """The destination lost ``digest``: the run ledger forgets it too."""
        if isinstance(self.inner, RepairableLedger):
            await self.inner.forget(location, repository, digest)

    def unfinished_upload_bytes(self) -> int:
        """Bytes destinations acknowledged this attempt for uploads it did not finish."""
        return sum(up.abandoned + up.latest - up.start for up in self._uploads.values())
