"""Blob uploads: monolithic, chunked, resumed, mounted and cancelled.

The distribution protocol (see PROTOCOL.md, "Blob upload") in one class,
:class:`Uploader`, driven by the registry target.

Guarantees:

* Memory does not grow with the blob, nor with the chunk size: every request
  body (the monolithic ``PUT``, each ``PATCH``) streams the opener's pieces as
  they come, so reading the source overlaps sending to the registry.  A chunk
  that has to be sent again is read again (the opener re-opened at the offset
  the registry confirmed), never kept in memory.  Only small blobs up to
  :data:`SMALL_BLOB` are held whole so that every retry can resend them.
* Upload locations are used exactly as the registry handed them out (relative
  ones resolved against the answering URL), the newest one each time; query
  parameters are appended with ``&``, never rebuilt.
* When the upload started at byte 0 the bytes are hashed on the way and checked
  against the descriptor before the upload is closed, so nothing is committed
  under a digest whose content did not verify; a resumed upload, and one pushed
  with ``verify=False`` (its source verifies itself), relies on the registry's
  own check at the closing ``PUT ...?digest=``.  Sizes are checked always.
* A failed upload is cancelled (``DELETE``, errors ignored); an interrupted
  chunked upload (task cancelled) is left open so that it can be resumed.
* A cross-repository mount the registry answers with 202 (not mounted, but an
  upload session begun) keeps that session as *pending* for (repository,
  digest): the next push of that blob to that repository uploads into it
  instead of opening another one (one ``POST`` in all, not three requests).
  A pending session is handed to one push only; if it turns out to be gone
  (404) the push opens a fresh one.  One not used within
  :data:`PENDING_SESSION_TTL` seconds, made useless (the blob turned out to be
  present, or a newer mount replaced it) or still pending at :meth:`Uploader.aclose`
  is cancelled, so no session is left dangling.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from yarl import URL

from replicator.errors import (
    ConnectionFailedError,
    IntegrityError,
    NotFoundError,
    RateLimitedError,
    RegistryError,
    ReplicatorError,
    ServerError,
)
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier
from replicator.targets.base import BlobOpener, BlobPushResult, ProgressCallback, UploadProgress
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.transport import BodyFactory, Reply, RequestSpec, Transport

log = structlog.get_logger("replicator.registry.uploads")

#: Blobs up to this size are read into memory and sent with one replayable PUT.
SMALL_BLOB = 4 * 1024 * 1024

_RANGE_RE = re.compile(r"^\s*(?:bytes=)?(\d+)-(\d+)\s*$")
_LOCATION_REPO_RE = re.compile(r"^/v2/(.+)/blobs/uploads/[^/]*$")
_MAX_SESSION_RESTARTS = 2

_RETRYABLE_UPLOAD_ERRORS = (ConnectionFailedError, ServerError, RateLimitedError)

#: Seconds a session opened by a failed mount waits for the push that follows it
#: before it is cancelled.  Read when a session is kept (tests shorten it).
PENDING_SESSION_TTL = 30.0
#: At most this many pending sessions per registry; the oldest is cancelled first.
MAX_PENDING_SESSIONS = 64


def push_scopes(repository: str) -> list[str]:
    """Token scopes for writing to ``repository``."""
    return [f"repository:{repository}:pull,push"]


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


def _fork(verifier: DigestVerifier | None) -> DigestVerifier | None:
    """An independent copy of ``verifier`` (same bytes hashed so far), or None."""
    return verifier.copy() if verifier is not None else None


async def _close_stream(stream: AsyncIterator[bytes]) -> None:
    """Close an opener's stream; one still being read by an abandoned request is left to it.

    aiohttp sends a streamed body from a task of its own and cancels that task
    when the request fails: a stream that task is reading cannot be closed from
    here (``already running``), the cancellation ends it instead.
    """
    closer = getattr(stream, "aclose", None)
    if closer is None:
        return
    with contextlib.suppress(RuntimeError):
        await closer()


@dataclass(slots=True, eq=False)
class _Cursor:
    """One open stream of the source: where it stands and what was hashed."""

    stream: AsyncIterator[bytes]
    position: int
    verifier: DigestVerifier | None
    #: The tail of a piece cut at a body's end, first in the next body.
    carry: bytes = b""
    #: A read was in progress (or broke off): the stream is not to be used again.
    busy: bool = False
    eof: bool = False


class _ChunkSource:
    """The blob's bytes, handed to PATCH requests as bodies without a chunk buffer.

    Each body pulls its bytes straight from the opener's stream as aiohttp sends
    them, so reading the source and sending to the registry overlap and memory
    holds a few of the stream's pieces, not a chunk.  Only a piece straddling the
    end of a body is cut (its tail opens the next body).

    A body that was not sent completely cannot be replayed from memory: the
    source is re-opened at the offset to continue from (:meth:`rewind`).  The
    hash state at the start of each chunk is kept (:meth:`mark`), so a chunk sent
    again from its start is still verified end to end.  A failure of the source
    itself is recorded in :attr:`failed` (no upload retry can mend it).
    """

    def __init__(self, opener: BlobOpener, offset: int, verifier: DigestVerifier | None) -> None:
        self._opener = opener
        self._cursor = _Cursor(opener(offset), offset, verifier)
        self._mark: tuple[int, DigestVerifier | None] = (offset, _fork(verifier))
        self.failed: BaseException | None = None

    @property
    def position(self) -> int:
        """Offset of the next byte the current stream gives."""
        return self._cursor.position

    @property
    def verifier(self) -> DigestVerifier | None:
        """The hash of every byte before :attr:`position`, when it is known."""
        return self._cursor.verifier

    def mark(self) -> None:
        """Remember the hash state here: a chunk starting at this offset can be sent again."""
        cursor = self._cursor
        self._mark = (cursor.position, _fork(cursor.verifier))

    def can_continue_at(self, offset: int) -> bool:
        """True when the current stream stands at ``offset`` and is safe to read on."""
        cursor = self._cursor
        return cursor.position == offset and not cursor.busy

    async def rewind(self, offset: int) -> None:
        """Continue at ``offset`` (re-opening the source there unless it stands there already)."""
        if self.can_continue_at(offset):
            return
        old = self._cursor
        mark_offset, mark_verifier = self._mark
        verifier = _fork(mark_verifier) if mark_offset == offset else None
        self._cursor = _Cursor(self._opener(offset), offset, verifier)
        await _close_stream(old.stream)

    async def _pull(self, cursor: _Cursor) -> bytes | None:
        """The next non-empty piece of ``cursor``'s stream; None at its end."""
        if cursor.carry:
            piece, cursor.carry = cursor.carry, b""
            return piece
        while not cursor.eof:
            cursor.busy = True
            try:
                piece = await anext(cursor.stream)
            except StopAsyncIteration:
                cursor.eof = True
                cursor.busy = False
                return None
            except Exception as exc:
                self.failed = exc
                raise
            cursor.busy = False
            if piece:
                return piece
        return None

    async def body(self, n: int) -> AsyncIterator[bytes]:
        """Exactly the next ``n`` bytes (an :class:`IntegrityError` if the source ends sooner)."""
        cursor = self._cursor
        left = n
        while left > 0:
            piece = await self._pull(cursor)
            if piece is None:
                self.failed = IntegrityError(
                    f"source ended after {cursor.position} bytes, {left} short of the chunk"
                )
                raise self.failed
            if len(piece) > left:
                cursor.carry = piece[left:]
                piece = piece[:left]
            left -= len(piece)
            cursor.position += len(piece)
            if cursor.verifier is not None:
                cursor.verifier.update(piece)
            yield piece

    def resend(self, offset: int, n: int) -> AsyncIterator[bytes]:
        """A body of ``n`` bytes from ``offset``, re-opening the source when needed."""

        async def again() -> AsyncIterator[bytes]:
            await self.rewind(offset)
            async for piece in self.body(n):
                yield piece

        return again()

    async def at_end(self) -> bool:
        """True when the source has nothing after :attr:`position`."""
        cursor = self._cursor
        piece = await self._pull(cursor)
        if piece is None:
            return True
        cursor.carry = piece
        return False

    async def aclose(self) -> None:
        """Close the current stream."""
        await _close_stream(self._cursor.stream)


async def _sized(source: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Pass ``source`` through, checking only that it holds exactly ``size`` bytes.

    For sources that verify themselves (``verify=False``): the registry checks
    the digest at the closing ``PUT``.
    """
    seen = 0
    try:
        async for chunk in source:
            seen += len(chunk)
            if seen > size:
                raise IntegrityError(f"source is longer than the declared {size} bytes")
            yield chunk
        if seen != size:
            raise IntegrityError(f"source ended after {seen} of the declared {size} bytes")
    finally:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()


async def _verified(source: AsyncIterator[bytes], verifier: DigestVerifier) -> AsyncIterator[bytes]:
    """Pass ``source`` through, holding the last chunk back until the digest verified."""
    pending: bytes | None = None
    try:
        async for chunk in source:
            if not chunk:
                continue
            verifier.update(chunk)
            if pending is not None:
                yield pending
            pending = chunk
        verifier.verify()
        if pending is not None:
            yield pending
    finally:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()


@dataclass(slots=True)
class _PendingSession:
    """An upload session a failed mount opened, waiting for the push of its blob."""

    location: URL
    min_chunk: int | None
    timer: asyncio.TimerHandle | None = None


class Uploader:
    """Runs blob uploads against one registry through its :class:`Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        #: (repository, digest) -> the session a failed mount left for its push.
        self._pending: dict[tuple[str, str], _PendingSession] = {}
        #: Cancellations running in the background (awaited by :meth:`aclose`).
        self._background: set[asyncio.Task[None]] = set()

    @property
    def _host(self) -> str:
        return self.transport.host

    async def aclose(self) -> None:
        """Cancel every pending session and wait for background cancellations."""
        pending = list(self._pending.items())
        self._pending.clear()
        for _, session in pending:
            if session.timer is not None:
                session.timer.cancel()
        if pending:
            await asyncio.gather(
                *(self.cancel(session.location, repo) for (repo, _), session in pending)
            )
        while self._background:
            tasks = list(self._background)
            self._background.difference_update(tasks)
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- sessions kept from failed mounts -----------------------------------------------------

    def _keep(self, repository: str, digest: str, location: URL, min_chunk: int | None) -> None:
        """Keep the session a 202 mount answer opened for the push of ``digest``."""
        key = (repository, digest)
        self.discard_pending(repository, digest)  # the caller took it already: a no-op
        while len(self._pending) >= MAX_PENDING_SESSIONS:
            oldest = next(iter(self._pending))
            self.discard_pending(*oldest)
        session = _PendingSession(location, min_chunk)
        session.timer = asyncio.get_running_loop().call_later(
            PENDING_SESSION_TTL, self._expire, key, session
        )
        self._pending[key] = session
        log.debug("registry.upload.session_kept", host=self._host, repository=repository)

    def _take(self, repository: str, digest: str) -> _PendingSession | None:
        """The pending session for ``(repository, digest)``, now owned by the caller."""
        session = self._pending.pop((repository, digest), None)
        if session is not None and session.timer is not None:
            session.timer.cancel()
            session.timer = None
        return session

    def discard_pending(self, repository: str, digest: str) -> None:
        """Cancel the pending session for ``(repository, digest)``, if any (in the background)."""
        session = self._take(repository, digest)
        if session is not None:
            self._spawn(self.cancel(session.location, repository))

    def _expire(self, key: tuple[str, str], session: _PendingSession) -> None:
        if self._pending.get(key) is session:
            del self._pending[key]
            log.debug("registry.upload.session_expired", host=self._host, repository=key[0])
            self._spawn(self.cancel(session.location, key[0]))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- sessions --------------------------------------------------------------------------

    async def start(self, repository: str) -> tuple[URL, int | None]:
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
            )
        )
        return self._location(reply, repository), _min_chunk(reply)

    def _location(self, reply: Reply, repository: str) -> URL:
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

    async def status(self, location: URL, repository: str | None = None) -> int:
        """Bytes the registry acknowledged for the upload at ``location``.

        Raises :class:`NotFoundError` when the session is gone.
        """
        offset, _ = await self.status_location(location, repository)
        return offset

    async def status_location(
        self, location: URL, repository: str | None = None
    ) -> tuple[int, URL]:
        """Acknowledged bytes and the location to continue with.

        A registry may hand out a new ``Location`` with the status (distribution
        carries the offset in its ``_state``): continuing with the old one after
        the offset moved would be refused.
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
        newest = location
        if reply.headers.get("Location"):
            newest = self._location(reply, repo or "")
        return offset or 0, newest

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

    async def mount(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Cross-repository mount; True when mounted, False otherwise.

        On False the upload session the registry opened (202) is kept pending
        for the next :meth:`push` of ``desc`` to ``repository``.
        """
        url = self.transport.repo_url(
            repository,
            "blobs/uploads/",
            {"mount": desc.digest, "from": from_repository},
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
        previous = self._take(repository, desc.digest)
        mounted = reply.status == 201
        location = reply.headers.get("Location")
        if not mounted and location:
            url = self.transport.resolve(reply.url, location)
            if self.transport.is_own_origin(url):
                self._keep(repository, desc.digest, url, _min_chunk(reply))
        if previous is not None:
            await self.cancel(previous.location, repository)
        return mounted

    # -- pushing ---------------------------------------------------------------------------

    async def push(
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
        """Upload a blob (see ``Target.push_blob``); returns after the registry confirmed it.

        ``verify=False``: the bytes are not hashed on the way (their source
        verified them); sizes are still checked, and the registry checks the
        digest at the closing ``PUT ...?digest=`` either way.
        """
        options = self.transport.options
        if resume is not None and resume.digest == desc.digest and resume.repository == repository:
            location = URL(resume.location, encoded=True)
            try:
                offset, location = await self.status_location(location, repository)
            except (NotFoundError, RegistryError) as exc:
                if not isinstance(exc, NotFoundError) and exc.code != "BLOB_UPLOAD_INVALID":
                    raise
                # Gone (expired) or refused (distribution 2.8 invalidates a session
                # whose stored size differs from the offset its Location carries,
                # e.g. after a chunk was cut off by a kill): start the blob over.
                log.info(
                    "registry.upload.resume_gone",
                    host=self._host,
                    digest=desc.digest,
                    offset=resume.offset,
                    code=exc.code,
                )
                await self.cancel(location, repository)
            else:
                log.info(
                    "registry.upload.resume", host=self._host, digest=desc.digest, offset=offset
                )
                # The journal's session goes on: one a failed mount opened is not needed.
                self.discard_pending(repository, desc.digest)
                size = max(chunk_size or options.chunk_size, 1)
                sent = await self._chunked_with_restarts(
                    repository, desc, opener, size, on_progress, (location, offset, None), verify
                )
                return BlobPushResult("uploaded", sent)
        if chunk_size is None and desc.size <= options.monolithic_max:
            if desc.size <= SMALL_BLOB:
                sent = await self._small(repository, desc, opener, on_progress, verify)
                return BlobPushResult("uploaded", sent)
            sent = await self._monolithic(repository, desc, opener, on_progress, verify)
            return BlobPushResult("uploaded", sent)
        size = max(chunk_size or options.chunk_size, 1)
        sent = await self._chunked_with_restarts(
            repository, desc, opener, size, on_progress, None, verify
        )
        return BlobPushResult("uploaded", sent)

    async def _close(self, repository: str, desc: Descriptor, location: URL) -> None:
        try:
            reply = await self._send_close(repository, desc, location)
        except NotFoundError:
            if await self._landed(repository, desc):
                return
            raise
        self._check_confirmed(reply, repository, desc)

    async def _send_close(
        self,
        repository: str,
        desc: Descriptor,
        location: URL,
        *,
        data: bytes = b"",
        body: BodyFactory | None = None,
        retry: bool = True,
    ) -> Reply:
        """The closing ``PUT <location>?digest=``: empty after PATCHes, or carrying the blob."""
        headers = {"Content-Type": "application/octet-stream"}
        if body is not None:
            headers["Content-Length"] = str(desc.size)  # a stream: aiohttp cannot know it
        elif not data:
            headers["Content-Length"] = "0"
        return await self.transport.request(
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
            )
        )

    async def _landed(self, repository: str, desc: Descriptor) -> bool:
        """After a closing PUT failed: did an earlier attempt (answer lost) store the blob?"""
        try:
            await self.transport.request(
                RequestSpec(
                    method="HEAD",
                    url=self.transport.repo_url(repository, f"blobs/{desc.digest}"),
                    kind="blob_head",
                    scopes=push_scopes(repository),
                    repository=repository,
                    what=f"blob {desc.digest}",
                    ok=(200,),
                    follow_redirects=True,
                )
            )
        except ReplicatorError:
            return False
        log.info("registry.upload.answer_lost", host=self._host, digest=desc.digest)
        return True

    def _check_confirmed(self, reply: Reply, repository: str, desc: Descriptor) -> None:
        confirmed = reply.headers.get("Docker-Content-Digest")
        if confirmed and confirmed != desc.digest:
            raise protocol_error(
                self._host,
                repository,
                f"registry stored blob {desc.digest} as {confirmed}",
                status=reply.status,
            )

    async def _opened(
        self, repository: str, desc: Descriptor, location: URL, on_progress: ProgressCallback | None
    ) -> None:
        """Report a new upload session at offset 0, so a killed run knows to resume or cancel it."""
        if on_progress is not None:
            await on_progress(UploadProgress(repository, desc.digest, str(location), 0))

    async def _small(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        on_progress: ProgressCallback | None = None,
        verify: bool = True,
    ) -> int:
        verifier = DigestVerifier(desc.digest, desc.size) if verify else None
        parts: list[bytes] = []
        source = opener(0) if verify else _sized(opener(0), desc.size)
        try:
            async for chunk in source:
                if verifier is not None:
                    verifier.update(chunk)
                parts.append(chunk)
        finally:
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()
        if verifier is not None:
            verifier.verify()
        data = b"".join(parts)
        pending = self._take(repository, desc.digest)
        while True:
            # The session a failed mount left goes first; a fresh one if it is gone.
            if pending is not None:
                location, reused, pending = pending.location, True, None
            else:
                location, _ = await self.start(repository)
                reused = False
            try:
                await self._opened(repository, desc, location, on_progress)
                reply = await self._send_close(repository, desc, location, data=data)
                self._check_confirmed(reply, repository, desc)
            except NotFoundError:
                # A retried PUT after a lost answer finds its session closed.
                if await self._landed(repository, desc):
                    return len(data)
                if reused:
                    self._log_pending_gone(repository, desc)
                    continue
                await asyncio.shield(self.cancel(location, repository))
                raise
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise  # no awaiting while being cancelled; the registry expires the session
            except BaseException:
                await asyncio.shield(self.cancel(location, repository))
                raise
            return len(data)

    def _log_pending_gone(self, repository: str, desc: Descriptor) -> None:
        log.info(
            "registry.upload.pending_session_gone",
            host=self._host,
            repository=repository,
            digest=desc.digest,
        )

    async def _monolithic(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        on_progress: ProgressCallback | None = None,
        verify: bool = True,
    ) -> int:
        """Stream the blob in one PUT; a failure restarts with a fresh session."""
        attempts = self.transport.options.retry.attempts
        attempt = 0
        pending = self._take(repository, desc.digest)
        while True:
            # The session a failed mount left goes first, and costs no attempt.
            if pending is not None:
                location, reused, pending = pending.location, True, None
            else:
                attempt += 1
                location, _ = await self.start(repository)
                reused = False
            try:
                await self._opened(repository, desc, location, on_progress)
                reply = await self._send_close(
                    repository,
                    desc,
                    location,
                    body=lambda: self._whole_body(desc, opener, verify),
                    retry=False,
                )
                self._check_confirmed(reply, repository, desc)
                return desc.size
            except NotFoundError:
                if not reused:
                    await asyncio.shield(self.cancel(location, repository))
                    raise
                self._log_pending_gone(repository, desc)
            except _RETRYABLE_UPLOAD_ERRORS as exc:
                await asyncio.shield(self.cancel(location, repository))
                if await self._landed(repository, desc):
                    return desc.size
                if reused:
                    continue
                if attempt >= attempts:
                    raise
                await self._pause(attempt, repository, exc)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise  # no awaiting while being cancelled; the registry expires the session
            except BaseException:
                await asyncio.shield(self.cancel(location, repository))
                raise

    @staticmethod
    def _whole_body(desc: Descriptor, opener: BlobOpener, verify: bool) -> AsyncIterator[bytes]:
        if verify:
            return _verified(opener(0), DigestVerifier(desc.digest, desc.size))
        return _sized(opener(0), desc.size)

    async def _pause(self, attempt: int, repository: str, exc: BaseException) -> None:
        policy = self.transport.options.retry
        delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        self.transport.stats.add("retries")
        log.info(
            "registry.upload.retry",
            host=self._host,
            repository=repository,
            attempt=attempt,
            delay=round(delay, 3),
            error=str(exc),
        )
        await asyncio.sleep(delay)

    async def _chunked_with_restarts(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        chunk_size: int,
        on_progress: ProgressCallback | None,
        session: tuple[URL, int, int | None] | None,
        verify: bool = True,
    ) -> int:
        restarts = 0
        sent = 0
        pending = self._take(repository, desc.digest) if session is None else None
        reused = False
        while True:
            if session is None:
                if pending is not None:
                    # The session a failed mount left; losing it costs no restart.
                    location, min_len, reused, pending = (
                        pending.location,
                        pending.min_chunk,
                        True,
                        None,
                    )
                else:
                    location, min_len = await self.start(repository)
                    reused = False
                session = (location, 0, min_len)
                await self._opened(repository, desc, location, on_progress)
            location, offset, min_len = session
            size = max(chunk_size, min_len or 0)
            try:
                return sent + await self._chunked(
                    repository, desc, opener, location, offset, size, on_progress, verify
                )
            except _SessionGone as gone:
                sent += gone.sent
                session = None
                if reused:
                    self._log_pending_gone(repository, desc)
                    reused = False
                    continue
                restarts += 1
                if restarts > _MAX_SESSION_RESTARTS:
                    raise gone.error from None
                log.info(
                    "registry.upload.session_gone",
                    host=self._host,
                    digest=desc.digest,
                    restart=restarts,
                )
                session = None

    async def _chunked(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        location: URL,
        offset: int,
        chunk_size: int,
        on_progress: ProgressCallback | None,
        verify: bool = True,
    ) -> int:
        """PATCH chunks from ``offset`` on, then close; returns the bytes sent.

        Each PATCH body streams from the source (:class:`_ChunkSource`); a chunk
        that failed is sent again from the offset the registry confirmed, the
        source re-opened there.
        """
        verifier = DigestVerifier(desc.digest, desc.size) if verify and offset == 0 else None
        source = _ChunkSource(opener, offset, verifier)
        sent = 0
        recoveries = 0
        max_recoveries = self.transport.options.retry.attempts
        try:
            while offset < desc.size:
                n = min(chunk_size, desc.size - offset)
                source.mark()
                try:
                    reply = await self._patch(repository, desc, location, offset, n, source)
                except NotFoundError as exc:
                    if source.failed is not None:
                        raise
                    raise _SessionGone(exc, sent) from None
                except (RegistryError, ConnectionFailedError) as exc:
                    if source.failed is not None:
                        raise  # the source broke, not the upload
                    if (
                        isinstance(exc, RegistryError)
                        and exc.status not in (416, None)
                        and not (isinstance(exc, _RETRYABLE_UPLOAD_ERRORS))
                    ):
                        raise
                    recoveries += 1
                    if recoveries > max_recoveries:
                        raise
                    try:
                        confirmed, location = await self.status_location(location, repository)
                    except NotFoundError as gone:
                        raise _SessionGone(gone, sent) from None
                    log.info(
                        "registry.upload.recover",
                        host=self._host,
                        digest=desc.digest,
                        sent=offset,
                        confirmed=confirmed,
                    )
                    if confirmed == offset + n and source.can_continue_at(confirmed):
                        # The chunk landed, only its answer was lost.
                        offset = confirmed
                        sent += n
                        continue
                    # Anything else: go on from what the registry holds, reading the
                    # source again from there (hashed on only from a chunk's start).
                    await source.rewind(confirmed)
                    sent += max(0, confirmed - offset)
                    offset = confirmed
                    continue
                location = self._location(reply, repository)
                acknowledged = parse_range(reply.headers.get("Range"))
                end = offset + n
                if acknowledged is not None and acknowledged != end:
                    raise protocol_error(
                        self._host,
                        repository,
                        f"upload of {desc.digest} acknowledged {acknowledged} bytes, "
                        f"expected {end}",
                        status=reply.status,
                    )
                offset = end
                sent += n
                if on_progress is not None:
                    await on_progress(
                        UploadProgress(repository, desc.digest, str(location), offset)
                    )
            # Size checks cost nothing: the source must end exactly here.
            if not await source.at_end():
                raise IntegrityError(
                    f"{desc.digest}: source is longer than the declared {desc.size} bytes"
                )
            if source.verifier is not None:
                source.verifier.verify()
            await self._close(repository, desc, location)
            return sent
        except (_SessionGone, asyncio.CancelledError, KeyboardInterrupt):
            # Interrupted, not failed: the session stays open so that a later run
            # can resume it from the progress its journal recorded.
            raise
        except BaseException:
            await asyncio.shield(self.cancel(location, repository))
            raise
        finally:
            await source.aclose()

    async def _patch(
        self,
        repository: str,
        desc: Descriptor,
        location: URL,
        offset: int,
        n: int,
        source: _ChunkSource,
    ) -> Reply:
        """PATCH the next ``n`` bytes of ``source``; a retry by the transport re-reads them."""
        attempts = 0

        def body() -> AsyncIterator[bytes]:
            nonlocal attempts
            attempts += 1
            return source.body(n) if attempts == 1 else source.resend(offset, n)

        return await self.transport.request(
            RequestSpec(
                method="PATCH",
                url=location,
                kind="blob_patch",
                scopes=push_scopes(repository),
                repository=repository,
                what=f"blob {desc.digest}",
                ok=(202, 204),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(n),
                    "Content-Range": f"{offset}-{offset + n - 1}",
                },
                body=body,
            )
        )


class _SessionGone(Exception):
    """The upload session vanished (404); the push starts over with a new one."""

    def __init__(self, error: ReplicatorError, sent: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent = sent


def _min_chunk(reply: Reply) -> int | None:
    value = reply.headers.get("OCI-Chunk-Min-Length")
    if value and value.strip().isdigit():
        return int(value.strip())
    return None
