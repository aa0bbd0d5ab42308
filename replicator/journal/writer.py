"""The journal's one writer thread: queued statements committed in batches.

Writes are queued (a queue put is the whole cost of a confirmation to the
caller) and committed by one thread, a transaction per batch, entries gathering
for up to :data:`GROUP_COMMIT_SECONDS`.  :meth:`Writer.commit_now` commits
everything queued so far on the caller's thread instead (a new upload session
must be on disk before its first byte is sent).  Either way entries are
committed in the order they were queued.

The first failed commit (disk full, file removed, a size limit) is kept in
:attr:`Writer.error`: nothing more is written, every waiter gets a
:class:`~replicator.errors.JournalError`, and the journal refuses new writes.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from replicator.errors import JournalError

#: How long the writer lets queued entries gather before committing them.
GROUP_COMMIT_SECONDS = 0.05

Op = tuple[str, tuple[Any, ...]]
STOP = object()


class Writer(threading.Thread):
    """Owns the write connection; commits queued statements in batches.

    Entries are taken from the queue and committed under ``commit_lock``, by
    this thread or by :meth:`commit_now` on the caller's thread, so they are
    always committed in the order they were queued.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(name="replicator-journal", daemon=True)
        self.path = path
        self._items: collections.deque[Any] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self.commit_lock = threading.Lock()
        self._urgent = threading.Event()
        self.error: BaseException | None = None

    def put(self, entry: Any) -> None:
        """Queue an entry: an op, a list of ops, a Future to resolve, or the stop mark."""
        with self._ready:
            self._items.append(entry)
            if isinstance(entry, Future) or entry is STOP:
                self._urgent.set()
            self._ready.notify()

    def _drain(self) -> list[Any]:
        with self._ready:
            batch = list(self._items)
            self._items.clear()
        return batch

    def commit_now(self, conn: sqlite3.Connection) -> None:
        """Commit everything queued so far on ``conn``, on the calling thread."""
        with self.commit_lock:
            self._apply(conn, self._drain())

    def run(self) -> None:
        """The thread's body: commit batches until the stop mark is committed."""
        try:
            conn = connect(self.path)
        except sqlite3.Error as exc:
            self.error = exc
            self._fail_until_stopped()
            return
        try:
            while True:
                with self._ready:
                    while not self._items:
                        self._ready.wait()
                # Group commit: let entries gather for a moment (one transaction
                # instead of one per confirmation), unless someone waits for them.
                self._urgent.wait(GROUP_COMMIT_SECONDS)
                self._urgent.clear()
                with self.commit_lock:
                    if self._apply(conn, self._drain()):
                        return
        finally:
            conn.close()

    def _fail_until_stopped(self) -> None:
        """Without a connection: answer every waiter with the error until the stop mark."""
        while True:
            with self._ready:
                while not self._items:
                    self._ready.wait()
            if self._apply(None, self._drain()):
                return

    def _apply(self, conn: sqlite3.Connection | None, batch: list[Any]) -> bool:
        """Commit ``batch`` in one transaction; True when it held the stop mark."""
        stop = False
        waiters: list[Future[None]] = []
        ops: list[Op] = []
        for entry in batch:
            if entry is STOP:
                stop = True
            elif isinstance(entry, Future):
                waiters.append(entry)
            elif isinstance(entry, list):
                ops.extend(entry)
            else:
                ops.append(entry)
        if ops and self.error is None and conn is not None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for sql, params in ops:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # disk full, file removed...
                self.error = exc
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        for waiter in waiters:
            if self.error is not None:
                waiter.set_exception(JournalError(f"journal write failed: {self.error}"))
            else:
                waiter.set_result(None)
        return stop


def connect(path: Path, *, checkpoints: bool = True) -> sqlite3.Connection:
    """A connection to the journal at ``path`` in WAL mode (``checkpoints``: may checkpoint)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    if not checkpoints:
        # Checkpoints (and their fsync) are left to the writer thread.
        conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn
