"""``index.json`` of one layout: cached reads and batched, atomic, cross-process-safe updates.

An update is a *mutation*: a pure function that edits the ``manifests`` list
in place.  :meth:`IndexStore.update` applies it to the file as it is on disk
now (read-modify-write), never to a stale copy.

Guarantees:

* Every rewrite is atomic and durable (temporary file, fsync, rename, fsync
  of the directory): a reader sees the old ``index.json`` or the new one.
* Within the process, concurrent updates are group-committed: whoever holds
  the store's :class:`anyio.Lock` applies every pending mutation in one
  rewrite; none is lost.  A mutation that raises is skipped (the others still
  apply) and its caller gets the exception.
* Across processes, every read-modify-write holds an exclusive ``flock`` on
  the ``oci-layout`` file (so no lock file is added to the layout); closing
  the descriptor releases it, also when the process dies.
* A committer cancelled mid-commit hands the batch's other updates back to
  the queue; mutations are idempotent, so one that did reach the disk may
  safely apply again.  An update cancelled while still queued is withdrawn.
* Reads are served from a snapshot re-read whenever the file's (inode,
  mtime, size) changed, so another writer's update is seen.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiofiles
import anyio
import structlog

from replicator.targets.ocilayout.files import TMP_MARK, LayoutFiles, fsync_path, unlink_quietly

log = structlog.get_logger(__name__)

#: A pure change of the ``manifests`` list of ``index.json``.
IndexMutation = Callable[[list[dict[str, Any]]], None]


@dataclass(slots=True)
class IndexSnapshot:
    """``index.json`` as read, with the stat key that tells whether it changed."""

    key: tuple[int, int, int]
    document: dict[str, Any]
    entries: list[dict[str, Any]]


@dataclass(eq=False, slots=True)
class _Update:
    """One queued mutation; ``done`` once applied or failed (``error``)."""

    mutation: IndexMutation
    done: bool = False
    error: BaseException | None = None


class IndexStore:
    """Reads and updates ``index.json`` of one layout (see the module docstring)."""

    def __init__(self, files: LayoutFiles) -> None:
        self._files = files
        self._lock = anyio.Lock()
        self._pending: list[_Update] = []
        self._snapshot: IndexSnapshot | None = None

    @property
    def lock(self) -> anyio.Lock:
        """The in-process lock every commit holds (tests queue updates behind it)."""
        return self._lock

    def _stat_key(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self._files.index_path)
        except FileNotFoundError:
            raise self._files.malformed("index.json disappeared") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def snapshot(self, *, fresh: bool = False) -> IndexSnapshot:
        """The current ``index.json``, re-read when it changed on disk (or ``fresh``)."""
        key = self._stat_key()
        snap = self._snapshot
        if snap is not None and snap.key == key and not fresh:
            return snap
        try:
            async with aiofiles.open(self._files.index_path, "rb") as fh:
                raw = await fh.read()
        except OSError as exc:
            raise self._files.malformed(f"cannot read index.json ({exc.strerror})") from None
        document, entries = self._files.parse_index(raw)
        snap = IndexSnapshot(key=key, document=document, entries=entries)
        self._snapshot = snap
        return snap

    async def entries(self) -> list[dict[str, Any]]:
        """The ``manifests`` list of the current snapshot (do not modify it)."""
        return (await self.snapshot()).entries

    async def update(self, mutation: IndexMutation) -> None:
        """Apply ``mutation`` to ``index.json``'s manifests, atomically and durably."""
        item = _Update(mutation)
        self._pending.append(item)
        try:
            async with self._lock:
                if not item.done:
                    await self._commit_pending(item)
        except anyio.get_cancelled_exc_class():
            if item in self._pending:  # cancelled while queued: never applied
                self._pending.remove(item)
            raise
        if item.error is not None:
            raise item.error

    async def _commit_pending(self, item: _Update) -> None:
        """Commit every pending update (``item`` among them) in one rewrite."""
        batch, self._pending = self._pending, []
        try:
            await self._commit(batch)
        except anyio.get_cancelled_exc_class():
            # Hand the others back to whoever takes the lock next.
            self._pending[:0] = [u for u in batch if u is not item and not u.done]
            raise
        except BaseException as exc:
            for other in batch:
                if not other.done:
                    other.done, other.error = True, exc

    async def _commit(self, batch: Sequence[_Update]) -> None:
        files = self._files
        with files.disk_errors("lock oci-layout"):
            fd = await anyio.to_thread.run_sync(os.open, files.layout_path, os.O_RDONLY)
        try:
            with files.disk_errors("lock oci-layout"):
                await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
            snap = await self.snapshot(fresh=True)
            entries = _apply(batch, [dict(e) for e in snap.entries])
            document = dict(snap.document)
            document["manifests"] = entries
            await self._write(document)
            self._snapshot = IndexSnapshot(key=self._stat_key(), document=document, entries=entries)
            applied = 0
            for item in batch:
                if not item.done:
                    item.done = True
                    applied += 1
            log.debug("layout.index_written", layout=files.display, updates=applied)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    async def _write(self, document: Mapping[str, Any]) -> None:
        files = self._files
        data = json.dumps(document, separators=(",", ":")).encode()
        tmp = files.root / f"index.json{TMP_MARK}{uuid.uuid4().hex}"
        try:
            with files.disk_errors("write index.json"):
                async with aiofiles.open(tmp, "wb") as fh:
                    await fh.write(data)
                    await fh.flush()
                    await anyio.to_thread.run_sync(os.fsync, fh.fileno())
                await anyio.to_thread.run_sync(os.replace, tmp, files.index_path)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(unlink_quietly, tmp)
        with files.disk_errors("sync the layout directory"):
            await anyio.to_thread.run_sync(lambda: fsync_path(files.root, directory=True))


def _apply(batch: Sequence[_Update], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply each mutation of ``batch`` in turn; one that raises is marked failed and skipped."""
    for item in batch:
        if item.done:
            continue
        trial = list(entries)
        try:
            item.mutation(trial)
        except Exception as exc:
            item.done, item.error = True, exc
            continue
        entries = trial
    return entries
