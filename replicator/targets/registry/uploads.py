"""Blob uploads: small, monolithic, chunked and resumed, with their recoveries.

:class:`Uploader` chooses how a blob goes up and drives its bytes through the
sessions of :mod:`.sessions`, with the request bodies of :mod:`.bodies`.

Guarantees:

* Memory does not grow with the blob, nor with the chunk size: every request
  body (the monolithic ``PUT``, each ``PATCH``) streams the opener's pieces as
  they come.  A chunk that has to be sent again is read again (the opener
  re-opened at the offset the registry confirmed), never kept in memory.  Only
  small blobs up to :data:`SMALL_BLOB` are held whole so that every retry can
  resend them.
* When the upload started at byte 0 the bytes are hashed on the way and checked
  against the descriptor before the upload is closed, so nothing is committed
  under a digest whose content did not verify; a resumed upload, and one pushed
  with ``verify=False`` (its source verifies itself), relies on the registry's
  own check at the closing ``PUT ...?digest=``.  Sizes are checked always.
* A chunk whose ``PATCH`` failed is sent again from the offset the registry
  confirms (asked with a status request); a session the registry lost (404) is
  replaced by a fresh one at most :data:`MAX_SESSION_RESTARTS` times.  So is
  the session of a small blob whose retried ``PUT`` is refused (a link that
  broke mid-body leaves distribution's session invalid): the blob is in memory.
* A failed upload is cancelled (``DELETE``, errors ignored); an interrupted
  chunked upload (task cancelled) is left open so that it can be resumed.
* A session a failed mount kept for this blob is used first (see
  :mod:`.sessions`); losing it costs no restart.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
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
from replicator.targets.registry.bodies import ChunkSource, read_whole, whole_body
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.exchange import Reply, RequestSpec
from replicator.targets.registry.manifests import push_scopes
from replicator.targets.registry.sessions import (
    UploadSessions,
    is_interruption,
    parse_range,
)
from replicator.targets.registry.transport import Transport

log = structlog.get_logger("replicator.registry.uploads")

#: Blobs up to this size are read into memory and sent with one replayable PUT.
SMALL_BLOB = 4 * 1024 * 1024
#: Fresh sessions a chunked upload may open after the registry lost its session.
MAX_SESSION_RESTARTS = 2

_RETRYABLE_UPLOAD_ERRORS = (ConnectionFailedError, ServerError, RateLimitedError)


class _SessionGone(Exception):
    """The upload session vanished (404); the push starts over with a new one."""

    def __init__(self, error: ReplicatorError, sent: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent = sent


@dataclass(slots=True)
class _ChunkRun:
    """Where a chunked upload stands: newest location, confirmed offset, bytes sent."""

    location: URL
    offset: int
    sent: int = 0
    recoveries: int = 0


def _recoverable(exc: RegistryError | ConnectionFailedError) -> bool:
    """Whether a failed PATCH is worth asking the registry where the upload stands."""
    if isinstance(exc, _RETRYABLE_UPLOAD_ERRORS):
        return True
    return exc.status in (416, None)


class Uploader:
    """Runs blob uploads against one registry (see module doc)."""

    def __init__(self, transport: Transport, sessions: UploadSessions) -> None:
        self.transport = transport
        self.sessions = sessions

    @property
    def _host(self) -> str:
        return self.transport.host

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
        size = max(chunk_size or options.chunk_size, 1)
        if resume is not None and resume.digest == desc.digest and resume.repository == repository:
            sent = await self._resume(repository, desc, opener, resume, size, on_progress, verify)
            if sent is not None:
                return BlobPushResult("uploaded", sent)
        if chunk_size is None and desc.size <= options.monolithic_max:
            if desc.size <= SMALL_BLOB:
                sent = await self._small(repository, desc, opener, on_progress, verify)
            else:
                sent = await self._monolithic(repository, desc, opener, on_progress, verify)
            return BlobPushResult("uploaded", sent)
        sent = await self._chunked_with_restarts(
            repository, desc, opener, size, on_progress, None, verify
        )
        return BlobPushResult("uploaded", sent)

    async def _resume(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        resume: UploadProgress,
        chunk_size: int,
        on_progress: ProgressCallback | None,
        verify: bool,
    ) -> int | None:
        """Continue the session a previous run left; None when it cannot be continued."""
        location = URL(resume.location, encoded=True)
        try:
            offset, location = await self.sessions.status(location, repository)
        except RegistryError as exc:
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
            await self.sessions.cancel(location, repository)
            return None
        log.info("registry.upload.resume", host=self._host, digest=desc.digest, offset=offset)
        # The journal's session goes on: one a failed mount opened is not needed.
        await self.sessions.discard_pending(repository, desc.digest)
        return await self._chunked_with_restarts(
            repository, desc, opener, chunk_size, on_progress, (location, offset, None), verify
        )

    # -- small and monolithic --------------------------------------------------------------

    async def _small(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        on_progress: ProgressCallback | None,
        verify: bool,
    ) -> int:
        """Read the blob into memory, then POST + PUT it (the PUT retried as it is)."""
        data = await read_whole(desc, opener, verify)
        pending = await self.sessions.take_pending(repository, desc.digest)
        restarts = 0
        while True:
            # The session a failed mount left goes first; a fresh one if it is gone.
            if pending is not None:
                location, reused, pending = pending.location, True, None
            else:
                location, _ = await self.sessions.start(repository)
                reused = False
            try:
                await self.sessions.opened(repository, desc, location, on_progress)
                await self.sessions.close(repository, desc, location, data=data)
            except NotFoundError:
                # A retried PUT after a lost answer finds its session closed; one
                # after a link that broke mid-body finds it refused (distribution
                # keeps the bytes that arrived: BLOB_UPLOAD_INVALID).  The blob is
                # at hand: it goes again in a fresh session.
                if await self.sessions.landed(repository, desc):
                    return len(data)
                if reused:
                    self.sessions.log_pending_gone(repository, desc)
                    continue
                await self.sessions.abandon(location, repository)
                restarts += 1
                if restarts > MAX_SESSION_RESTARTS:
                    raise
                log.info(
                    "registry.upload.session_lost",
                    host=self._host,
                    digest=desc.digest,
                    restart=restarts,
                )
                continue
            except BaseException as exc:
                if not is_interruption(exc):
                    await self.sessions.abandon(location, repository)
                raise
            return len(data)

    async def _monolithic(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        on_progress: ProgressCallback | None,
        verify: bool,
    ) -> int:
        """Stream the blob in one PUT; a failure restarts with a fresh session."""
        attempt = 0
        pending = await self.sessions.take_pending(repository, desc.digest)
        while True:
            # The session a failed mount left goes first, and costs no attempt.
            if pending is not None:
                location, reused, pending = pending.location, True, None
            else:
                attempt += 1
                location, _ = await self.sessions.start(repository)
                reused = False
            try:
                await self.sessions.opened(repository, desc, location, on_progress)
                await self.sessions.close(
                    repository,
                    desc,
                    location,
                    body=lambda: whole_body(desc, opener, verify),
                    retry=False,
                    attempt=max(1, attempt),
                )
                return desc.size
            except NotFoundError:
                if not reused:
                    await self.sessions.abandon(location, repository)
                    raise
                self.sessions.log_pending_gone(repository, desc)
            except _RETRYABLE_UPLOAD_ERRORS as exc:
                if not await self._may_restart(repository, desc, location, reused, attempt, exc):
                    return desc.size
            except BaseException as exc:
                if not is_interruption(exc):
                    await self.sessions.abandon(location, repository)
                raise

    async def _may_restart(
        self,
        repository: str,
        desc: Descriptor,
        location: URL,
        reused: bool,
        attempt: int,
        exc: ReplicatorError,
    ) -> bool:
        """After a failed streamed PUT: True to try a fresh session, False when it landed."""
        await self.sessions.abandon(location, repository)
        if await self.sessions.landed(repository, desc):
            return False
        if reused:
            return True
        if attempt >= self.transport.options.retry.attempts:
            raise exc
        policy = self.transport.options.retry
        delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        log.info(
            "registry.upload.retried",
            host=self._host,
            repository=repository,
            attempt=attempt,
            delay=round(delay, 3),
            error=str(exc),
        )
        await anyio.sleep(delay)
        return True

    # -- chunked ---------------------------------------------------------------------------

    async def _chunked_with_restarts(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        chunk_size: int,
        on_progress: ProgressCallback | None,
        session: tuple[URL, int, int | None] | None,
        verify: bool,
    ) -> int:
        """A chunked upload, in a fresh session again when the registry lost the last one."""
        restarts = 0
        sent = 0
        pending = (
            None
            if session is not None
            else await self.sessions.take_pending(repository, desc.digest)
        )
        reused = False
        while True:
            if session is None:
                if pending is not None:
                    # The session a failed mount left; losing it costs no restart.
                    session, reused = (pending.location, 0, pending.min_chunk), True
                    pending = None
                else:
                    location, min_len = await self.sessions.start(repository)
                    session, reused = (location, 0, min_len), False
                await self.sessions.opened(repository, desc, session[0], on_progress)
            location, offset, min_len = session
            size = max(chunk_size, min_len or 0)
            try:
                return sent + await self._chunked(
                    repository, desc, opener, _ChunkRun(location, offset), size, on_progress, verify
                )
            except _SessionGone as gone:
                sent += gone.sent
                session = None
                if reused:
                    self.sessions.log_pending_gone(repository, desc)
                    continue
                restarts += 1
                if restarts > MAX_SESSION_RESTARTS:
                    raise gone.error from None
                log.info(
                    "registry.upload.session_lost",
                    host=self._host,
                    digest=desc.digest,
                    restart=restarts,
                )

    async def _chunked(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        run: _ChunkRun,
        chunk_size: int,
        on_progress: ProgressCallback | None,
        verify: bool,
    ) -> int:
        """PATCH chunks from ``run.offset`` on, then close; returns the bytes sent.

        Each PATCH body streams from the source (:class:`ChunkSource`); a chunk
        that failed is sent again from the offset the registry confirmed, the
        source re-opened there.
        """
        verifier = DigestVerifier(desc.digest, desc.size) if verify and run.offset == 0 else None
        source = ChunkSource(opener, run.offset, verifier)
        try:
            while run.offset < desc.size:
                await self._next_chunk(repository, desc, source, run, chunk_size, on_progress)
            await self._finish(repository, desc, source, run.location)
            return run.sent
        except _SessionGone:
            raise
        except BaseException as exc:
            # Interrupted, not failed: the session stays open so that a later run
            # can resume it from the progress its journal recorded.
            if not is_interruption(exc):
                await self.sessions.abandon(run.location, repository)
            raise
        finally:
            await source.aclose()

    async def _next_chunk(
        self,
        repository: str,
        desc: Descriptor,
        source: ChunkSource,
        run: _ChunkRun,
        chunk_size: int,
        on_progress: ProgressCallback | None,
    ) -> None:
        """Send the chunk at ``run.offset`` (or recover from its failure); move ``run`` on."""
        n = min(chunk_size, desc.size - run.offset)
        source.mark()
        try:
            reply = await self._patch(repository, desc, run.location, run.offset, n, source)
        except NotFoundError as exc:
            if source.failed is not None:
                raise
            raise _SessionGone(exc, run.sent) from None
        except (RegistryError, ConnectionFailedError) as exc:
            if source.failed is not None or not _recoverable(exc):
                raise  # the source broke, not the upload; or the registry refused it
            await self._recover(repository, desc, source, run, n, exc)
            return
        run.location = self.sessions.location(reply, repository)
        acknowledged = parse_range(reply.headers.get("Range"))
        end = run.offset + n
        if acknowledged is not None and acknowledged != end:
            raise protocol_error(
                self._host,
                repository,
                f"upload of {desc.digest} acknowledged {acknowledged} bytes, expected {end}",
                status=reply.status,
            )
        run.offset, run.sent = end, run.sent + n
        if on_progress is not None:
            await on_progress(UploadProgress(repository, desc.digest, str(run.location), end))

    async def _recover(
        self,
        repository: str,
        desc: Descriptor,
        source: ChunkSource,
        run: _ChunkRun,
        n: int,
        exc: ReplicatorError,
    ) -> None:
        """After a failed PATCH: continue from the offset the registry confirms."""
        run.recoveries += 1
        if run.recoveries > self.transport.options.retry.attempts:
            raise exc
        try:
            confirmed, run.location = await self.sessions.status(run.location, repository)
        except NotFoundError as gone:
            raise _SessionGone(gone, run.sent) from None
        log.info(
            "registry.upload.recovered",
            host=self._host,
            digest=desc.digest,
            sent=run.offset,
            confirmed=confirmed,
        )
        if confirmed == run.offset + n and source.can_continue_at(confirmed):
            # The chunk landed, only its answer was lost.
            run.offset, run.sent = confirmed, run.sent + n
            return
        # Anything else: go on from what the registry holds, reading the source
        # again from there (hashed on only from a chunk's start).
        await source.rewind(confirmed)
        run.sent += max(0, confirmed - run.offset)
        run.offset = confirmed

    async def _finish(
        self, repository: str, desc: Descriptor, source: ChunkSource, location: URL
    ) -> None:
        """Every chunk is in: check the source's end and digest, then close the upload."""
        # Size checks cost nothing: the source must end exactly here.
        if not await source.at_end():
            raise IntegrityError(
                f"{desc.digest}: source is longer than the declared {desc.size} bytes"
            )
        if source.verifier is not None:
            source.verifier.verify()
        try:
            await self.sessions.close(repository, desc, location)
        except NotFoundError:
            if not await self.sessions.landed(repository, desc):
                raise

    async def _patch(
        self,
        repository: str,
        desc: Descriptor,
        location: URL,
        offset: int,
        n: int,
        source: ChunkSource,
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
