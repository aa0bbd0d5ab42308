"""What lies at a journal path, decided before anything is written or moved there.

A path named as the journal can hold anything: nothing yet, our journal, our
journal damaged, or something else entirely (a directory, ``config.json`` given by
mistake, another program's SQLite database).  :func:`inspect_journal` tells them
apart without writing; :func:`set_aside` moves a damaged journal out of the way.

Guarantees:

* Only a file that is recognisably a journal of ours is ever moved: one whose
  SQLite header carries our application id (every journal since the id was
  introduced), or an SQLite database whose table list holds our tables (older
  journals).  Anything else is *foreign*: the caller refuses it and touches
  nothing.
* Inspection opens the database read-only (``mode=ro``); a file that is not an
  SQLite database is never handed to SQLite at all (the header is read first).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from replicator.errors import JournalError

log = structlog.get_logger("replicator.journal")

#: ``PRAGMA application_id`` of a replicator journal ("RPLJ").
APPLICATION_ID = 0x52504C4A
#: The tables every replicator journal has.
JOURNAL_TABLES = frozenset({"runs", "confirmations", "uploads", "blob_cache"})

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_APPLICATION_ID_OFFSET = 68

#: ``absent``: nothing there.  ``usable``: our journal, healthy, or an empty file /
#: empty database.  ``damaged``: our journal, unreadable or of another schema version.
#: ``foreign``: not ours; never to be touched.
JournalState = Literal["absent", "usable", "damaged", "foreign"]


@dataclass(frozen=True, slots=True)
class Inspection:
    """What :func:`inspect_journal` found: the state and, unless usable, why."""

    state: JournalState
    problem: str | None = None


def inspect_journal(path: Path, *, schema_version: int) -> Inspection:
    """Classify what lies at ``path`` (see the module doc); never writes."""
    if not path.exists() and not path.is_symlink():
        return Inspection("absent")
    if path.is_dir():
        return Inspection("foreign", "it is a directory")
    if not path.is_file():
        return Inspection("foreign", "it is not a regular file")
    try:
        with path.open("rb") as fh:
            header = fh.read(_HEADER_SIZE)
    except OSError as exc:
        return Inspection("foreign", f"it cannot be read ({exc.strerror})")
    if not header:
        return Inspection("usable")
    if not header.startswith(_SQLITE_MAGIC):
        return Inspection("foreign", "it is not an SQLite database")
    ours = (
        len(header) >= _APPLICATION_ID_OFFSET + 4
        and int.from_bytes(header[_APPLICATION_ID_OFFSET : _APPLICATION_ID_OFFSET + 4], "big")
        == APPLICATION_ID
    )
    return _inspect_database(path, ours=ours, schema_version=schema_version)


def _inspect_database(path: Path, *, ours: bool, schema_version: int) -> Inspection:
    """Classify an SQLite file; ``ours`` when its header carries our application id."""
    tables: set[str] | None = None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {
                str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not ours and tables and not tables >= JOURNAL_TABLES:
                shown = ", ".join(sorted(tables)[:5])
                return Inspection("foreign", f"an SQLite database of something else ({shown})")
            result = conn.execute("PRAGMA quick_check").fetchone()
            if not result or result[0] != "ok":
                problem = f"quick_check: {result[0] if result else 'no answer'}"
                return _damaged_if_ours(problem, ours=ours, tables=tables)
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is not None and row[0] != str(schema_version):
                    return Inspection(
                        "damaged", f"schema version {row[0]}, expected {schema_version}"
                    )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return _damaged_if_ours(str(exc), ours=ours, tables=tables)
    return Inspection("usable")


def _damaged_if_ours(problem: str, *, ours: bool, tables: set[str] | None) -> Inspection:
    """A database SQLite cannot read: damaged if recognisably ours, else foreign."""
    if ours or (tables is not None and tables >= JOURNAL_TABLES):
        return Inspection("damaged", problem)
    return Inspection(
        "foreign", f"a damaged SQLite database not recognisable as a journal ({problem})"
    )


def set_aside(path: Path) -> Path:
    """Rename a damaged journal (and its ``-wal``/``-shm``) to ``<name>.corrupt-<time>-<id>``.

    Returns the new path of the main file.  Call it only for an
    :class:`Inspection` whose state is ``damaged``.
    """
    aside = path.with_name(f"{path.name}.corrupt-{time.time():.0f}-{uuid.uuid4().hex[:4]}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.replace(Path(str(aside) + suffix))
    return aside


def admit(path: Path, found: Inspection, *, may_repair: bool) -> Path | None:
    """Decide what opening may do with what :func:`inspect_journal` found.

    Raises :class:`~replicator.errors.JournalError` for a foreign file, and for a
    damaged journal when ``may_repair`` is false (reading); sets a damaged
    journal aside otherwise.

    Returns where the damaged journal went, None when nothing was moved.
    """
    if found.state == "foreign":
        raise JournalError(
            f"{path} is not a replicator journal ({found.problem}); it was left untouched: "
            "name a journal file, or a path where none exists yet"
        )
    if found.state != "damaged":
        return None
    if not may_repair:
        raise JournalError(
            f"the journal {path} is damaged ({found.problem}); "
            "the next copy that uses it sets it aside and starts a new one"
        )
    aside = set_aside(path)
    log.warning("journal.set_aside", path=str(path), moved_to=str(aside), problem=found.problem)
    return aside
