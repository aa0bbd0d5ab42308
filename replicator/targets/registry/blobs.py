"""Blob reads on a registry: presence checks and verified, resumable downloads.

:class:`BlobReader` serves ``blob_exists`` and ``fetch_blob`` of the registry
target.

Guarantees:

* Downloads are hashed as they stream, in the pieces the socket delivers
  (never joined or copied).  Read from offset 0, the last piece is yielded only
  after the digest and size verified (an :class:`~replicator.errors.IntegrityError`
  instead otherwise); from another offset, only the size is checked.
* A connection that breaks while a body streams is resumed with ``Range`` where
  it stopped (a server ignoring ``Range`` is skipped through), up to
  ``RetryPolicy.attempts`` failures in a row without progress.
* A blob GET that redirects to another origin (object storage) is followed
  without the registry's ``Authorization`` (see :mod:`.redirects`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import structlog
from yarl import URL

from replicator.errors import ConnectionFailedError, InputError, IntegrityError, NotFoundError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.errors import connection_error, protocol_error
from replicator.targets.registry.exchange import RequestSpec
from replicator.targets.registry.listing import pull_scopes
from replicator.targets.registry.transport import Transport

log = structlog.get_logger("replicator.registry.blobs")

#: What breaks a body while it streams (the request itself was answered).
_BROKEN_BODY = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)


@dataclass(slots=True)
class _Download:
    """Where one download stands: bytes taken, hash so far, failures in a row."""

    repository: str
    desc: Descriptor
    position: int
    verifier: DigestVerifier | None
    failures: int = 0
    reads: int = 0
    last_status: int = 0

    def take(self, chunk: bytes) -> None:
        """Account for ``chunk``: hash it (or check the size), move on."""
        if self.verifier is not None:
            self.verifier.update(chunk)
        elif self.position + len(chunk) > self.desc.size:
            raise IntegrityError(
                f"{self.desc.digest}: received more than the declared {self.desc.size} bytes"
            )
        self.position += len(chunk)
        self.failures = 0


class BlobReader:
    """Blob presence and downloads for one registry (see module doc)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def _host(self) -> str:
        return self.transport.host

    def url(self, repository: str, digest: str) -> URL:
        """URL of the blob ``digest`` in ``repository``."""
        return self.transport.repo_url(repository, f"blobs/{digest}")

    def head_spec(self, repository: str, desc: Descriptor, scopes: list[str]) -> RequestSpec:
        """The ``HEAD`` that asks whether the blob is in ``repository``."""
        return RequestSpec(
            method="HEAD",
            url=self.url(repository, desc.digest),
            kind="blob_head",
            scopes=scopes,
            repository=repository,
            what=f"blob {desc.digest}",
            ok=(200,),
            follow_redirects=True,
        )

    async def exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the blob ``desc.digest`` is in ``repository`` (HEAD)."""
        try:
            await self.transport.request(self.head_spec(repository, desc, pull_scopes(repository)))
        except NotFoundError:
            return False
        return True

    async def fetch(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream the blob from ``offset`` (see the module doc for the guarantees)."""
        if offset < 0 or offset > desc.size:
            raise InputError(f"offset {offset} outside blob {desc.digest} of {desc.size} bytes")
        if offset == desc.size and offset > 0:
            return
        verifier = DigestVerifier(desc.digest, desc.size) if offset == 0 else None
        state = _Download(repository, desc, offset, verifier)
        pending: bytes | None = None
        while True:
            try:
                async for chunk in self._read(state):
                    if pending is not None:
                        yield pending
                    pending = chunk
            except _BROKEN_BODY as exc:
                await self._pause(state, exc)
                continue
            if state.position >= desc.size:
                break
            self._ended_early(state)
        self._verify(state)
        if pending is not None:
            yield pending

    async def _read(self, state: _Download) -> AsyncIterator[bytes]:
        """One GET from ``state.position`` on; its pieces as the socket delivers them."""
        position = state.position
        headers = {"Range": f"bytes={position}-"} if position > 0 else {}
        spec = RequestSpec(
            method="GET",
            url=self.url(state.repository, state.desc.digest),
            kind="blob_get",
            scopes=pull_scopes(state.repository),
            repository=state.repository,
            what=f"blob {state.desc.digest}",
            ok=(200, 206),
            headers=headers,
            follow_redirects=True,
        )
        state.reads += 1
        async with self.transport.stream(spec, attempt=state.reads) as resp:
            state.last_status = resp.status
            skip = self._skip_for(resp, position, state)
            # The pieces as they came off the socket (up to 256 KiB each): no
            # re-cutting, so no joins or copies.
            async for chunk, _ in resp.content.iter_chunks():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                await self.transport.received(len(chunk))
                state.take(chunk)
                yield chunk

    def _skip_for(self, resp: aiohttp.ClientResponse, position: int, state: _Download) -> int:
        """Bytes to drop from the start of ``resp`` to continue at ``position``."""
        if position == 0:
            return 0
        if resp.status == 200:
            log.info("registry.blob_range_ignored", host=self._host, digest=state.desc.digest)
            return position
        content_range = resp.headers.get("Content-Range", "")
        start = content_range.removeprefix("bytes").strip().split("-", 1)[0].strip()
        if start != str(position):
            raise protocol_error(
                self._host,
                state.repository,
                f"blob {state.desc.digest}: asked bytes from {position}, "
                f"got range {content_range!r}",
                status=resp.status,
            )
        return 0

    async def _pause(self, state: _Download, exc: BaseException) -> None:
        """After a body broke off: wait a little before resuming, or give up."""
        policy = self.transport.options.retry
        state.failures += 1
        if state.failures >= policy.attempts:
            raise connection_error(self._host, exc) from None
        log.info(
            "registry.blob_download_resumed",
            host=self._host,
            repository=state.repository,
            digest=state.desc.digest,
            at=state.position,
            reason=type(exc).__name__,
        )
        await anyio.sleep(min(policy.max_delay, policy.base_delay * state.failures))

    def _ended_early(self, state: _Download) -> None:
        """A read ended before the blob's end: short blob (200) or partial range (206)."""
        desc = state.desc
        if state.last_status == 200:
            # The whole blob, as the server declares it, has arrived: it is short.
            raise IntegrityError(
                f"{self._host}/{state.repository}: blob {desc.digest}: size mismatch, "
                f"expected {desc.size} bytes, got {state.position}"
            )
        # A 206 may carry a partial range: ask for the rest.
        state.failures += 1
        if state.failures >= self.transport.options.retry.attempts:
            raise ConnectionFailedError(
                f"cannot reach {self._host}: blob {desc.digest} kept ending early"
            )

    def _verify(self, state: _Download) -> None:
        if state.verifier is None:
            return
        try:
            state.verifier.verify()
        except IntegrityError as exc:
            raise IntegrityError(f"{self._host}/{state.repository}: blob {exc}") from None
