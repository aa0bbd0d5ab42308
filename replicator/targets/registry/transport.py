"""The one request path every registry operation goes through.

:class:`Transport` owns the aiohttp session of one registry host and sends every
request of the registry target: it adds the authorization headers for the
request's scopes, answers a 401 challenge once, retries what is worth retrying
(408, 429, 500 for reads, 502, 503, 504 and broken connections) with jittered
exponential backoff that honours ``Retry-After``, follows redirects without
leaking the registry's ``Authorization`` to another host, counts requests and
turns every failure into one :mod:`replicator.errors` exception.

Guarantees:

* A request body is sent again only when it can be re-created: ``data`` bytes,
  or a ``body`` factory that re-opens the stream.  A stream that fails while
  being sent is never retried from the middle by the transport.
* An exception raised by a ``body`` factory's iterator (an
  :class:`~replicator.errors.IntegrityError` from a verifying source, say)
  surfaces as itself, not as a connection error.
* Only :mod:`replicator.errors` exceptions leave this module.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from replicator.errors import ConnectionFailedError, ReferenceError, ReplicatorError
from replicator.oci.reference import MAX_REPOSITORY_LENGTH, REPOSITORY_RE
from replicator.targets.base import RequestStats
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.errors import (
    connection_error,
    error_from_response,
    parse_retry_after,
    protocol_error,
)
from replicator.targets.registry.options import RegistryOptions, uses_plain_http

log = structlog.get_logger("replicator.registry.transport")

#: Re-creates a request body stream for each attempt.
BodyFactory = Callable[[], AsyncIterator[bytes]]

_RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_ERROR_BODY_CAP = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD"})
#: What Go's TLS servers (distribution among them) answer to a plain HTTP request.
_HTTPS_ONLY_MARK = "HTTP request to an HTTPS server"


def _https_only_error(host: str) -> ConnectionFailedError:
    """A plain-HTTP request reached a TLS port: no retry can help, say what will."""
    return ConnectionFailedError(
        f"{host} speaks HTTPS, not plain HTTP: reach it over TLS with --ca-file "
        "(loopback hosts default to plain HTTP)"
    )


class AuthProvider(Protocol):
    """What the transport needs from an authenticator (see ``auth.Authenticator``)."""

    async def authorize(
        self, session: aiohttp.ClientSession, scopes: Sequence[str]
    ) -> dict[str, str]:
        """Headers for a request needing ``scopes`` from what is already known."""
        ...

    async def on_challenge(
        self,
        session: aiohttp.ClientSession,
        www_authenticate: str,
        scopes: Sequence[str],
        *,
        sent_authorization: str | None = None,
    ) -> dict[str, str]:
        """Answer a 401 challenge; headers to retry with (raises AuthenticationError)."""
        ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished answer: status, headers, the (capped) body and the final URL."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


@dataclass(slots=True)
class RequestSpec:
    """Everything that describes one logical request (sent one or more times).

    ``what`` names the object for error messages (``manifest "v1"``); ``ok``
    the statuses that count as success (anything else becomes an exception).
    """

    method: str
    url: URL
    kind: str
    scopes: Sequence[str]
    repository: str | None
    what: str
    ok: Container[int]
    headers: Mapping[str, str] | None = None
    data: bytes | None = None
    body: BodyFactory | None = None
    follow_redirects: bool = False
    retry_500: bool | None = None
    #: False: send once; failures are the caller's to handle (a stream with state).
    retry: bool = True


class _BodyFailure:
    """Remembers an exception raised by a streamed body while aiohttp sent it."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None


class Transport:
    """Sends requests to one registry host (``host[:port]``) under ``options``."""

    def __init__(self, host: str, options: RegistryOptions, auth: AuthProvider) -> None:
        self.host = host
        self.options = options
        self.auth = auth
        self.stats = RequestStats()
        scheme = "http" if uses_plain_http(host, options) else "https"
        self.base_url = URL(f"{scheme}://{host}")
        self._session: aiohttp.ClientSession | None = None

    # -- session ---------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """The host's session, created on first use (one connection pool per target)."""
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        return self._session

    def _ssl_context(self) -> ssl.SSLContext | bool:
        """TLS settings of the connector: built only when the options ask for more than the default.

        ``True`` is aiohttp's own verifying context (``ssl.create_default_context()``,
        made once when aiohttp is imported, its system CA roots read on first use:
        see :mod:`._aiohttp`): building another one per target costs ~35 ms
        (``set_default_verify_paths``), for nothing on plain-HTTP hosts.
        """
        if self.options.insecure:
            return False
        if not self.options.ca_file:
            return True
        ctx = ssl.create_default_context()
        if self.options.ca_file:
            try:
                ctx.load_verify_locations(cafile=self.options.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ReplicatorError(
                    f"cannot load CA file {self.options.ca_file}: "
                    f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
                ) from None
        return ctx

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.options.max_connections,
            ssl=self._ssl_context(),
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.options.connect_timeout,
            sock_read=self.options.read_timeout,
        )
        # No aiohttp TraceConfig: its per-request signals cost more CPU than the
        # one thing they told us (the authenticator's token requests, which it
        # counts itself: see _sync_tokens).
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": "replicator/0.1"},
        )

    def _sync_tokens(self) -> None:
        """Copy the authenticator's count of token requests into the stats."""
        n = getattr(self.auth, "token_requests", None)
        if isinstance(n, int):
            self.stats.token = n

    async def aclose(self) -> None:
        """Close the session and its connections (idempotent)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- URLs ------------------------------------------------------------------------------

    def url(self, path: str, query: Mapping[str, str] | None = None) -> URL:
        """Absolute URL of ``path`` (``/v2/...``) on this host."""
        url = self.base_url.with_path(path)
        return url.with_query(query) if query else url

    def repo_url(self, repository: str, tail: str, query: Mapping[str, str] | None = None) -> URL:
        """Absolute URL of ``/v2/<repository>/<tail>``; the repository name is validated.

        A name outside the distribution grammar (``..``, upper case, empty
        components) is a :class:`~replicator.errors.ReferenceError`, never a request.
        """
        if len(repository) > MAX_REPOSITORY_LENGTH or not REPOSITORY_RE.match(repository):
            shown = repository if len(repository) <= 80 else repository[:79] + "…"
            raise ReferenceError(f"invalid repository name {shown!r} for {self.host}")
        return self.url(f"/v2/{repository}/{tail}", query)

    def is_own_origin(self, url: URL) -> bool:
        """True when ``url`` is on this registry (scheme, host and effective port)."""
        base = self.base_url
        return (
            url.scheme == base.scheme
            and (url.host or "").lower() == (base.host or "").lower()
            and url.port == base.port
        )

    def resolve(self, base: URL, location: str) -> URL:
        """Resolve a ``Location`` (possibly relative, maybe with a query) against ``base``.

        The location's encoding is kept byte for byte: upload locations carry
        opaque state that must not be re-encoded.
        """
        target = URL(location, encoded=True)
        if target.is_absolute():
            return target
        return base.join(target)

    # -- sending ---------------------------------------------------------------------------

    async def request(self, spec: RequestSpec, *, max_body: int = _ERROR_BODY_CAP) -> Reply:
        """Send ``spec`` and read its body (at most ``max_body`` bytes, more is an error).

        A GET whose body breaks off while being read is sent again (with backoff).
        """
        attempt = 0
        while True:
            attempt += 1
            async with self.stream(spec) as resp:
                if spec.method == "HEAD":
                    return Reply(resp.status, resp.headers, b"", resp.url)
                try:
                    body = await read_capped(resp, max_body, strict=True, host=self.host, spec=spec)
                except ConnectionFailedError:
                    if (
                        spec.method not in _IDEMPOTENT
                        or not spec.retry
                        or attempt >= self.options.retry.attempts
                    ):
                        raise
                    retry = True
                else:
                    retry = False
                    self.stats.add("bytes_received", len(body))
                    reply = Reply(resp.status, resp.headers, body, resp.url)
            if not retry:
                return reply
            await self._backoff(spec, attempt, None, reason="body broken off")

    @asynccontextmanager
    async def stream(self, spec: RequestSpec) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send ``spec`` and hand over the open response (released on exit)."""
        resp = await self._send(spec)
        try:
            yield resp
        finally:
            resp.release()

    async def _send(self, spec: RequestSpec) -> aiohttp.ClientResponse:
        attempt = 0
        challenged = 0
        extra_auth: dict[str, str] | None = None
        url = spec.url
        redirects = 0
        # Credentials go to the registry's own origin only: never to another host an
        # upload Location or a redirect points at.
        same_origin = self.is_own_origin(url)
        while True:
            attempt += 1
            headers: CIMultiDict[str] = CIMultiDict(spec.headers or {})
            if same_origin:
                auth_headers = extra_auth or await self._authorize(spec.scopes)
                headers.update(auth_headers)
            failure = _BodyFailure()
            data: Any = spec.data
            if spec.body is not None:
                data = self._counted(spec.body(), failure)
            elif spec.data is not None:
                self.stats.add("bytes_sent", len(spec.data))
            self.stats.add(spec.kind)
            try:
                resp = await self.session.request(
                    spec.method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if failure.error is not None:
                    raise _as_replicator_error(failure.error, self.host) from None
                if isinstance(exc, aiohttp.ClientResponseError) and _HTTPS_ONLY_MARK in str(
                    exc.message
                ):
                    raise _https_only_error(self.host) from None
                if isinstance(exc, aiohttp.ClientResponseError):
                    # aiohttp could not parse the answer as HTTP at all.
                    raise protocol_error(
                        self.host, spec.repository, "the answer is not valid HTTP"
                    ) from None
                err = connection_error(self.host, exc)
                if self._may_retry_connection(spec, exc, attempt):
                    await self._backoff(spec, attempt, None, reason=type(exc).__name__)
                    continue
                raise err from None
            except BaseException:
                if failure.error is not None and isinstance(failure.error, ReplicatorError):
                    raise failure.error from None
                raise

            status = resp.status
            if status in spec.ok:
                return resp
            if status in _REDIRECTS and spec.follow_redirects and "Location" in resp.headers:
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    resp.release()
                    raise protocol_error(self.host, spec.repository, "too many redirects")
                new_url = self.resolve(resp.url, resp.headers["Location"])
                resp.release()
                same_origin = self.is_own_origin(new_url)
                url = new_url
                attempt -= 1
                continue
            if status == 401 and same_origin and challenged < 2:
                challenge = resp.headers.get("WWW-Authenticate")
                resp.release()
                if challenge:
                    # The authenticator raises the right error when the credential it
                    # just gave was refused; a second challenge allows one fresh token.
                    challenged += 1
                    try:
                        extra_auth = await self.auth.on_challenge(
                            self.session,
                            challenge,
                            list(spec.scopes),
                            sent_authorization=headers.get("Authorization"),
                        )
                    finally:
                        self._sync_tokens()
                    attempt -= 1
                    continue
                raise error_from_response(
                    401, b"", registry=self.host, repository=spec.repository, what=spec.what
                )
            body = await read_capped(resp, _ERROR_BODY_CAP, strict=False, host=self.host, spec=spec)
            if status == 400 and _HTTPS_ONLY_MARK.encode() in body:
                resp.release()
                raise _https_only_error(self.host)
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            resp.release()
            if self._may_retry_status(spec, status, attempt, retry_after):
                await self._backoff(spec, attempt, retry_after, reason=f"HTTP {status}")
                continue
            raise error_from_response(
                status,
                body,
                registry=self.host,
                repository=spec.repository,
                what=spec.what,
                attempts=attempt,
                expected=_describe_statuses(spec.ok),
            )

    async def _authorize(self, scopes: Sequence[str]) -> dict[str, str]:
        try:
            return await self.auth.authorize(self.session, list(scopes))
        finally:
            self._sync_tokens()

    async def _counted(
        self, source: AsyncIterator[bytes], failure: _BodyFailure
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in source:
                self.stats.add("bytes_sent", len(chunk))
                yield chunk
        except Exception as exc:  # not GeneratorExit/CancelledError: those are ours
            failure.error = exc
            raise
        finally:
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()

    def _may_retry_connection(self, spec: RequestSpec, exc: BaseException, attempt: int) -> bool:
        if not spec.retry or attempt >= self.options.retry.attempts:
            return False
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            return False
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return False
        if isinstance(exc, aiohttp.ClientConnectorError):
            # A refused connection rarely heals within seconds: try a couple of times only.
            return attempt < min(3, self.options.retry.attempts)
        return True

    def _may_retry_status(
        self, spec: RequestSpec, status: int, attempt: int, retry_after: float | None
    ) -> bool:
        policy = self.options.retry
        if not spec.retry or attempt >= policy.attempts:
            return False
        if retry_after is not None and retry_after > policy.max_retry_after:
            return False
        if status in _RETRY_STATUSES:
            return True
        if status == 500:
            return spec.retry_500 if spec.retry_500 is not None else spec.method in _IDEMPOTENT
        return False

    async def _backoff(
        self, spec: RequestSpec, attempt: int, retry_after: float | None, *, reason: str
    ) -> None:
        policy = self.options.retry
        delay = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.stats.add("retries")
        log.info(
            "registry.retry",
            host=self.host,
            kind=spec.kind,
            method=spec.method,
            reason=reason,
            attempt=attempt,
            delay=round(delay, 3),
        )
        await asyncio.sleep(delay)


def _describe_statuses(ok: Container[int]) -> str | None:
    """``201`` / ``200 or 206`` / ``200-299`` for an error message."""
    if isinstance(ok, range) and ok.step == 1 and len(ok):
        return f"{ok.start}-{ok.stop - 1}"
    if isinstance(ok, tuple | list | frozenset | set):
        return " or ".join(str(s) for s in sorted(ok))
    return None


def _as_replicator_error(exc: BaseException, host: str) -> BaseException:
    if isinstance(exc, ReplicatorError):
        return exc
    return connection_error(host, exc)


async def read_capped(
    resp: aiohttp.ClientResponse, cap: int, *, strict: bool, host: str, spec: RequestSpec
) -> bytes:
    """Read a response body of at most ``cap`` bytes.

    ``strict``: a longer body is a :class:`ProtocolError`; otherwise it is cut.
    Connection failures while reading become :class:`ConnectionFailedError`.
    """
    length = resp.content_length
    if strict and length is not None and length > cap:
        raise protocol_error(
            host, spec.repository, f"{spec.what} is larger than {cap} bytes", status=resp.status
        )
    buf = bytearray()
    try:
        while True:
            chunk = await resp.content.read(min(65536, cap + 1 - len(buf)))
            if not chunk:
                break
            buf += chunk
            if len(buf) > cap:
                if strict:
                    raise protocol_error(
                        host,
                        spec.repository,
                        f"{spec.what} is larger than {cap} bytes",
                        status=resp.status,
                    )
                return bytes(buf[:cap])
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        if strict:
            raise connection_error(host, exc) from None
    return bytes(buf)
