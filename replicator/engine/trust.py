"""How far a run trusts its ledger: this run's confirmations, and inherited ones.

A resumed run starts with confirmations an earlier attempt recorded (the
journal), and a durable ledger may know blobs from earlier runs (its blob
cache).  Those *inherited* confirmations save the requests of asking again,
but the destination may have lost the content since: a cleanup job, a wiped
registry, garbage collection.  :class:`LedgerView` is the engine's view of the
ledger for one run.  It tells inherited answers from this run's own, notes the
destination repositories where inherited answers were used, and can *distrust*
a repository: from then on inherited confirmations there are hidden (and
forgotten by a ledger that can forget, so a later attempt does not trust them
either), while what this run confirmed itself still answers.

The engine distrusts a repository when the destination contradicts the
ledger there (a write refused because something it names is missing, or a
journalled root that is not there), and every repository under
``--deep-check``.  Upload sessions are never hidden: the store is asked for
their confirmed offset before they continue.
"""

from __future__ import annotations

from replicator.engine.ledger import (
    Confirmation,
    DurableLedger,
    Ledger,
    MemoryLedger,
    RepairableLedger,
)
from replicator.engine.state import DestRepo
from replicator.targets.base import UploadProgress


class LedgerView:
    """One run's view of its ledger (see the module doc); itself a :class:`Ledger`."""

    def __init__(self, inner: Ledger, *, distrust_all: bool = False) -> None:
        self.inner = inner
        self.distrust_all = distrust_all
        self._distrusted: set[DestRepo] = set()
        #: Tags this run set, per (location, repository): the tag strings are
        #: the jobs' own, so a run of many tags keeps no key object per tag.
        self._my_tags: dict[tuple[str, str], set[str]] = {}
        #: Destination repositories where an inherited confirmation answered.
        self.inherited_used: set[DestRepo] = set()
        #: Inherited confirmations hidden because their repository is distrusted.
        self.hidden = 0

    def distrust(self, repo: DestRepo) -> None:
        """Hide inherited confirmations of ``repo`` from now on."""
        self._distrusted.add(repo)

    def distrusts(self, repo: DestRepo) -> bool:
        """True when inherited confirmations of ``repo`` are hidden."""
        return self.distrust_all or repo in self._distrusted

    async def record(self, confirmation: Confirmation) -> None:
        """Record through the inner ledger, remembering the tags this run set."""
        c = confirmation
        await self.inner.record(c)
        if c.kind == "tag" and c.tag is not None:
            mine = self._my_tags.get((c.location, c.repository))
            if mine is None:
                mine = self._my_tags[(c.location, c.repository)] = set()
            mine.add(c.tag)

    async def lookup(self, location: str, repository: str, digest: str) -> Confirmation | None:
        """The inner answer, unless it is inherited in a distrusted repository.

        Whether an answer is inherited the inner ledger says
        (``Confirmation.inherited``): a journal knows what it loaded.
        """
        found = await self.inner.lookup(location, repository, digest)
        if found is None or not found.inherited:
            return found
        repo = DestRepo(location, repository)
        if self.distrusts(repo):
            await self._forget(location, repository, digest)
            return None
        self.inherited_used.add(repo)
        return found

    async def locate(self, location: str, digest: str) -> list[str]:
        """Mount candidates, without inherited ones in distrusted repositories."""
        repos = await self.inner.locate(location, digest)
        if not (self.distrust_all or self._distrusted):
            return repos
        return [r for r in repos if not self.distrusts(DestRepo(location, r))]

    async def tagged(self, location: str, repository: str, tag: str) -> str | None:
        """Where a tag was confirmed to point, unless inherited in a distrusted repository."""
        found = await self.inner.tagged(location, repository, tag)
        if found is None or tag in self._my_tags.get((location, repository), ()):
            return found
        repo = DestRepo(location, repository)
        if self.distrusts(repo):
            return None
        self.inherited_used.add(repo)
        return found

    async def record_progress(
        self, location: str, progress: UploadProgress, *, durable: bool = True
    ) -> None:
        """Pass through: upload sessions are checked with the store before use."""
        await self.inner.record_progress(location, progress, durable=durable)

    async def upload_progress(
        self, location: str, repository: str, digest: str
    ) -> UploadProgress | None:
        """Pass through (see :meth:`record_progress`)."""
        return await self.inner.upload_progress(location, repository, digest)

    async def flush(self) -> None:
        """Make what was recorded durable, when the inner ledger can."""
        if isinstance(self.inner, DurableLedger):
            await self.inner.flush()

    async def forget(self, location: str, repository: str, digest: str) -> None:
        """The destination lost ``digest``: forget it here and in the inner ledger."""
        await self._forget(location, repository, digest)

    async def _forget(self, location: str, repository: str, digest: str) -> None:
        self.hidden += 1
        if isinstance(self.inner, RepairableLedger):
            await self.inner.forget(location, repository, digest)


class OverlayLedger:
    """A read-only view of a ledger with this run's records kept apart (dry runs).

    Lookups see what the inner ledger knows (a resumed run's journal: a dry run
    plans what is left) and what this run recorded; records never reach the
    inner ledger, so a dry run leaves the journal as it was.
    """

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self.own = MemoryLedger()

    async def record(self, confirmation: Confirmation) -> None:
        """Keep the confirmation in memory only."""
        await self.own.record(confirmation)

    async def lookup(self, location: str, repository: str, digest: str) -> Confirmation | None:
        """This run's record, else the inner ledger's."""
        found = await self.own.lookup(location, repository, digest)
        return found if found is not None else await self.inner.lookup(location, repository, digest)

    async def locate(self, location: str, digest: str) -> list[str]:
        """Repositories known to hold the blob, this run's first."""
        repos = await self.own.locate(location, digest)
        return repos + [r for r in await self.inner.locate(location, digest) if r not in repos]

    async def tagged(self, location: str, repository: str, tag: str) -> str | None:
        """This run's tag record, else the inner ledger's."""
        found = await self.own.tagged(location, repository, tag)
        return found if found is not None else await self.inner.tagged(location, repository, tag)

    async def record_progress(
        self, location: str, progress: UploadProgress, *, durable: bool = True
    ) -> None:
        """Nothing is uploaded in a dry run: ignored."""

    async def upload_progress(
        self, location: str, repository: str, digest: str
    ) -> UploadProgress | None:
        """No session is continued in a dry run."""
        return None

    async def forget(self, location: str, repository: str, digest: str) -> None:
        """Forget this run's record only."""
        await self.own.forget(location, repository, digest)
