"""The one request path every registry operation goes through.

:class:`Transport` owns the aiohttp session of one registry host and stacks the
layers each request passes, outermost first (see :mod:`.exchange`):

1. :class:`ErrorMapping` — an answer outside the request's ``ok`` statuses, or
   no answer at all, becomes exactly one :mod:`replicator.errors` exception;
2. :class:`~.auth_layer.AuthLayer` — credentials on, 401 challenges answered;
3. :class:`~.redirects.RedirectLayer` — redirects followed where asked, the
   registry's ``Authorization`` never sent to another origin;
4. :class:`~.retries.RetryLayer` — backoff with jitter, ``Retry-After``
   honoured, a time budget for a host that stopped answering;
5. :class:`~.ratelimit.RateLimitLayer` — only when the host has rate limits
   (``RegistryOptions.rate_limits``): request rate, bandwidth, quota pauses;
6. :class:`~.send.SingleRequest` — one request, counted in :attr:`Transport.stats`.

On top of the stack, :meth:`Transport.request` reads a (capped) body and sends
a GET again whose body broke off; :meth:`Transport.stream` hands the open
answer to a caller that streams it (blob downloads), who reports what it read
through :meth:`Transport.received` (counted, and paced by a bandwidth limit).

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

import random
from collections.abc import AsyncIterator, Container, Mapping
from contextlib import asynccontextmanager

import anyio
import structlog
from yarl import URL

from replicator.errors import ConnectionFailedError, ReferenceError, ReplicatorError
from replicator.oci.reference import MAX_REPOSITORY_LENGTH, REPOSITORY_RE
from replicator.targets.base import RequestStats
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.auth_layer import AuthLayer, AuthProvider
from replicator.targets.registry.errors import (
    connection_error,
    error_from_response,
    protocol_error,
)
from replicator.targets.registry.exchange import (
    BodySourceFailed,
    HostState,
    Layer,
    NoAnswer,
    Outgoing,
    Reply,
    RequestSpec,
    same_origin,
)
from replicator.targets.registry.options import RegistryOptions, uses_plain_http
from replicator.targets.registry.ratelimit import HostRateLimiter, RateLimitLayer
from replicator.targets.registry.redirects import RedirectLayer, resolve_location
from replicator.targets.registry.retries import RetryLayer, backoff_delay
from replicator.targets.registry.send import SingleRequest
from replicator.targets.registry.session import new_session

log = structlog.get_logger("replicator.registry.transport")

ERROR_BODY_CAP = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD"})
#: What Go's TLS servers (distribution among them) answer to a plain HTTP request.
_HTTPS_ONLY_MARK = "HTTP request to an HTTPS server"


def _https_only_error(host: str) -> ConnectionFailedError:
    """A plain-HTTP request reached a TLS port: no retry can help, say what will."""
    return ConnectionFailedError(
        f"{host} speaks HTTPS, not plain HTTP: reach it over TLS with --ca-file "
        "(loopback hosts default to plain HTTP)"
    )


class ErrorMapping:
    """The outermost layer: everything but a success becomes one replicator error."""

    def __init__(self, inner: Layer, host_name: str) -> None:
        self.inner = inner
        self.host_name = host_name

    async def send(self, request: Outgoing) -> aiohttp.ClientResponse:
        """The answer to ``request`` when its status is one of ``spec.ok``; else raise."""
        try:
            response = await self.inner.send(request)
        except NoAnswer as exc:
            raise self._no_answer(request, exc.cause) from None
        except BodySourceFailed as exc:
            cause = exc.cause
            if isinstance(cause, ReplicatorError):
                raise cause from None
            raise connection_error(self.host_name, cause) from None
        if response.status in request.spec.ok:
            return response
        raise await self._refusal(request, response)

    def _no_answer(self, request: Outgoing, cause: BaseException) -> ReplicatorError:
        if isinstance(cause, aiohttp.ClientResponseError):
            if _HTTPS_ONLY_MARK in str(cause.message):
                return _https_only_error(self.host_name)
            # aiohttp could not parse the answer as HTTP at all.
            return protocol_error(
                self.host_name, request.spec.repository, "the answer is not valid HTTP"
            )
        trace = request.trace
        return connection_error(
            self.host_name, cause, attempts=trace.attempts, elapsed=trace.elapsed
        )

    async def _refusal(
        self, request: Outgoing, response: aiohttp.ClientResponse
    ) -> ReplicatorError:
        spec = request.spec
        try:
            body = await read_capped(
                response, ERROR_BODY_CAP, strict=False, host=self.host_name, spec=spec
            )
        finally:
            response.release()
        if response.status == 400 and _HTTPS_ONLY_MARK.encode() in body:
            return _https_only_error(self.host_name)
        return error_from_response(
            response.status,
            body,
            registry=self.host_name,
            repository=spec.repository,
            what=spec.what,
            attempts=max(1, request.trace.attempts),
            expected=_describe_statuses(spec.ok),
        )


class Transport:
    """Sends requests to one registry host (``host[:port]``) under ``options``."""

    def __init__(self, host: str, options: RegistryOptions, auth: AuthProvider) -> None:
        self.host = host
        self.options = options
        self.auth = auth
        self.stats = RequestStats()
        self.state = HostState()
        #: The host's rate limits (None: no limit set, no rate layer).
        self.rate_limiter = (
            HostRateLimiter(host, options.rate_limits, self.stats)
            if options.rate_limits.active
            else None
        )
        scheme = "http" if uses_plain_http(host, options) else "https"
        self.base_url = URL(f"{scheme}://{host}")
        self._session: aiohttp.ClientSession | None = None
        self._stack = self._layers()

    def _layers(self) -> Layer:
        single: Layer = SingleRequest(lambda: self.session, self.stats, self.state)
        if self.rate_limiter is not None:
            single = RateLimitLayer(single, self.rate_limiter)
        retries = RetryLayer(single, self.options, self.state, host_name=self.host)
        redirects = RedirectLayer(retries, self.base_url, host_name=self.host)
        auth = AuthLayer(redirects, self.auth, lambda: self.session, self.base_url, self.stats)
        return ErrorMapping(auth, self.host)

    # -- session ---------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """The host's session, created on first use (one connection pool per target)."""
        if self._session is None or self._session.closed:
            self._session = new_session(self.options)
        return self._session

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
        return same_origin(url, self.base_url)

    def resolve(self, base: URL, location: str) -> URL:
        """Resolve a ``Location`` against ``base``, its encoding kept byte for byte."""
        return resolve_location(base, location)

    # -- sending ---------------------------------------------------------------------------

    async def request(
        self, spec: RequestSpec, *, max_body: int = ERROR_BODY_CAP, attempt: int = 1
    ) -> Reply:
        """Send ``spec`` and read its body (at most ``max_body`` bytes, more is an error).

        A GET whose body breaks off while being read is sent again (with backoff),
        up to ``RetryPolicy.attempts`` sends in all.  ``attempt`` > 1 says the
        caller sends this request again (it counts as a retry).
        """
        policy = self.options.retry
        while True:
            out = Outgoing.first(spec).again(attempt)
            response = await self._stack.send(out)
            try:
                if spec.method == "HEAD":
                    return Reply(response.status, response.headers, b"", response.url)
                body = await read_capped(response, max_body, strict=True, host=self.host, spec=spec)
                await self.received(len(body))
                return Reply(response.status, response.headers, body, response.url)
            except ConnectionFailedError:
                attempt = out.trace.attempts + 1
                if spec.method not in _IDEMPOTENT or not spec.retry or attempt > policy.attempts:
                    raise
            finally:
                response.release()
            delay = backoff_delay(policy, attempt - 1, policy.max_delay, random.uniform(0.5, 1))
            log.info(
                "registry.request_retried",
                host=self.host,
                kind=spec.kind,
                method=spec.method,
                reason="body broken off",
                attempt=attempt - 1,
                delay=round(delay, 3),
            )
            await anyio.sleep(delay)

    async def received(self, n: int) -> None:
        """Count ``n`` response body bytes just read; wait as the bandwidth limit says."""
        self.stats.add("bytes_received", n)
        if self.rate_limiter is not None:
            await self.rate_limiter.received(n)

    @asynccontextmanager
    async def stream(
        self, spec: RequestSpec, *, attempt: int = 1
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send ``spec`` and hand over the open response (released on exit).

        ``attempt`` > 1 says the caller sends this request again (a retry).
        """
        response = await self._stack.send(Outgoing.first(spec).again(attempt))
        try:
            yield response
        finally:
            response.release()


def _describe_statuses(ok: Container[int]) -> str | None:
    """``201`` / ``200 or 206`` / ``200-299`` for an error message."""
    if isinstance(ok, range) and ok.step == 1 and len(ok):
        return f"{ok.start}-{ok.stop - 1}"
    if isinstance(ok, tuple | list | frozenset | set):
        return " or ".join(str(s) for s in sorted(ok))
    return None


async def read_capped(
    resp: aiohttp.ClientResponse, cap: int, *, strict: bool, host: str, spec: RequestSpec
) -> bytes:
    """Read a response body of at most ``cap`` bytes.

    ``strict``: a longer body is a :class:`ProtocolError`; otherwise it is cut.
    Connection failures while reading become :class:`ConnectionFailedError`
    (``strict``) or end the body where it broke.
    """
    length = resp.content_length
    too_long = f"{spec.what} is larger than {cap} bytes"
    if strict and length is not None and length > cap:
        raise protocol_error(host, spec.repository, too_long, status=resp.status)
    buf = bytearray()
    try:
        while True:
            chunk = await resp.content.read(min(65536, cap + 1 - len(buf)))
            if not chunk:
                break
            buf += chunk
            if len(buf) > cap:
                if strict:
                    raise protocol_error(host, spec.repository, too_long, status=resp.status)
                return bytes(buf[:cap])
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        if strict:
            raise connection_error(host, exc) from None
    return bytes(buf)
