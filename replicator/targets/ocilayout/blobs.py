"""Blob storage of a layout: verified reads, and resumable, verified writes.

Blobs and manifests share one store, ``blobs/<alg>/<encoded>``.

Writing (:meth:`BlobStore.write`):

* The bytes go into the digest's temporary file ``blobs/<alg>/.tmp-<encoded>``
  under its ``flock`` (the protocol is in ``tempfiles.py``), hashed and
  counted on the way, then fsynced and renamed into place only when digest and
  size verify; the directory is fsynced after the rename.  Nothing ever
  appears under a digest whose content did not verify.
* A temporary file a previous writer abandoned (killed, cancelled, its source
  failed) is continued: its bytes are hashed, the source is opened at that
  offset (``opener(offset)``) and only the rest is read.  If the whole then
  does not verify (a leftover damaged on disk), the leftover is discarded and
  the blob written again from offset 0; a leftover longer than the blob is
  discarded at once.  The offset a write starts from is reported to
  ``on_progress`` with the temporary file's path (relative to the layout) as
  the session ``location``, so a journal records it like a registry upload.
* When a live writer (this process or another) holds the digest's temporary
  file, the blob is written into a private temporary file instead: a live
  writer's file is never taken.  Both writers verify; the rename is atomic.
* When the write fails because the bytes are wrong (IntegrityError) or the
  disk failed (LayoutError), the temporary file is removed.  When the source
  failed or the write was cancelled, the bytes written so far stay for the
  next attempt (an empty file is removed).
* ``blobs/<alg>`` is opened without following links and every file of the
  write is created, renamed and removed relative to that descriptor: a
  ``blobs`` or ``blobs/<alg>`` that is a symbolic link is refused with one
  LayoutError (exit 7) before a byte is written, so nothing lands outside
  the layout through it.
* Abandoned temporary files older than
  :data:`~replicator.targets.ocilayout.tempfiles.STALE_AFTER` (24 h) are
  removed once per target, before its first write;
  :meth:`BlobStore.cancel` removes one a journal names.

Reading (:meth:`BlobStore.read`) checks the size on disk, and read from offset
0 yields its last chunk only after the digest verified.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import aiofiles
import anyio
import structlog

from replicator.errors import InputError, IntegrityError, LayoutError, NotFoundError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier
from replicator.targets.base import BlobOpener, ProgressCallback, UploadProgress
from replicator.targets.ocilayout import tempfiles
from replicator.targets.ocilayout.files import LayoutFiles, LinkedDirectoryError
from replicator.targets.ocilayout.tempfiles import LockedTemp

log = structlog.get_logger(__name__)

#: Size of the chunks reads yield and leftovers are hashed in.
READ_CHUNK = 1024 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Filling:
    """One temporary file being filled with one blob's bytes, hashed as they land."""

    def __init__(self, files: LayoutFiles, temp: LockedTemp, desc: Descriptor) -> None:
        self.files = files
        self.temp = temp
        self.desc = desc
        self.verifier = DigestVerifier(desc.digest, desc.size)
        self.written = 0
        self.what = f"write {desc.digest}"

    async def adopt(self) -> int:
        """Hash the bytes a previous writer left; the offset to continue from."""
        size = os.fstat(self.temp.fd).st_size
        if size == 0:
            return 0
        if size > self.desc.size:
            await self.discard(f"{size} bytes, more than the blob's {self.desc.size}")
            return 0
        with self.files.disk_errors(f"read {self.temp.location}"):
            await anyio.to_thread.run_sync(self._hash_existing, size)
        self.written = size
        return size

    def _hash_existing(self, size: int) -> None:
        fd, pos = self.temp.fd, 0
        while pos < size:
            chunk = os.pread(fd, min(READ_CHUNK, size - pos), pos)
            if not chunk:
                break
            self.verifier.update(chunk)
            pos += len(chunk)
        os.lseek(fd, pos, os.SEEK_SET)

    async def discard(self, why: str) -> None:
        """Empty the file (the lock stays held) and start hashing afresh."""
        log.warning(
            "layout.leftover_discarded",
            layout=self.files.display,
            digest=self.desc.digest,
            location=self.temp.location,
            reason=why,
        )
        with self.files.disk_errors(self.what):
            os.ftruncate(self.temp.fd, 0)
            os.lseek(self.temp.fd, 0, os.SEEK_SET)
        self.verifier = DigestVerifier(self.desc.digest, self.desc.size)
        self.written = 0

    async def append(self, chunks: AsyncIterator[bytes]) -> int:
        """Write what ``chunks`` yields after the bytes already there; the bytes read."""
        sent = 0
        try:
            async for chunk in chunks:
                self.verifier.update(chunk)
                with self.files.disk_errors(self.what):
                    await anyio.to_thread.run_sync(_write_all, self.temp.fd, chunk)
                sent += len(chunk)
                self.written += len(chunk)
        finally:
            with anyio.CancelScope(shield=True):
                closer = getattr(chunks, "aclose", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer()
        return sent

    async def commit(self, final: Path) -> None:
        """fsync, rename into place, fsync the directory (the lock is still held).

        The rename is relative to the directory descriptor the temporary file
        was created in, so it lands in that directory whatever its path names now.
        """
        temp = self.temp
        with self.files.disk_errors(self.what):
            await anyio.to_thread.run_sync(os.fsync, temp.fd)
            await anyio.to_thread.run_sync(
                lambda: os.replace(
                    temp.name, final.name, src_dir_fd=temp.dir_fd, dst_dir_fd=temp.dir_fd
                )
            )
            await anyio.to_thread.run_sync(os.fsync, temp.dir_fd)


class BlobStore:
    """The ``blobs/`` directory of one layout (see the module docstring)."""

    def __init__(self, files: LayoutFiles) -> None:
        self._files = files
        self._swept = False
        self._sweep_lock = anyio.Lock()

    def size(self, digest: str) -> int | None:
        """Size of the stored file of ``digest``; None when absent."""
        return self._files.blob_size(digest)

    def has(self, desc: Descriptor) -> bool:
        """True when a file of the right size is stored under ``desc.digest``."""
        return self.size(desc.digest) == desc.size

    # ----------------------------------------------------------------- write

    async def write(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        on_progress: ProgressCallback | None = None,
    ) -> int | None:
        """Store the blob, verified; the bytes read from the source, None if already stored.

        Errors of the source stream propagate unchanged; disk errors become a
        LayoutError; content that does not verify an IntegrityError.
        """
        final = self._files.blob_path(desc.digest)
        dir_fd = await anyio.to_thread.run_sync(
            lambda: self._files.open_blob_dir(final.parent.name, create=True)
        )
        try:
            await self.sweep_once()
            temp = await self._acquire(dir_fd, final)
            try:
                if self.has(desc):  # another writer finished it meanwhile
                    temp.remove()
                    return None
                return await self._fill(repository, desc, temp, opener, on_progress, final)
            finally:
                temp.close()
        finally:
            os.close(dir_fd)

    async def _acquire(self, dir_fd: int, final: Path) -> LockedTemp:
        where = f"blobs/{final.parent.name}"
        with self._files.disk_errors(f"create a temporary file in {final.parent}"):
            temp = await anyio.to_thread.run_sync(
                tempfiles.lock_resumable, dir_fd, final.parent, final.name, where
            )
            if temp is None:
                log.info("layout.temp_busy", layout=self._files.display, file=final.name)
                temp = await anyio.to_thread.run_sync(
                    tempfiles.lock_private, dir_fd, final.parent, final.name, where
                )
        return temp

    async def _fill(
        self,
        repository: str,
        desc: Descriptor,
        temp: LockedTemp,
        opener: BlobOpener,
        on_progress: ProgressCallback | None,
        final: Path,
    ) -> int:
        filling = _Filling(self._files, temp, desc)
        try:
            offset = await filling.adopt()
            if on_progress is not None:
                await on_progress(UploadProgress(repository, desc.digest, temp.location, offset))
            if offset:
                log.info(
                    "layout.blob_resumed",
                    layout=self._files.display,
                    digest=desc.digest,
                    offset=offset,
                    location=temp.location,
                )
            sent = await self._fill_from(filling, opener, offset)
            await filling.commit(final)
        except (IntegrityError, LayoutError):
            temp.remove()
            raise
        except BaseException:
            if filling.written == 0:  # nothing worth continuing
                temp.remove()
            raise
        return sent

    @staticmethod
    async def _fill_from(filling: _Filling, opener: BlobOpener, offset: int) -> int:
        """Append the source from ``offset`` and verify; from 0 again if a leftover was bad."""
        sent = 0
        try:
            if offset < filling.desc.size:
                sent += await filling.append(opener(offset))
            filling.verifier.verify()
            return sent
        except IntegrityError:
            if offset == 0:
                raise
        await filling.discard("its bytes and the rest do not match the digest")
        sent += await filling.append(opener(0))
        filling.verifier.verify()
        return sent

    # --------------------------------------------------- leftovers of others

    async def sweep_once(self) -> None:
        """Remove stale abandoned temporary files, once per store (before its first write)."""
        if self._swept:
            return
        async with self._sweep_lock:
            if self._swept:
                return
            files = self._files
            try:
                removed = await anyio.to_thread.run_sync(tempfiles.sweep_stale, files.root)
            except OSError as exc:
                log.warning("layout.temp_sweep_failed", layout=files.display, error=str(exc))
                removed = []
            self._swept = True
        if removed:
            log.info("layout.stale_temp_removed", layout=files.display, files=removed)

    async def cancel(self, location: str) -> None:
        """Remove the abandoned temporary file ``location`` names (failures are ignored)."""
        found = tempfiles.parse_location(location)
        if found is None:
            log.debug("layout.cancel_ignored", layout=self._files.display, location=location)
            return
        alg, name = found
        try:
            removed = await anyio.to_thread.run_sync(
                tempfiles.cancel_temp, self._files.root, alg, name
            )
        except LinkedDirectoryError as exc:
            log.warning(
                "layout.cancel_refused",
                layout=self._files.display,
                location=location,
                reason=exc.strerror,
            )
            return
        except OSError as exc:
            log.debug("layout.cancel_failed", location=location, error=str(exc))
            return
        if removed:
            log.info("layout.upload_cancelled", layout=self._files.display, location=location)

    # ------------------------------------------------------------------ read

    async def read(self, repository: str, desc: Descriptor, offset: int) -> AsyncIterator[bytes]:
        """Stream the blob from ``offset`` in 1 MiB chunks (see the module docstring)."""
        files = self._files
        path = files.blob_path(desc.digest)
        size = self.size(desc.digest)
        if size is None:
            raise NotFoundError(
                f"blob {desc.digest} not found in {files.display}",
                registry=files.display,
                repository=repository,
            )
        if size != desc.size:
            raise IntegrityError(
                f"{files.display}: blob {desc.digest} has {size} bytes on disk, "
                f"expected {desc.size}"
            )
        if offset < 0 or offset > size:
            raise InputError(f"offset {offset} is outside blob {desc.digest} of {size} bytes")
        verifier = DigestVerifier(desc.digest, desc.size) if offset == 0 else None
        with files.disk_errors(f"read {desc.digest}"):
            fh = await aiofiles.open(path, "rb")
        try:
            chunks = _held_back(fh, offset, verifier, files, f"read {desc.digest}")
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await fh.close()


async def _held_back(
    fh: aiofiles.threadpool.binary.AsyncBufferedReader,
    offset: int,
    verifier: DigestVerifier | None,
    files: LayoutFiles,
    what: str,
) -> AsyncGenerator[bytes, None]:
    """The file's chunks from ``offset``; with a verifier the last one only once it verified."""
    if offset:
        with files.disk_errors(what):
            await fh.seek(offset)
    held: bytes | None = None
    while True:
        with files.disk_errors(what):
            chunk = await fh.read(READ_CHUNK)
        if not chunk:
            break
        if verifier is not None:
            verifier.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if verifier is not None:
        try:
            verifier.verify()
        except IntegrityError as exc:
            raise IntegrityError(f"{files.display}: corrupt blob: {exc.message}") from None
    if held is not None:
        yield held
