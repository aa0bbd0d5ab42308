"""A durable :class:`~replicator.engine.ledger.Ledger` on top of the SQLite journal.

The engine records every destination confirmation through the ledger seam.
:class:`JournalLedger` keeps them in memory for fast lookups (the engine asks
before every piece of work) and queues each one to the journal, so a killed run
resumes with everything its destinations had acknowledged:

* confirmations of the run being resumed (same run key, not finished) answer
  ``lookup`` and ``tagged`` — that work is not asked for again;
* the cross-run blob cache answers ``locate`` (mount candidates) and, for blobs,
  ``lookup``: a blob some earlier run saw in that very repository is assumed
  present.  When a destination later refuses a manifest because such a blob is
  unknown, the engine calls :meth:`forget` and copies it again (repair);
* chunked uploads in flight answer ``upload_progress`` (a hint: the target
  asks the destination for the confirmed offset before continuing).
"""

from __future__ import annotations

from replicator.engine.ledger import Confirmation
from replicator.journal.store import BLOB, MANIFEST, REFERRERS, TAG, Journal, UploadState
from replicator.targets.base import UploadProgress

_KIND = {"blob": BLOB, "manifest": MANIFEST, "referrers": REFERRERS, "tag": TAG}
#: Flags of a confirmation kept in memory (see :attr:`JournalLedger._content`).
_IS_BLOB = 1
_INHERITED = 2


class JournalLedger:
    """Ledger for one run, backed by :class:`~replicator.journal.store.Journal`."""

    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        #: Blobs and manifests confirmed, as flags (kind, inherited), per
        #: (location, repository) then digest: one small entry per graph node
        #: (no key object of its own), the Confirmation is made when asked for.
        self._content: dict[tuple[str, str], dict[str, int]] = {}
        #: Where tags point, per (location, repository) then tag: no key
        #: object per tag (a run of many tags shares one per repository).
        self._tags: dict[tuple[str, str], dict[str, str]] = {}
        self._uploads: dict[tuple[str, str, str], UploadProgress] = {}
        #: The cross-run blob cache, per location (loaded once, kept up to date,
        #: this run's blobs first).
        self._cache: dict[str, dict[str, list[str]]] = {}
        #: How many confirmations were loaded from the journal at start.
        self.resumed_entries = 0
        for location, repository, digest, kind, detail in journal.confirmations(run_id):
            self.resumed_entries += 1
            if kind == TAG:
                self._note_tag(location, repository, detail, digest)
            elif kind in (BLOB, MANIFEST):
                if kind == BLOB:
                    self._note_blob(location, repository, digest)
                flags = (_IS_BLOB if kind == BLOB else 0) | _INHERITED
                self._repo_content(location, repository)[digest] = flags
        #: How many upload sessions an earlier attempt left in flight.
        self.resumed_uploads = 0
        for up in journal.uploads(run_id):
            self.resumed_uploads += 1
            self._uploads[(up.location, up.repository, up.digest)] = UploadProgress(
                repository=up.repository, digest=up.digest, location=up.upload_url, offset=up.offset
            )

    async def record(self, confirmation: Confirmation) -> None:
        """Remember ``confirmation`` in memory and queue it to the journal."""
        c = confirmation
        if c.kind == "tag" and c.tag is not None:
            self._note_tag(c.location, c.repository, c.tag, c.digest)
            self.journal.confirm(self.run_id, c.location, c.repository, c.digest, TAG, c.tag)
            return
        if c.kind == "referrers":
            self.journal.confirm(
                self.run_id, c.location, c.repository, c.digest, REFERRERS, c.subject or ""
            )
            return
        self._repo_content(c.location, c.repository).setdefault(
            c.digest, _IS_BLOB if c.kind == "blob" else 0
        )
        self.journal.confirm(self.run_id, c.location, c.repository, c.digest, _KIND[c.kind])
        if c.kind == "blob":
            self._uploads.pop((c.location, c.repository, c.digest), None)
            self._note_blob(c.location, c.repository, c.digest)

    def _repo_content(self, location: str, repository: str) -> dict[str, int]:
        content = self._content.get((location, repository))
        if content is None:
            content = self._content[(location, repository)] = {}
        return content

    def _note_tag(self, location: str, repository: str, tag: str, digest: str) -> None:
        tags = self._tags.get((location, repository))
        if tags is None:
            tags = self._tags[(location, repository)] = {}
        tags[tag] = digest

    def _note_blob(self, location: str, repository: str, digest: str) -> None:
        """Put ``repository`` first among the holders of ``digest`` (mount candidates)."""
        cached = self._cached(location).setdefault(digest, [])
        if cached and cached[0] == repository:
            return
        if repository in cached:
            cached.remove(repository)
        cached.insert(0, repository)

    def _cached(self, location: str) -> dict[str, list[str]]:
        table = self._cache.get(location)
        if table is None:
            table = self._cache[location] = self.journal.blob_cache(location)
        return table

    async def lookup(self, location: str, repository: str, digest: str) -> Confirmation | None:
        """This run's confirmation, or a blob the cross-run cache places in that repository."""
        content = self._content.get((location, repository))
        flags = None if content is None else content.get(digest)
        if flags is not None:
            return Confirmation(
                kind="blob" if flags & _IS_BLOB else "manifest",
                how="exists",
                location=location,
                repository=repository,
                digest=digest,
                inherited=bool(flags & _INHERITED),
            )
        if repository in self._cached(location).get(digest, ()):
            return Confirmation(
                kind="blob",
                how="exists",
                location=location,
                repository=repository,
                digest=digest,
                inherited=True,
            )
        return None

    async def locate(self, location: str, digest: str) -> list[str]:
        """Repositories of ``location`` that hold ``digest``: this run's first, then the cache."""
        return list(self._cached(location).get(digest, ()))

    async def tagged(self, location: str, repository: str, tag: str) -> str | None:
        """Digest this run confirmed for the tag, if any."""
        tags = self._tags.get((location, repository))
        return None if tags is None else tags.get(tag)

    async def record_progress(
        self, location: str, progress: UploadProgress, *, durable: bool = True
    ) -> None:
        """Record an upload session: new (offset 0) or after an acknowledged chunk.

        With ``durable`` (a chunked upload) committed right away, on this
        thread: a new session (offset 0) before its first byte is sent, so a
        killed run knows every session it opened (to resume it, or to cancel it
        at the end); later offsets after each acknowledged chunk, before the
        next one is sent.  (The destination's own upload status remains the
        truth a resume starts from.)  Without it (a blob sent in one request)
        the record waits for the writer thread's next group commit: a kill in
        that window can leave one small session the rerun does not know of.
        """
        self._uploads[(location, progress.repository, progress.digest)] = progress
        self.journal.record_upload(
            self.run_id,
            UploadState(
                location, progress.repository, progress.digest, progress.location, progress.offset
            ),
        )
        if durable:
            self.journal.commit_now()

    async def flush(self) -> None:
        """Wait until everything recorded so far is committed to the journal."""
        await self.journal.flush()

    async def upload_progress(
        self, location: str, repository: str, digest: str
    ) -> UploadProgress | None:
        """The upload session a previous attempt of this run left, if any."""
        return self._uploads.get((location, repository, digest))

    async def forget(self, location: str, repository: str, digest: str) -> None:
        """The destination lost ``digest``: drop it from memory and from the journal."""
        self._content.get((location, repository), {}).pop(digest, None)
        self._uploads.pop((location, repository, digest), None)
        cached = self._cached(location).get(digest)
        if cached and repository in cached:
            cached.remove(repository)
        self.journal.forget(location, repository, digest)
        self.journal.drop_upload(self.run_id, location, repository, digest)
