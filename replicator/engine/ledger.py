"""The journal seam: every confirmation a destination gives passes through a Ledger.

The engine records a :class:`Confirmation` each time a destination confirms that
something is there — a blob found, mounted or uploaded, a manifest found or
pushed, a referrers index updated, a tag set — and asks the ledger what is
already known before doing any work.  :class:`MemoryLedger` keeps this for one
run; a durable implementation (SQLite) plugs in behind the same Protocol and
makes a rerun resume where the last one stopped.

Guarantees an implementation must give:

* ``record`` is called only after the destination confirmed; a confirmation is
  never withdrawn by the engine (a later ``forget`` is for a store that lost it).
* ``lookup`` answers from recorded confirmations only; the engine treats a hit as
  "present at the destination" and skips the work.
* Upload progress (``record_progress``/``upload_progress``) is a hint: the
  target re-asks the destination for the confirmed offset before resuming.

Optional abilities, each a protocol of its own found with ``isinstance``:
:class:`RepairableLedger` (``forget``: the destination lost what the ledger
claims, the engine repairs) and :class:`DurableLedger` (``flush``: make what was
recorded durable; awaited after a large upload's new session is recorded,
before its first byte is sent, and at the end of a run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from replicator.targets.base import UploadProgress

#: What was confirmed.
ConfirmationKind = Literal["blob", "manifest", "referrers", "tag"]
#: How: found at the destination, mounted from another repository there,
#: uploaded by this run, manifest pushed, fallback referrers index updated, tag set.
How = Literal["exists", "mounted", "uploaded", "pushed", "updated", "tagged"]


@dataclass(frozen=True, slots=True)
class Confirmation:
    """One fact a destination confirmed.

    ``location`` is the destination's location key (registry host or
    ``ocidir://path``), ``repository`` the repository inside it, ``digest`` the
    content (for a ``"referrers"`` confirmation, the referrer's digest; ``subject``
    names what it refers to), ``tag`` the tag for ``"tag"`` confirmations.
    ``inherited``: the ledger knew it before this run (an interrupted attempt's
    journal, a blob cache of earlier runs), as opposed to a confirmation this
    run recorded — the engine checks an inherited one with the destination
    where that is cheap, and distrusts it where the destination contradicts it.
    """

    kind: ConfirmationKind
    how: How
    location: str
    repository: str
    digest: str
    size: int = 0
    tag: str | None = None
    subject: str | None = None
    media_type: str | None = None
    inherited: bool = False


@runtime_checkable
class Ledger(Protocol):
    """Where the engine records and looks up destination confirmations."""

    async def record(self, confirmation: Confirmation) -> None:
        """Remember a confirmation (durably, for a journal)."""
        ...

    async def lookup(self, location: str, repository: str, digest: str) -> Confirmation | None:
        """The blob/manifest confirmation known for ``digest`` in that repository, if any."""
        ...

    async def locate(self, location: str, digest: str) -> list[str]:
        """Repositories of ``location`` known to hold blob ``digest`` (mount sources)."""
        ...

    async def tagged(self, location: str, repository: str, tag: str) -> str | None:
        """The digest a tag was last confirmed to point at, if known."""
        ...

    async def record_progress(
        self, location: str, progress: UploadProgress, *, durable: bool = True
    ) -> None:
        """Remember an upload session to ``location`` and how far it got.

        ``durable``: make it durable before returning (a session that will carry
        chunks: a killed run must know it to resume or cancel it).  False for a
        blob sent in one request, where there is nothing to resume: the record
        only lets a later run cancel a session a kill left open, and may land
        with the next group commit instead of holding up the upload.
        """
        ...

    async def upload_progress(
        self, location: str, repository: str, digest: str
    ) -> UploadProgress | None:
        """The last recorded progress of an unfinished upload, if any."""
        ...


@runtime_checkable
class DurableLedger(Protocol):
    """A ledger that batches writes and can be asked to make them durable now."""

    async def flush(self) -> None:
        """Commit everything recorded so far."""
        ...


@runtime_checkable
class RepairableLedger(Protocol):
    """A ledger that can drop a confirmation the destination contradicted."""

    async def forget(self, location: str, repository: str, digest: str) -> None:
        """Forget what is recorded for ``digest`` in that repository."""
        ...


class MemoryLedger:
    """The default ledger: confirmations of this run, in memory."""

    def __init__(self) -> None:
        self._content: dict[tuple[str, str, str], Confirmation] = {}
        self._blob_repos: dict[tuple[str, str], list[str]] = {}
        self._tags: dict[tuple[str, str, str], str] = {}
        self._uploads: dict[tuple[str, str, str], UploadProgress] = {}
        #: Every confirmation in arrival order (tests and reports read it).
        self.history: list[Confirmation] = []

    async def record(self, confirmation: Confirmation) -> None:
        """Remember ``confirmation``; a finished upload drops its progress entry."""
        c = confirmation
        self.history.append(c)
        if c.kind == "tag" and c.tag is not None:
            self._tags[(c.location, c.repository, c.tag)] = c.digest
            return
        if c.kind in ("blob", "manifest"):
            self._content.setdefault((c.location, c.repository, c.digest), c)
        if c.kind == "blob":
            repos = self._blob_repos.setdefault((c.location, c.digest), [])
            if c.repository not in repos:
                repos.append(c.repository)
            self._uploads.pop((c.location, c.repository, c.digest), None)

    async def lookup(self, location: str, repository: str, digest: str) -> Confirmation | None:
        """The confirmation for ``digest`` in ``location/repository``."""
        return self._content.get((location, repository, digest))

    async def locate(self, location: str, digest: str) -> list[str]:
        """Repositories at ``location`` holding blob ``digest``."""
        return list(self._blob_repos.get((location, digest), ()))

    async def tagged(self, location: str, repository: str, tag: str) -> str | None:
        """Digest of the last confirmed tag."""
        return self._tags.get((location, repository, tag))

    async def record_progress(
        self, location: str, progress: UploadProgress, *, durable: bool = True
    ) -> None:
        """Remember an upload's confirmed offset (in memory: ``durable`` is moot)."""
        self._uploads[(location, progress.repository, progress.digest)] = progress

    async def upload_progress(
        self, location: str, repository: str, digest: str
    ) -> UploadProgress | None:
        """The recorded progress for that upload, if any."""
        return self._uploads.get((location, repository, digest))

    async def forget(self, location: str, repository: str, digest: str) -> None:
        """Drop the confirmation of ``digest`` there (the destination lost it)."""
        self._content.pop((location, repository, digest), None)
        repos = self._blob_repos.get((location, digest))
        if repos is not None and repository in repos:
            repos.remove(repository)
