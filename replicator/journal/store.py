"""The durable resume journal: SQLite in WAL mode, one writer thread batching commits.

What it holds:

* ``runs`` — one row per copy run: its *key* (a digest of what the run was asked
  to do), what the run layer chose to record of its command (never a
  credential), its state (``running``, ``interrupted``, ``failed``, ``done``),
  counters, the bytes sent summed over its attempts, and the last error.
* ``confirmations`` — what a destination confirmed during a run: a blob present,
  mounted or uploaded, a manifest pushed, a referrers index updated, a tag set.
  An entry is written only *after* the destination confirmed, so a journal can
  make a run redo work but never skip work that did not happen.
* ``uploads`` — for each chunked upload in flight, its upload URL and the offset
  the destination acknowledged after the last chunk.
* ``sources`` — the digest each job's source pointed at when the run first
  resolved it, so a resumed run can tell that a tag moved in between.
* ``blob_cache`` — across runs: which repositories of a destination location are
  known to hold a blob (mount candidates).  The engine drops an entry when the
  destination later says the blob is unknown.

Writes are queued and committed by one thread in batches (see
:mod:`replicator.journal.writer`); ``flush()`` waits until everything queued so
far is on disk.

Opening never harms a file that is not ours (:mod:`replicator.journal.inspect`):
a damaged journal of ours is set aside (renamed with a ``.corrupt-<time>``
suffix) and a fresh one started, the run then falling back to asking the
destinations; a directory or any other file is refused with a
:class:`~replicator.errors.JournalError` and left untouched.
:meth:`Journal.open_existing` (for reading) creates nothing and moves nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from replicator.errors import JournalError
from replicator.journal.inspect import APPLICATION_ID, admit, inspect_journal
from replicator.journal.records import scrub_recorded_commands
from replicator.journal.schema import (
    BLOB,
    DONE,
    FAILED,
    INTERRUPTED,
    MANIFEST,
    REFERRERS,
    RUNNING,
    SCHEMA,
    SCHEMA_VERSION,
    TAG,
)
from replicator.journal.writer import STOP, Op, Writer, connect

__all__ = [
    "BLOB",
    "DONE",
    "FAILED",
    "INTERRUPTED",
    "MANIFEST",
    "REFERRERS",
    "RUNNING",
    "SCHEMA_VERSION",
    "TAG",
    "Journal",
    "RunInfo",
    "UploadState",
    "default_journal_path",
]


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/replicator/journal.sqlite`` (``~/.local/state`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "replicator" / "journal.sqlite"


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run as stored."""

    id: str
    key: str
    command: Mapping[str, Any]
    state: str
    started: float
    updated: float
    finished: float | None
    counts: Mapping[str, int]
    bytes: int
    error: str | None


@dataclass(frozen=True, slots=True)
class UploadState:
    """A chunked upload a run left in flight."""

    location: str
    repository: str
    digest: str
    upload_url: str
    offset: int


class Journal:
    """The resume journal at one path.  Use :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path, reader: sqlite3.Connection, writer: Writer) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._closed = False
        #: Where a corrupt journal found at ``path`` was moved to, if one was.
        self.set_aside: Path | None = None
        #: What was wrong with it.
        self.problem: str | None = None

    # -- opening ---------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | str | None = None) -> Journal:
        """Open the journal at ``path``, creating it (and its directory) if needed.

        A damaged journal of ours is set aside (see :attr:`set_aside`) and a new
        one started.  Raises :class:`JournalError`, touching nothing, when
        ``path`` holds anything else (a directory, a file that is not a
        journal), or when the journal cannot be created.
        """
        target = Path(path) if path is not None else default_journal_path()
        return await anyio.to_thread.run_sync(cls._open_sync, target, True)

    @classmethod
    async def open_existing(cls, path: Path | str | None = None) -> Journal | None:
        """Open the journal at ``path`` to read it; None when there is none.

        Creates nothing and moves nothing: a damaged journal or a file that is
        not a journal raises :class:`JournalError`.
        """
        target = Path(path) if path is not None else default_journal_path()
        return await anyio.to_thread.run_sync(cls._open_existing_sync, target)

    @classmethod
    def _open_existing_sync(cls, path: Path) -> Journal | None:
        if inspect_journal(path, schema_version=SCHEMA_VERSION).state == "absent":
            return None
        return cls._open_sync(path, False)

    @classmethod
    def _open_sync(cls, path: Path, may_repair: bool) -> Journal:
        found = inspect_journal(path, schema_version=SCHEMA_VERSION)
        aside = admit(path, found, may_repair=may_repair)
        if found.state == "absent":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalError(
                    f"cannot create the journal directory {path.parent}: {exc.strerror}"
                ) from None
        try:
            conn = connect(path, checkpoints=False)
            conn.executescript(SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            scrub_recorded_commands(conn)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from None
        writer = Writer(path)
        writer.start()
        journal = cls(path, conn, writer)
        if aside is not None:
            journal.set_aside, journal.problem = aside, found.problem
        return journal

    # -- writing ---------------------------------------------------------------

    def _put(self, sql: str, params: tuple[Any, ...]) -> None:
        self._put_many([(sql, params)])

    def _put_many(self, ops: list[Op]) -> None:
        """Queue statements that are committed together (one queue operation)."""
        if self._closed:
            raise JournalError("journal is closed")
        if self._writer.error is not None:
            raise JournalError(f"journal write failed: {self._writer.error}")
        self._writer.put(ops if len(ops) > 1 else ops[0])

    @property
    def write_error(self) -> str | None:
        """Why the journal stopped writing (disk full, file removed...), None while it writes."""
        error = self._writer.error
        return None if error is None else str(error) or type(error).__name__

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        if self._closed:
            return
        fut: Future[None] = Future()
        self._writer.put(fut)
        await anyio.to_thread.run_sync(fut.result)

    def commit_now(self) -> None:
        """Commit everything queued so far, on this thread (no thread hand-off).

        Blocks at most for a batch the writer thread is committing (WAL, no
        fsync: about a millisecond).  For entries that must be on disk before
        the next network request, where a hand-off to the writer thread would
        cost a scheduler round trip on a busy machine.
        """
        if self._closed:
            return
        self._writer.commit_now(self._reader)
        if self._writer.error is not None:
            raise JournalError(f"journal write failed: {self._writer.error}")

    def begin_run(
        self, key: str, command: Mapping[str, Any], *, fresh: bool = False
    ) -> tuple[str, bool]:
        """Start a run for ``key`` or continue the unfinished one; returns ``(run_id, resumed)``.

        A run is continued when the newest run with the same key ended in any
        state but ``done`` and ``fresh`` is false.  With ``fresh`` such runs are
        marked ``failed`` (abandoned) and a new run starts.
        """
        row = self._reader.execute(
            "SELECT id, state FROM runs WHERE key = ? ORDER BY started DESC LIMIT 1", (key,)
        ).fetchone()
        now = time.time()
        if row is not None and row[1] != DONE:
            if not fresh:
                self._put(
                    "UPDATE runs SET state = ?, updated = ? WHERE id = ?", (RUNNING, now, row[0])
                )
                return str(row[0]), True
            self._put(
                "UPDATE runs SET state = ?, updated = ?, error = ? WHERE id = ?",
                (FAILED, now, "abandoned by --fresh", row[0]),
            )
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + uuid.uuid4().hex[:6]
        self._put(
            "INSERT INTO runs (id, key, command, state, started, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, key, json.dumps(dict(command), sort_keys=True), RUNNING, now, now),
        )
        return run_id, False

    def confirm(
        self, run_id: str, location: str, repository: str, digest: str, kind: str, detail: str = ""
    ) -> None:
        """Record that a destination confirmed something (queued; see :meth:`flush`)."""
        now = time.time()
        ops: list[Op] = [
            (
                "INSERT OR IGNORE INTO confirmations VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, location, repository, digest, kind, detail, now),
            )
        ]
        if kind == BLOB:
            ops.append(
                (
                    "INSERT OR REPLACE INTO blob_cache VALUES (?, ?, ?, ?)",
                    (location, digest, repository, now),
                )
            )
            ops.append(
                (
                    "DELETE FROM uploads WHERE run_id = ? AND location = ? "
                    "AND repository = ? AND digest = ?",
                    (run_id, location, repository, digest),
                )
            )
        self._put_many(ops)

    def record_upload(self, run_id: str, state: UploadState) -> None:
        """Remember the acknowledged offset of a chunked upload in flight."""
        self._put(
            "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                state.location,
                state.repository,
                state.digest,
                state.upload_url,
                state.offset,
                time.time(),
            ),
        )

    def drop_upload(self, run_id: str, location: str, repository: str, digest: str) -> None:
        """Forget an upload session (finished, cancelled or gone)."""
        self._put(
            "DELETE FROM uploads WHERE run_id = ? AND location = ? AND repository = ? AND digest = ?",
            (run_id, location, repository, digest),
        )

    def record_source(self, run_id: str, source: str, digest: str) -> None:
        """Remember what ``source`` pointed at; the first digest recorded for a run is kept."""
        self._put(
            "INSERT OR IGNORE INTO sources VALUES (?, ?, ?, ?)",
            (run_id, source, digest, time.time()),
        )

    def sources(self, run_id: str) -> dict[str, str]:
        """The digest each source of the run pointed at when the run first resolved it."""
        rows = self._reader.execute(
            "SELECT source, digest FROM sources WHERE run_id = ?", (run_id,)
        )
        return {str(r[0]): str(r[1]) for r in rows}

    def forget(self, location: str, repository: str, digest: str) -> None:
        """The destination no longer has this content: drop what we believed about it."""
        self._put(
            "DELETE FROM blob_cache WHERE location = ? AND repository = ? AND digest = ?",
            (location, repository, digest),
        )
        self._put(
            "DELETE FROM confirmations WHERE location = ? AND repository = ? AND digest = ?",
            (location, repository, digest),
        )

    def finish_run(
        self,
        run_id: str,
        state: str,
        *,
        counts: Mapping[str, int] | None = None,
        bytes_moved: int = 0,
        error: str | None = None,
    ) -> None:
        """Mark a run ``done``, ``failed`` or ``interrupted`` with its figures."""
        now = time.time()
        self._put(
            "UPDATE runs SET state = ?, updated = ?, finished = ?, counts = ?, "
            "bytes = bytes + ?, error = ? WHERE id = ?",
            (
                state,
                now,
                now if state == DONE else None,
                json.dumps(dict(counts or {}), sort_keys=True),
                bytes_moved,
                error,
                run_id,
            ),
        )
        if state == DONE:
            self._put("DELETE FROM uploads WHERE run_id = ?", (run_id,))

    # -- reading ---------------------------------------------------------------

    def confirmations(self, run_id: str) -> set[tuple[str, str, str, str, str]]:
        """Everything a run had confirmed: ``(location, repository, digest, kind, detail)``."""
        rows = self._reader.execute(
            "SELECT location, repository, digest, kind, detail FROM confirmations WHERE run_id = ?",
            (run_id,),
        )
        return {(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    def uploads(self, run_id: str) -> list[UploadState]:
        """Chunked uploads the run left in flight."""
        rows = self._reader.execute(
            "SELECT location, repository, digest, upload_url, offset FROM uploads WHERE run_id = ?",
            (run_id,),
        )
        return [UploadState(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]

    def mount_candidates(self, location: str, digest: str) -> list[str]:
        """Repositories of ``location`` believed (from any run) to hold ``digest``."""
        rows = self._reader.execute(
            "SELECT repository FROM blob_cache WHERE location = ? AND digest = ? ORDER BY seen DESC",
            (location, digest),
        )
        return [str(r[0]) for r in rows]

    def blob_cache(self, location: str) -> dict[str, list[str]]:
        """Every blob of ``location`` the cache knows: digest -> repositories, newest first."""
        rows = self._reader.execute(
            "SELECT digest, repository FROM blob_cache WHERE location = ? ORDER BY seen DESC",
            (location,),
        )
        table: dict[str, list[str]] = {}
        for digest, repository in rows:
            table.setdefault(str(digest), []).append(str(repository))
        return table

    def runs(self) -> list[RunInfo]:
        """Every run, newest first."""
        rows = self._reader.execute(
            "SELECT id, key, command, state, started, updated, finished, counts, bytes, error "
            "FROM runs ORDER BY started DESC"
        )
        return [_run_info(r) for r in rows]

    def run(self, run_id: str) -> RunInfo | None:
        """One run by id (or unique id prefix)."""
        rows = self._reader.execute(
            "SELECT id, key, command, state, started, updated, finished, counts, bytes, error "
            "FROM runs WHERE id LIKE ? ORDER BY started DESC",
            (run_id.replace("%", "") + "%",),
        ).fetchall()
        return _run_info(rows[0]) if len(rows) == 1 else None

    def gc(self, *, older_than: float, keep_unfinished: bool = True) -> int:
        """Delete runs (and their entries) not updated for ``older_than`` seconds; the count.

        By default only runs no rerun can continue go: ``done`` runs, and runs
        superseded by a newer run of the same key (those abandoned by
        ``--fresh`` among them).  The newest run of a key that is not ``done``
        — ``running`` (killed), ``interrupted`` or ``failed`` — is what the same
        command resumes (:meth:`begin_run`): it is kept unless
        ``keep_unfinished`` is false.  Blob-cache entries older than the
        cut-off are dropped too.
        """
        cutoff = time.time() - older_than
        ids = [str(r[0]) for r in self._reader.execute(_GC_SELECT[keep_unfinished], (cutoff,))]
        for run_id in ids:
            self._put("DELETE FROM confirmations WHERE run_id = ?", (run_id,))
            self._put("DELETE FROM uploads WHERE run_id = ?", (run_id,))
            self._put("DELETE FROM sources WHERE run_id = ?", (run_id,))
            self._put("DELETE FROM runs WHERE id = ?", (run_id,))
        self._put("DELETE FROM blob_cache WHERE seen < ?", (cutoff,))
        return len(ids)

    def resumable_older_than(self, older_than: float) -> int:
        """How many runs a rerun would resume were not updated for ``older_than`` seconds.

        What :meth:`gc` keeps by default (see there).
        """
        cutoff = time.time() - older_than
        row = self._reader.execute(
            f"SELECT COUNT(*) FROM runs r WHERE updated < ? AND NOT ({_NOT_RESUMABLE})", (cutoff,)
        ).fetchone()
        return int(row[0])

    # -- closing ---------------------------------------------------------------

    async def close(self) -> None:
        """Flush, stop the writer and close the connections.

        Raises :class:`JournalError` when the last writes failed; the journal is
        closed either way.
        """
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            self._writer.put(STOP)
            await anyio.to_thread.run_sync(self._writer.join)
            self._reader.close()


#: True for a run (aliased ``r``) that no rerun continues: it is ``done``, or a
#: newer run of its key exists (:meth:`Journal.begin_run` looks at the newest only).
_NOT_RESUMABLE = (
    f"r.state = '{DONE}' OR EXISTS "
    "(SELECT 1 FROM runs n WHERE n.key = r.key AND n.started > r.started)"
)
#: The runs :meth:`Journal.gc` removes, by ``keep_unfinished``.
_GC_SELECT = {
    True: f"SELECT id FROM runs r WHERE updated < ? AND ({_NOT_RESUMABLE})",
    False: "SELECT id FROM runs r WHERE updated < ?",
}


def _run_info(r: tuple[Any, ...]) -> RunInfo:
    return RunInfo(
        id=str(r[0]),
        key=str(r[1]),
        command=json.loads(r[2]),
        state=str(r[3]),
        started=float(r[4]),
        updated=float(r[5]),
        finished=float(r[6]) if r[6] is not None else None,
        counts=json.loads(r[7] or "{}"),
        bytes=int(r[8]),
        error=r[9],
    )
