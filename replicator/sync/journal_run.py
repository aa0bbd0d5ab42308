"""The journal's side of a run: its row, its ledger, its sources, its leftover sessions.

:class:`JournalRun` opens the journal a :class:`~replicator.sync.request.JournalChoice`
names, begins the run for the request's key (continuing an unfinished run with
that key unless ``fresh``), and at the end marks it with its state and figures.

Guarantees:

* The run's record of its command is what the front end put in the request,
  never ``sys.argv``: no credential reaches the journal.
* A run counts as *resumed* only when an earlier attempt left something to
  resume (a confirmation or an upload session); continuing the row of a run
  that confirmed nothing is silent.
* The digest each job's source pointed at is recorded the first time the run
  resolves it; a resumed attempt that finds a source pointing elsewhere says so
  (:class:`SourceMoved`).
* The bytes sent are added to the run's total at the end of each attempt
  (docs/RESUME.md: summed over its attempts).
* A journal that stops writing mid-run (disk full...) is reported by
  :attr:`JournalRun.write_error`; nothing more is written to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import anyio

from replicator.engine import CopyReport
from replicator.errors import JournalError
from replicator.journal.ledger import JournalLedger
from replicator.journal.store import Journal, default_journal_path
from replicator.observe.logging import get_logger
from replicator.sync.request import JournalChoice
from replicator.sync.targets import TargetPool
from replicator.targets.base import UploadCanceller

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SourceMoved:
    """A job's source points at another digest than when the run began."""

    source: str
    was: str
    now: str


def run_counts(report: CopyReport) -> dict[str, int]:
    """The counters the journal keeps of an attempt."""
    return {
        "manifests_pushed": report.manifests_pushed,
        "manifests_skipped": report.manifests_skipped,
        "blobs_uploaded": report.blobs_uploaded,
        "blobs_mounted": report.blobs_mounted,
        "blobs_skipped": report.blobs_skipped,
        "tags_set": report.tags_set,
        "failures": len(report.failures),
    }


class JournalRun:
    """One run in the journal (see the module doc).  Use :meth:`begin`; :meth:`close` at the end."""

    def __init__(self, journal: Journal, run_id: str, continued: bool) -> None:
        self.journal = journal
        self.run_id = run_id
        self.ledger = JournalLedger(journal, run_id)
        #: An earlier attempt left confirmations or upload sessions to resume from.
        self.resumed = continued and bool(
            self.ledger.resumed_entries or self.ledger.resumed_uploads
        )
        self._sources = journal.sources(run_id) if continued else {}

    @classmethod
    async def begin(
        cls, choice: JournalChoice, key: str, command: Sequence[str]
    ) -> JournalRun | None:
        """Open the chosen journal and begin (or continue) the run; None without a journal.

        Raises :class:`~replicator.errors.JournalError` when the journal cannot be
        used (a path that holds something else, an unwritable directory).
        """
        if not choice.enabled:
            return None
        journal = await Journal.open(choice.path or default_journal_path())
        try:
            run_id, continued = journal.begin_run(key, {"argv": list(command)}, fresh=choice.fresh)
            return cls(journal, run_id, continued)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await journal.close()
            raise

    @property
    def set_aside_warning(self) -> str | None:
        """The warning to give when a damaged journal was set aside on opening."""
        j = self.journal
        if j.set_aside is None:
            return None
        return (
            f"the journal {j.path} was unreadable ({j.problem}); it was set aside as "
            f"{j.set_aside} and this run asks the destinations instead"
        )

    @property
    def write_error(self) -> str | None:
        """Why the journal stopped writing during the run, None while it writes."""
        return self.journal.write_error

    def note_sources(self, found: Iterable[tuple[str, str]]) -> list[SourceMoved]:
        """Record each ``(source, digest)`` seen first; the sources that moved since the run began."""
        moved = []
        for source, digest in found:
            was = self._sources.get(source)
            if was is None:
                self._sources[source] = digest
                with contextlib.suppress(JournalError):
                    self.journal.record_source(self.run_id, source, digest)
            elif was != digest:
                moved.append(SourceMoved(source, was, digest))
        return moved

    async def finish(
        self, state: str, report: CopyReport, *, bytes_sent: int, error: str | None
    ) -> None:
        """Mark the run ``state`` with the attempt's counts, bytes and error; flush.

        Does nothing once the journal stopped writing (its error is the news).
        """
        if self.write_error is not None:
            return
        with anyio.CancelScope(shield=True):
            self.journal.finish_run(
                self.run_id, state, counts=run_counts(report), bytes_moved=bytes_sent, error=error
            )
            await self.journal.flush()

    async def cancel_leftover_uploads(self, targets: TargetPool) -> int:
        """Cancel every upload session this run journalled and never completed.

        Sessions at a location the pool has no open target for, or whose target
        cannot cancel uploads, are only forgotten.  Returns how many were cancelled.
        """
        cancelled = 0
        for up in self.journal.uploads(self.run_id):
            target = targets.opened(up.location)
            if isinstance(target, UploadCanceller):
                await target.cancel_upload(up.upload_url)
                cancelled += 1
                log.info("run.upload_cancelled", location=up.location, digest=up.digest)
            self.journal.drop_upload(self.run_id, up.location, up.repository, up.digest)
        return cancelled

    async def close(self) -> None:
        """Flush and close the journal (a journal that failed closes without flushing)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.journal.close()
            except JournalError as exc:
                log.debug("journal.close_failed", error=str(exc))
