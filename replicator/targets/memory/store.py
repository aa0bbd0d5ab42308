"""The memory store's core: repositories, request counting, faults, blob uploads.

:class:`MemoryStore` is the base of :class:`~replicator.targets.memory.MemoryTarget`
(see the package doc for the guarantees).  Every request goes through
:meth:`MemoryStore._request`: a checkpoint, one count under the registry
target's kind, an entry in the request log, and the injected faults' turn.
Uploads follow the registry target's requests: monolithic (``POST``, ``PUT``)
or chunked (``POST``, ``PATCH`` per chunk, ``PUT``), resumable from an open
session; the closing ``PUT`` verifies the whole content before anything is
stored.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

import anyio
import anyio.lowlevel
import structlog

from replicator.errors import (
    InputError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    ReplicatorError,
    ServerError,
)
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier, verify_bytes
from replicator.oci.manifest import Manifest
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    RequestStats,
    UploadProgress,
)

log = structlog.get_logger("replicator.targets.memory")


@dataclass(frozen=True, slots=True)
class Request:
    """One request a registry would have been sent: kind, repository, digest or tag named."""

    kind: str
    repository: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class Write:
    """One committed change: a blob stored or mounted, a manifest stored or deleted, a tag set."""

    action: Literal["blob", "mount", "manifest", "tag", "delete"]
    repository: str
    digest: str
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class StoreView:
    """What one repository holds, read without a request (for assertions)."""

    blobs: frozenset[str]
    manifests: frozenset[str]
    tags: dict[str, str]


@dataclass(slots=True)
class Fault:
    """Requests of ``kind`` (naming ``name``, in ``repository``, when set) fail with ``error()``.

    The first ``after`` matching requests pass, the next ``times`` fail (``None``:
    all).  A failing request is counted: it was sent, and the store refused it.
    """

    kind: str
    error: Callable[[], ReplicatorError]
    name: str | None = None
    repository: str | None = None
    after: int = 0
    times: int | None = None
    matched: int = 0

    def fires(self, kind: str, repository: str | None, name: str | None) -> bool:
        """Count a matching request; True when this one must fail."""
        if kind != self.kind or self.name not in (None, name):
            return False
        if self.repository not in (None, repository):
            return False
        self.matched += 1
        n = self.matched - self.after
        return n > 0 and (self.times is None or n <= self.times)


@dataclass(slots=True)
class StoredManifest:
    """A manifest as stored: its bytes (damaged by ``corrupt``) and what they said at push."""

    raw: bytes
    manifest: Manifest


@dataclass(slots=True)
class Repository:
    """One repository: blobs and manifests by digest, tags by name."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, StoredManifest] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    named: bool = False  # tagged once: the registry knows the name from then on


@dataclass(slots=True)
class Session:
    """An open upload session: the bytes the store holds for it so far."""

    repository: str
    digest: str
    location: str
    data: bytearray = field(default_factory=bytearray)


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()


async def _read_all(stream: AsyncIterator[bytes], desc: Descriptor) -> bytes:
    """All of ``stream``, refused (IntegrityError) as soon as it passes ``desc.size``."""
    data = bytearray()
    try:
        async for piece in stream:
            data += piece
            if len(data) > desc.size:
                raise IntegrityError(f"{desc.digest}: more than the declared {desc.size} bytes")
    finally:
        await _aclose(stream)
    return bytes(data)


async def _chunks(stream: AsyncIterator[bytes], size: int) -> AsyncGenerator[bytes, None]:
    """``stream`` re-cut into pieces of ``size`` bytes (the last one shorter); closed after."""
    buffer = bytearray()
    try:
        async for piece in stream:
            buffer += piece
            while len(buffer) >= size:
                yield bytes(buffer[:size])
                del buffer[:size]
    finally:
        await _aclose(stream)
    if buffer:
        yield bytes(buffer)


class MemoryStore:
    """Repositories of blobs, manifests and tags in memory, with counted requests.

    ``mounts``: cross-repository mounts succeed.  Uploads without ``chunk_size``
    up to ``monolithic_max`` bytes go in one ``PUT``, others in ``PATCH``
    requests of ``chunk_size``; ``fetch_blob`` yields ``read_chunk`` bytes.
    """

    def __init__(
        self,
        name: str,
        *,
        mounts: bool = True,
        monolithic_max: int = 32 * 1024 * 1024,
        chunk_size: int = 32 * 1024 * 1024,
        read_chunk: int = 64 * 1024,
    ) -> None:
        self.name, self.mounts = name, mounts
        self.monolithic_max, self.chunk_size = monolithic_max, max(1, chunk_size)
        self.read_chunk = max(1, read_chunk)
        self.stats = RequestStats()  #: live counters (``CountsRequests``)
        self.requests: list[Request] = []
        self.writes: list[Write] = []
        self.faults: list[Fault] = []
        self.repos: dict[str, Repository] = {}
        self._sessions: dict[str, Session] = {}
        self._pending: set[tuple[str, str]] = set()  # sessions failed mounts opened

    def __repr__(self) -> str:
        return f"MemoryTarget({self.name!r})"

    # ------------------------------------------------------------ test seams

    def fail(
        self,
        kind: str,
        error: Callable[[], ReplicatorError] | None = None,
        *,
        name: str | None = None,
        repository: str | None = None,
        after: int = 0,
        times: int | None = None,
    ) -> Fault:
        """Make requests of ``kind`` fail (see :class:`Fault`); the default error is a 500."""
        default = lambda: ServerError(f"{self.name}: injected {kind} failure", status=500)  # noqa: E731
        fault = Fault(kind, error or default, name, repository, after, times)
        self.faults.append(fault)
        return fault

    def corrupt(self, repository: str, digest: str, data: bytes | None = None) -> None:
        """Replace the stored bytes of a blob or manifest (default: the last byte flipped)."""
        repo = self.repos[repository]
        old = repo.blobs[digest] if digest in repo.blobs else repo.manifests[digest].raw
        flipped = old[:-1] + bytes([old[-1] ^ 0xFF]) if old else b"\0"
        new = data if data is not None else flipped
        if digest in repo.blobs:
            repo.blobs[digest] = new
        else:
            repo.manifests[digest].raw = new

    def view(self, repository: str) -> StoreView:
        """What ``repository`` holds, without a request."""
        repo = self.repo(repository)
        return StoreView(frozenset(repo.blobs), frozenset(repo.manifests), dict(repo.tags))

    def count(self, kind: str, name: str | None = None) -> int:
        """Requests of ``kind`` sent so far (naming ``name``, when given)."""
        return sum(1 for r in self.requests if r.kind == kind and name in (None, r.name))

    def reset_stats(self) -> None:
        """Count afresh: counters (zeroed in place), request log and write log emptied."""
        for kind in self.stats.as_dict():
            setattr(self.stats, kind, 0)
        self.requests.clear()
        self.writes.clear()

    def restart_client(self) -> None:
        """Forget what the client side learned, as a new process would; the content stays."""
        self._pending.clear()

    @property
    def open_uploads(self) -> list[UploadProgress]:
        """Upload sessions still open (an interrupted chunked upload leaves one)."""
        return [
            UploadProgress(s.repository, s.digest, s.location, len(s.data))
            for s in self._sessions.values()
        ]

    # ------------------------------------------------------------ requests

    async def _request(self, kind: str, repository: str | None, name: str | None = None) -> None:
        """Let other tasks run, count one request, raise an injected fault if one fires."""
        await anyio.lowlevel.checkpoint()
        self.stats.add(kind)
        self.requests.append(Request(kind, repository, name))
        for fault in self.faults:
            if fault.fires(kind, repository, name):
                raise fault.error()

    def _error(self, repository: str, message: str, code: str) -> RegistryError:
        """What a registry answers: a NotFoundError (404) for an unknown name, else a 400."""
        unknown = code in ("BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN")
        cls = NotFoundError if unknown else RegistryError
        text = f"{self.name}/{repository}: {message}"
        status = 404 if unknown else 400
        return cls(text, status=status, code=code, registry=self.name, repository=repository)

    def repo(self, repository: str) -> Repository:
        """The repository (an empty one, not registered, when unknown)."""
        return self.repos.get(repository) or Repository()

    # ------------------------------------------------------------ blobs

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the blob is in ``repository`` (one ``blob_head``)."""
        await self._request("blob_head", repository, desc.digest)
        return desc.digest in self.repo(repository).blobs

    async def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream the stored bytes from ``offset``; read from 0, the last chunk once verified."""
        await self._request("blob_get", repository, desc.digest)
        data = self.repo(repository).blobs.get(desc.digest)
        if data is None:
            raise self._error(repository, f"blob {desc.digest} not found", "BLOB_UNKNOWN")
        if not 0 <= offset <= desc.size:
            raise InputError(f"offset {offset} outside blob {desc.digest} of {desc.size} bytes")
        verifier = DigestVerifier(desc.digest, desc.size if offset == 0 else desc.size - offset)
        held: bytes | None = None
        for start in range(offset, len(data), self.read_chunk):
            chunk = data[start : start + self.read_chunk]
            self.stats.add("bytes_received", len(chunk))
            verifier.update(chunk)  # from an offset: only the size is checked
            if held is not None:
                yield held
            held = chunk
        if offset == 0:
            try:
                verifier.verify()
            except IntegrityError as exc:
                raise IntegrityError(f"{self.name}/{repository}: {exc.message}") from None
        if held is not None:
            yield held

    async def push_blob(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        *,
        resume: UploadProgress | None = None,
        on_progress: ProgressCallback | None = None,
        chunk_size: int | None = None,
        verify: bool = True,
    ) -> BlobPushResult:
        """Upload as the registry target does; the blob is stored only once it verified.

        Without ``chunk_size``, up to ``monolithic_max`` bytes: the bytes are read,
        then ``POST`` and one ``PUT``.  Otherwise ``POST``, a ``PATCH`` per chunk
        (``on_progress`` after each), the closing ``PUT``.  ``resume`` continues an
        open session (one status request) from the offset the store holds.  A
        failed upload cancels its session; a cancelled one stays open to be resumed.
        """
        session = await self._resumed(repository, desc, resume)
        whole = session is None and chunk_size is None and desc.size <= self.monolithic_max
        data = await _read_all(opener(0), desc) if whole else b""
        session = session or await self._open(repository, desc, on_progress)
        start = len(session.data)
        try:
            if not whole:
                size = max(1, chunk_size or self.chunk_size)
                async with aclosing(_chunks(opener(start), size)) as chunks:
                    async for chunk in chunks:
                        await self._patch(session, desc, chunk, on_progress)
            await self._close(session, desc, data, verify)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._drop_session(session.location, session.repository)
            raise
        return BlobPushResult("uploaded", len(data) + len(session.data) - start)

    async def _resumed(
        self, repository: str, desc: Descriptor, resume: UploadProgress | None
    ) -> Session | None:
        """The open session ``resume`` names (asked with one status request), if still there."""
        if resume is None or (resume.repository, resume.digest) != (repository, desc.digest):
            return None
        await self._request("blob_upload_status", repository, desc.digest)
        session = self._sessions.get(resume.location)
        if session is None or (session.repository, session.digest) != (repository, desc.digest):
            return None
        return session

    async def _open(
        self, repository: str, desc: Descriptor, on_progress: ProgressCallback | None
    ) -> Session:
        """A new session (a failed mount of this blob opened one already: no request)."""
        if (repository, desc.digest) in self._pending:
            self._pending.discard((repository, desc.digest))
        else:
            await self._request("blob_upload_start", repository, desc.digest)
        location = f"/v2/{repository}/blobs/uploads/{uuid.uuid4().hex}"
        session = self._sessions[location] = Session(repository, desc.digest, location)
        if on_progress is not None:
            await on_progress(UploadProgress(repository, desc.digest, location, 0))
        return session

    async def _patch(
        self,
        session: Session,
        desc: Descriptor,
        chunk: bytes,
        on_progress: ProgressCallback | None,
    ) -> None:
        """One ``PATCH``, refused before sending when it would pass the declared size."""
        if len(session.data) + len(chunk) > desc.size:
            raise IntegrityError(f"{desc.digest}: more than the declared {desc.size} bytes")
        await self._request("blob_patch", session.repository, desc.digest)
        self.stats.add("bytes_sent", len(chunk))
        session.data += chunk
        if on_progress is not None:
            offset = len(session.data)
            await on_progress(
                UploadProgress(session.repository, desc.digest, session.location, offset)
            )

    async def _close(self, session: Session, desc: Descriptor, data: bytes, verify: bool) -> None:
        """The closing ``PUT``: the whole content verified, then stored and logged."""
        content = bytes(session.data) + data
        if verify:  # the client hashed on the way: a mismatch sends no PUT
            self._verify_upload(session, desc, content)
        await self._request("blob_put", session.repository, desc.digest)
        self.stats.add("bytes_sent", len(data))
        self._verify_upload(session, desc, content)  # the registry's own ?digest= check
        del self._sessions[session.location]
        self.repos.setdefault(session.repository, Repository()).blobs[desc.digest] = content
        self.writes.append(Write("blob", session.repository, desc.digest))

    def _verify_upload(self, session: Session, desc: Descriptor, content: bytes) -> None:
        try:
            verify_bytes(content, desc.digest, desc.size)
        except IntegrityError as exc:
            self._sessions.pop(session.location, None)
            raise IntegrityError(f"{self.name}/{session.repository}: {exc.message}") from None

    async def _drop_session(self, location: str, repository: str | None = None) -> None:
        """Cancel an upload session: one ``DELETE``, whose failure is ignored."""
        session = self._sessions.pop(location, None)
        repository = repository or (session.repository if session else None)
        try:
            await self._request("blob_upload_cancel", repository)
        except ReplicatorError as exc:
            log.debug("memory.upload_cancel_failed", target=self.name, error=str(exc))

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Link a blob of ``from_repository`` (one ``blob_mount``); False when not mounted.

        Not mounted (mounts disabled, or not there): the store opened an upload
        session instead (202), which the next push of that blob there uses.
        """
        await self._request("blob_mount", repository, desc.digest)
        data = self.repo(from_repository).blobs.get(desc.digest) if self.mounts else None
        if data is None:
            self._pending.add((repository, desc.digest))
            return False
        self.repos.setdefault(repository, Repository()).blobs[desc.digest] = data
        self.writes.append(Write("mount", repository, desc.digest))
        return True
