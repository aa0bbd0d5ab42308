"""Blob upload sessions: open, ask, close, cancel, mount — and keep for later.

:class:`UploadSessions` speaks the session half of the blob upload protocol
(see PROTOCOL.md, "Blob upload") for one registry; :mod:`.uploads` drives the
bytes through it.

Guarantees:

* Upload locations are used exactly as the registry handed them out (relative
  ones resolved against the answering URL), the newest one each time; query
  parameters are appended with ``&``, never rebuilt.  A location on another
  origin than the registry's is refused: no blob byte goes there.
* A cancelled session is cancelled with a ``DELETE`` whose failure is ignored;
  cancelling an abandoned session is shielded from the cancellation of the
  caller and bounded to :data:`CANCEL_GRACE` seconds.
* A cross-repository mount the registry answers with 202 (not mounted, but an
  upload session begun) keeps that session as *pending* for (repository,
  digest): the next push of that blob to that repository uploads into it
  instead of opening another one.  A pending session is handed to one push
  only.  One made useless (the blob turned out to be present, a newer mount
  replaced it, :data:`MAX_PENDING_SESSIONS` are kept already) is cancelled at
  once; one not taken within :data:`PENDING_SESSION_TTL` seconds is cancelled
  by the next upload operation of the target, and every one still pending at
  :meth:`UploadSessions.aclose`.  No background task is involved: every
  cancellation is awaited by the operation that makes it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog
from yarl import URL

from replicator.errors import ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import ProgressCallback, UploadProgress
from replicator.targets.registry.blobs import BlobReader
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.exchange import BodyFactory, Reply, RequestSpec
from replicator.targets.registry.manifests import push_scopes
from replicator.targets.registry.transport import Transport

log = structlog.get_logger("replicator.registry.uploads")

_RANGE_RE = re.compile(r"^\s*(?:bytes=)?(\d+)-(\d+)\s*$")
_LOCATION_REPO_RE = re.compile(r"^/v2/(.+)/blobs/uploads/[^/]*$")

#: Seconds a session opened by a failed mount waits for the push that follows it
#: before it is cancelled.  Read when a session is kept (tests shorten it).
PENDING_SESSION_TTL = 30.0
#: At most this many pending sessions per registry; the oldest is cancelled first.
MAX_PENDING_SESSIONS = 64
#: Seconds an abandoned session's cancellation may take.
CANCEL_GRACE = 5.0


def with_query(location: URL, name: str, value: str) -> URL:
    """``location`` with ``name=value`` appended to its query, keeping the rest verbatim."""
    text = str(location)
    sep = "&" if location.raw_query_string else ("" if text.endswith("?") else "?")
    return URL(f"{text}{sep}{name}={_quote(value)}", encoded=True)


def _quote(value: str) -> str:
    # Digests are [a-z0-9:+._-=]: only ``+`` and ``=`` need escaping in a query.
    return value.replace("%", "%25").replace("+", "%2B").replace("=", "%3D").replace("&", "%26")


def parse_range(value: str | None) -> int | None:
    """Bytes acknowledged by an upload ``Range`` header (``0-<end>`` or ``bytes=0-<end>``).

    ``None`` when absent or malformed.  distribution writes ``0-0`` for an empty
    upload too, so ``0-0`` counts as 0 bytes (chunks are never one byte long).
    """
    if value is None:
        return None
    match = _RANGE_RE.match(value)
    if not match:
        return None
    start, end = int(match.group(1)), int(match.group(2))
    if start != 0 or end < start:
        return None
    return 0 if end == 0 else end + 1


def repository_of_location(location: URL) -> str | None:
    """The repository named by an upload location's path (``/v2/<name>/blobs/uploads/<id>``)."""
    match = _LOCATION_REPO_RE.match(location.path)
    return match.group(1) if match else None


def min_chunk(reply: Reply) -> int | None:
    """The registry's minimum chunk length (``OCI-Chunk-Min-Length``), if it names one."""
    value = reply.headers.get("OCI-Chunk-Min-Length")
    if value and value.strip().isdigit():
        return int(value.strip())
    return None


def is_interruption(exc: BaseException) -> bool:
    """True for a cancellation or Ctrl-C: nothing may be awaited, the session stays."""
    return isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt)


@dataclass(slots=True)
class PendingSession:
    """An upload session a failed mount opened, waiting for the push of its blob."""

    location: URL
    min_chunk: int | None
    expires_at: float


class PendingSessions:
    """Pending sessions by (repository, digest), oldest first (no I/O here)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_key: dict[tuple[str, str], PendingSession] = {}

    def keep(
        self, repository: str, digest: str, location: URL, min_len: int | None
    ) -> list[tuple[str, PendingSession]]:
        """Keep a session for ``(repository, digest)``; the ones it displaces, to cancel."""
        displaced: list[tuple[str, PendingSession]] = []
        previous = self._by_key.pop((repository, digest), None)
        if previous is not None:
            displaced.append((repository, previous))
        while len(self._by_key) >= MAX_PENDING_SESSIONS:
            oldest = next(iter(self._by_key))
            displaced.append((oldest[0], self._by_key.pop(oldest)))
        expires_at = self._clock() + PENDING_SESSION_TTL
        self._by_key[(repository, digest)] = PendingSession(location, min_len, expires_at)
        return displaced

    def take(self, repository: str, digest: str) -> PendingSession | None:
        """The live pending session for ``(repository, digest)``, now owned by the caller."""
        session = self._by_key.get((repository, digest))
        if session is None or session.expires_at <= self._clock():
            return None
        return self._by_key.pop((repository, digest))

    def expired(self) -> list[tuple[str, PendingSession]]:
        """Remove and return the sessions whose time is up."""
        now = self._clock()
        gone = [key for key, s in self._by_key.items() if s.expires_at <= now]
        return [(key[0], self._by_key.pop(key)) for key in gone]

    def drain(self) -> list[tuple[str, PendingSession]]:
        """Remove and return every pending session."""
        out = [(key[0], s) for key, s in self._by_key.items()]
        self._by_key.clear()
        return out


class UploadSessions:
    """Upload sessions of one registry through its :class:`Transport` (see module doc)."""

    def __init__(self, transport: Transport, blobs: BlobReader) -> None:
        self.transport = transport
        self.blobs = blobs
        self.pending = PendingSessions()

    @property
    def _host(self) -> str:
        return self.transport.host

    # -- opening, asking, closing ----------------------------------------------------------

    async def start(self, repository: str, *, attempt: int = 1) -> tuple[URL, int | None]:
        """Open an upload session: its location and the registry's minimum chunk length."""
        reply = await self.transport.request(
            RequestSpec(
                method="POST",
                url=self.transport.repo_url(repository, "blobs/uploads/"),
                kind="blob_upload_start",
                scopes=push_scopes(repository),
                repository=repository,
                what="blob upload",
                ok=(202,),
                headers={"Content-Length": "0"},
            ),
            attempt=attempt,
        )
        return self.location(reply, repository), min_chunk(reply)

    def location(self, reply: Reply, repository: str) -> URL:
        """The ``Location`` of an upload answer, resolved; refused when on another origin."""
        location = reply.headers.get("Location")
        if not location:
            raise protocol_error(
                self._host, repository, "upload answer without a Location header", status=202
            )
        url = self.transport.resolve(reply.url, location)
        if not self.transport.is_own_origin(url):
            raise protocol_error(
                self._host,
                repository,
                f"the upload location points to another host ({url.host}:{url.port}); "
                "refusing to send the blob there",
                status=reply.status,
            )
        return url

    async def status(self, location: URL, repository: str | None = None) -> tuple[int, URL]:
        """Acknowledged bytes and the location to continue with.

        A registry may hand out a new ``Location`` with the status (distribution
        carries the offset in its ``_state``): continuing with the old one after
        the offset moved would be refused.  Raises :class:`NotFoundError` when
        the session is gone.
        """
        repo = repository or repository_of_location(location)
        reply = await self.transport.request(
            RequestSpec(
                method="GET",
                url=location,
                kind="blob_upload_status",
                scopes=push_scopes(repo) if repo else [],
                repository=repo,
                what="blob upload",
                ok=(200, 204),
            )
        )
        offset = parse_range(reply.headers.get("Range"))
        newest = self.location(reply, repo or "") if reply.headers.get("Location") else location
        return offset or 0, newest

    async def close(
        self,
        repository: str,
        desc: Descriptor,
        location: URL,
        *,
        data: bytes = b"",
        body: BodyFactory | None = None,
        retry: bool = True,
        attempt: int = 1,
    ) -> None:
        """The closing ``PUT <location>?digest=``: empty after PATCHes, or carrying the blob.

        Returns once the registry confirmed the blob under ``desc.digest``.
        """
        headers = {"Content-Type": "application/octet-stream"}
        if body is not None:
            headers["Content-Length"] = str(desc.size)  # a stream: aiohttp cannot know it
        elif not data:
            headers["Content-Length"] = "0"
        reply = await self.transport.request(
            RequestSpec(
                method="PUT",
                url=with_query(location, "digest", desc.digest),
                kind="blob_put",
                scopes=push_scopes(repository),
                repository=repository,
                what=f"blob {desc.digest}",
                ok=(201, 204),
                headers=headers,
                data=None if body is not None else data,
                body=body,
                retry=retry,
            ),
            attempt=attempt,
        )
        confirmed = reply.headers.get("Docker-Content-Digest")
        if confirmed and confirmed != desc.digest:
            raise protocol_error(
                self._host,
                repository,
                f"registry stored blob {desc.digest} as {confirmed}",
                status=reply.status,
            )

    async def landed(self, repository: str, desc: Descriptor) -> bool:
        """After a closing PUT failed: did an earlier attempt (answer lost) store the blob?"""
        try:
            await self.transport.request(
                self.blobs.head_spec(repository, desc, push_scopes(repository))
            )
        except ReplicatorError:
            return False
        log.info("registry.upload.answer_lost", host=self._host, digest=desc.digest)
        return True

    async def opened(
        self, repository: str, desc: Descriptor, location: URL, on_progress: ProgressCallback | None
    ) -> None:
        """Report a new upload session at offset 0, so a killed run knows to resume or cancel it."""
        if on_progress is not None:
            await on_progress(UploadProgress(repository, desc.digest, str(location), 0))

    # -- cancelling ------------------------------------------------------------------------

    async def cancel(self, location: URL, repository: str | None = None) -> None:
        """Abandon the upload at ``location``; never raises for a registry answer."""
        repo = repository or repository_of_location(location)
        try:
            await self.transport.request(
                RequestSpec(
                    method="DELETE",
                    url=location,
                    kind="blob_upload_cancel",
                    # distribution asks the "delete" action for every DELETE.
                    scopes=[f"repository:{repo}:delete"] if repo else [],
                    repository=repo,
                    what="blob upload",
                    ok=range(200, 300),
                    retry=False,
                )
            )
        except ReplicatorError as exc:
            log.debug("registry.upload.cancel_failed", host=self._host, error=str(exc))

    async def abandon(self, location: URL, repository: str) -> None:
        """Cancel a session a failed upload leaves, even while being cancelled (bounded)."""
        with anyio.move_on_after(CANCEL_GRACE, shield=True):
            await self.cancel(location, repository)

    async def _cancel_all(self, sessions: list[tuple[str, PendingSession]]) -> None:
        if not sessions:
            return
        async with anyio.create_task_group() as group:
            for repository, session in sessions:
                group.start_soon(self.cancel, session.location, repository)

    # -- sessions kept from failed mounts --------------------------------------------------

    async def take_pending(self, repository: str, digest: str) -> PendingSession | None:
        """The pending session for ``(repository, digest)`` (expired ones cancelled first)."""
        await self._sweep()
        return self.pending.take(repository, digest)

    async def discard_pending(self, repository: str, digest: str) -> None:
        """Cancel the pending session for ``(repository, digest)``, if any."""
        await self._sweep()
        session = self.pending.take(repository, digest)
        if session is not None:
            await self.cancel(session.location, repository)

    async def _sweep(self) -> None:
        expired = self.pending.expired()
        for repository, _ in expired:
            log.debug("registry.upload.session_expired", host=self._host, repository=repository)
        await self._cancel_all(expired)

    async def mount(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Cross-repository mount; True when mounted, False otherwise.

        On False the upload session the registry opened (202) is kept pending
        for the next push of ``desc`` to ``repository``.
        """
        await self._sweep()
        url = self.transport.repo_url(
            repository, "blobs/uploads/", {"mount": desc.digest, "from": from_repository}
        )
        reply = await self.transport.request(
            RequestSpec(
                method="POST",
                url=url,
                kind="blob_mount",
                scopes=[
                    f"repository:{repository}:pull,push",
                    f"repository:{from_repository}:pull",
                ],
                repository=repository,
                what=f"blob {desc.digest}",
                ok=(201, 202),
                headers={"Content-Length": "0"},
            )
        )
        # A session an earlier mount of this blob kept is useless now: mounted, or
        # replaced by the one this answer opened.
        useless = self.pending.take(repository, desc.digest)
        displaced = [(repository, useless)] if useless is not None else []
        location = reply.headers.get("Location")
        if reply.status == 202 and location:
            kept = self.transport.resolve(reply.url, location)
            if self.transport.is_own_origin(kept):
                displaced += self.pending.keep(repository, desc.digest, kept, min_chunk(reply))
                log.debug("registry.upload.session_kept", host=self._host, repository=repository)
        await self._cancel_all(displaced)
        return reply.status == 201

    async def aclose(self) -> None:
        """Cancel every pending session."""
        await self._cancel_all(self.pending.drain())

    def log_pending_gone(self, repository: str, desc: Descriptor) -> None:
        """Note that a pending session turned out to be gone (a fresh one follows)."""
        log.info(
            "registry.upload.pending_session_gone",
            host=self._host,
            repository=repository,
            digest=desc.digest,
        )
