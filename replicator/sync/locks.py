"""One runner at a time, across processes: advisory file locks beside the journal.

Two ``replicator`` processes that share a journal — two overlapping CronJob
pods on one volume, a watch and a manual run, the same ``copy`` started twice —
must never run the same sync job, or the same journal run, at once: their
uploads would race and one would cancel the other's upload sessions.  Each
takes, before it starts, an exclusive ``flock`` on a file in the directory
``<journal>.locks/`` next to the journal:

* ``job-<name>.lock`` for a sync job (by name: an edited job is still the same
  job, and its old and new definitions write the same destinations);
* ``run-<key>.lock`` for a journal run (the first 32 hex digits of its run key,
  docs/RESUME.md): every ``copy`` and every sync run takes it.

Guarantees:

* The kernel releases a lock when its holder exits, however it exits (SIGKILL
  included): a lock never outlives its process, and nothing needs cleaning up.
  Lock files are never deleted (deleting one while another process waits on it
  would let two processes hold "the" lock); they hold a line of text each.
* The holder writes its pid, host name, start time and command (what the run
  layer records of it: never a credential) into the file, so that the process
  that finds it taken says who holds it (:class:`Holder`).
* Waiting polls the lock without blocking the event loop and gives up when
  the caller's stop request arrives.
* Locks are taken in one order by every process (sync jobs sorted by name,
  then the run's lock), so waiting processes cannot deadlock.

``flock`` works on local file systems and on NFS (Linux emulates it with POSIX
record locks there); on a file system that ignores locks the protection is
lost, not the copy's correctness (docs/UNATTENDED.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from replicator.errors import JournalError, LockedError
from replicator.journal.inspect import inspect_journal
from replicator.journal.schema import SCHEMA_VERSION
from replicator.journal.store import default_journal_path
from replicator.observe.logging import get_logger
from replicator.sync.request import JournalChoice

log = get_logger(__name__)

#: How often a waiting process tries a taken lock again (seconds, growing to the second value).
POLL_FIRST, POLL_MAX = 0.1, 1.0


def locks_allowed(journal: Path | None) -> bool:
    """False when the journal path holds something that is not a journal (a file of the user's).

    Opening such a journal is refused (exit 8) and nothing may be created
    beside it, lock files included: the caller then takes no lock.
    """
    path = journal if journal is not None else default_journal_path()
    return inspect_journal(path, schema_version=SCHEMA_VERSION).state != "foreign"


def lock_dir(journal: Path | None) -> Path:
    """The lock directory of a journal: ``<journal>.locks`` (the default journal's without one)."""
    path = journal if journal is not None else default_journal_path()
    return path.with_name(path.name + ".locks")


def job_lock_path(journal: Path | None, job: str) -> Path:
    """The lock file of sync job ``job`` (job names are ``[a-z0-9_-]``: safe in a file name)."""
    return lock_dir(journal) / f"job-{job}.lock"


def run_lock_path(journal: Path | None, key: str) -> Path:
    """The lock file of the journal run with run key ``key`` (``sha256:<hex>``)."""
    return lock_dir(journal) / f"run-{key.split(':', 1)[-1][:32]}.lock"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or held) a lock: process id, host, start time, command."""

    pid: int
    host: str
    started: float
    command: tuple[str, ...] = ()

    @classmethod
    def me(cls, command: Sequence[str]) -> Holder:
        """This process, starting now, running ``command``."""
        return cls(os.getpid(), socket.gethostname(), time.time(), tuple(command))

    def describe(self) -> str:
        """``pid 12 on host-a since 2025-01-02 03:04:05 UTC (replicator sync a.yaml)``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        text = f"pid {self.pid} on {self.host} since {since}"
        if self.command:
            text += f" ({' '.join(['replicator', *self.command])})"
        return text

    def to_text(self) -> str:
        """The line written into a held lock file."""
        return json.dumps(
            {"pid": self.pid, "host": self.host, "started": self.started, "command": self.command}
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a lock file names; None when it names none (being written, emptied)."""
        try:
            data = json.loads(text)
            return cls(
                int(data["pid"]),
                str(data["host"]),
                float(data["started"]),
                tuple(str(w) for w in data.get("command", ())),
            )
        except (ValueError, TypeError, KeyError):
            return None


class HeldLock:
    """A lock this process holds; :meth:`release` gives it back (idempotent)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd is not None

    def release(self) -> None:
        """Empty the file (the holder line is ours), unlock, close."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise JournalError(f"cannot open the lock file {path}: {exc.strerror}") from None


def try_lock(path: Path, holder: Holder) -> HeldLock | Holder | None:
    """Take the lock at ``path`` without waiting.

    Returns the :class:`HeldLock`, or — when another process holds it — that
    process's :class:`Holder` (None when its line cannot be read).  Raises
    :class:`~replicator.errors.JournalError` when the file cannot be opened.
    """
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            return Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        finally:
            os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder.to_text() + "\n").encode(), 0)
    except OSError as exc:  # the lock holds all the same; only the message is lost
        log.debug("run.lock_note_failed", path=str(path), error=exc.strerror)
    return HeldLock(path, fd)


def locked_message(what: str, other: Holder | None, path: Path) -> str:
    """What a process says when ``what`` is locked by ``other``."""
    who = other.describe() if other is not None else "another process"
    return f"{what} is being run by {who} (lock {path})"


async def acquire(
    path: Path,
    holder: Holder,
    *,
    what: str,
    wait: float | None = 0.0,
    stopped: Callable[[], bool] = lambda: False,
) -> HeldLock | None:
    """Take the lock at ``path``, waiting up to ``wait`` seconds (None: for ever).

    Returns the held lock, or None when ``stopped()`` became true while
    waiting.  Raises :class:`~replicator.errors.LockedError` (naming the
    holder and ``what``) when the lock is still taken when the wait is over.
    """
    deadline = None if wait is None else time.monotonic() + max(0.0, wait)
    pause, announced = POLL_FIRST, False
    while True:
        got = try_lock(path, holder)
        if isinstance(got, HeldLock):
            return got
        if stopped():
            return None
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            hint = "; --wait-lock waits for it" if not wait else f" (waited {wait:g}s)"
            raise LockedError(locked_message(what, got, path) + hint)
        if not announced:
            log.info("run.lock_waiting", what=what, holder=got.describe() if got else None)
            announced = True
        await anyio.sleep(pause if left is None else min(pause, left))
        pause = min(POLL_MAX, pause * 2)


async def lock_run(
    journal: JournalChoice,
    key: str,
    command: Sequence[str],
    stopped: Callable[[], bool],
) -> HeldLock | None:
    """Hold the lock of the journal run ``key``; None when the run keeps no journal.

    Another process running the same run on the same journal makes this one
    wait (``journal.wait_lock``) or raises :class:`~replicator.errors.LockedError`;
    None too when ``stopped()`` while waiting (the caller checks its stop).
    """
    where = journal.path or default_journal_path()
    if not journal.enabled or not locks_allowed(where):
        return None
    return await acquire(
        run_lock_path(where, key),
        Holder.me(command),
        what=f"the same run on the journal {where}",
        wait=journal.wait_lock,
        stopped=stopped,
    )
