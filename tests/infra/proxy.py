"""FaultProxy: a reverse proxy that injects faults and counts traffic.

The proxy runs an aiohttp server on its own event loop in a background thread,
so it serves sync tests, async tests and subprocesses (the CLI) alike; rules and
counters are guarded by a lock and may be changed from any thread while traffic
flows.  It speaks plain HTTP to clients whatever the upstream speaks (TLS
upstreams are verified with their CA), and for a token-auth registry it also
fronts the token server: the ``realm`` of every ``WWW-Authenticate`` challenge
is rewritten to the proxy, so token requests are counted and can be faulted
too.  Absolute ``Location`` headers are rewritten so clients keep going through
the proxy.

Rules match a method (or any) and a regular expression searched in the path
(with query).  A rule counts its matches; it fires from match number ``nth``
on, at most ``times`` times (``None`` = every time).  Kinds of fault:

* :meth:`FaultProxy.status` — answer ``code`` (429/500/502/503...) with an OCI
  error body and optional ``Retry-After``, without forwarding (or after
  forwarding with ``forward=True``: the registry acted but the client sees an
  error);
* :meth:`FaultProxy.cut` — send the upstream headers and the first N bytes of
  the response body, then drop the connection;
* :meth:`FaultProxy.cut_request` — read N bytes of the request body, then drop
  the connection without forwarding anything;
* :meth:`FaultProxy.flip` — invert the byte at offset K of the response body;
* :meth:`FaultProxy.delay` — sleep before forwarding, or after N response bytes;
* :meth:`FaultProxy.truncate` — send only the first N bytes of the response
  body with a ``Content-Length`` of N: a short body no transport can notice;
* :meth:`FaultProxy.wrong_length` — claim a ``Content-Length`` that is off by
  ``delta`` (more: the connection closes early; less: the body is cut there);
* :meth:`FaultProxy.header` / :meth:`FaultProxy.wrong_digest` — set, replace or
  drop a response header (a ``Docker-Content-Digest`` naming other content);
* :meth:`FaultProxy.flip_request` — invert the byte at offset K of the request
  body on its way to the registry;
* :meth:`FaultProxy.throttle` — a slow link: the response (or request) body
  flows at N bytes per second;
* :meth:`FaultProxy.redirect` — answer ``307`` to another host (``127.0.0.2``,
  the proxy's *storage* side), which serves what the registry would have; every
  request that reaches it is recorded (:meth:`FaultProxy.storage_requests`), so
  a test sees whether credentials followed the redirect;
* :meth:`FaultProxy.hook` — call a function (on a thread of its own) when a
  matching request arrives: a registry restart at the n-th upload, say.

A registry that is down (stopped, restarting) answers through the proxy as
``upstream_down`` says: ``"502"`` (the default: a gateway's ``502``) or
``"drop"`` (the connection closes without an answer, as a refused or reset
connection looks to a client).  :meth:`FaultProxy.tokens_seen` lists every
token the token server handed out through the proxy (for leak checks).

:meth:`FaultProxy.stats` returns request and byte counts per method and kind of
request (``ping``, ``manifest``, ``blob``, ``upload``, ``referrers``, ``tags``,
``catalog``, ``token``, ``other``) plus the list of every request seen;
:meth:`FaultProxy.reset` zeroes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import re
import secrets
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp
import anyio.to_thread
from aiohttp import web
from multidict import CIMultiDict

from replicator.targets.registry.options import Credentials, RegistryOptions

from .forward import (
    CHUNK,
    body_expected,
    client_body,
    has_body,
    make_session,
    request_headers,
    response_headers,
    start_response,
)
from .registry import RegistryInstance

FaultKind = Literal[
    "status",
    "cut",
    "cut_request",
    "flip",
    "delay",
    "truncate",
    "length",
    "header",
    "flip_request",
    "throttle",
    "redirect",
    "hook",
]
UpstreamDown = Literal["502", "drop"]
#: The host of the proxy's storage side (another origin than the proxy).
STORAGE_HOST = "127.0.0.2"

_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ping", re.compile(r"^/v2/?$")),
    ("catalog", re.compile(r"^/v2/_catalog$")),
    ("token", re.compile(r"^/token/?$")),
    ("upload", re.compile(r"^/v2/.+/blobs/uploads(/.*)?$")),
    ("blob", re.compile(r"^/v2/.+/blobs/[^/]+$")),
    ("manifest", re.compile(r"^/v2/.+/manifests/[^/]+$")),
    ("referrers", re.compile(r"^/v2/.+/referrers/[^/]+$")),
    ("tags", re.compile(r"^/v2/.+/tags/list$")),
)

_ERROR_CODES = {
    429: "TOOMANYREQUESTS",
    500: "UNKNOWN",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
}


def classify(path: str) -> str:
    """Kind of request for a path (no query): manifest, blob, upload, token..."""
    for kind, pattern in _KINDS:
        if pattern.match(path):
            return kind
    return "other"


@dataclass
class FaultRule:
    """One fault rule; ``matched`` and ``fired`` count what happened so far."""

    kind: FaultKind
    method: str | None
    path: re.Pattern[str]
    nth: int = 1
    times: int | None = 1
    status: int = 503
    retry_after: str | None = None
    forward: bool = False
    body: bytes | None = None
    after_bytes: int = 0
    offset: int = 0
    seconds: float = 0.0
    #: ``length``: how far the claimed Content-Length is off; ``throttle``: bytes per second.
    delta: int = 0
    #: ``header``: the header's name and its new value (None: removed).
    header_name: str = ""
    header_value: str | None = None
    #: ``throttle``: slow the request body (True) or the response body (False).
    upload: bool = False
    #: ``hook``: called on a thread of its own when the rule fires.
    callback: Callable[[], object] | None = None
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.method is not None:
            self.method = self.method.upper()

    def matches(self, method: str, target: str) -> bool:
        """True when the rule applies to this method and path (with query)."""
        return (self.method is None or self.method == method) and bool(self.path.search(target))

    def take(self) -> bool:
        """Count one match; True when the rule fires for it."""
        self.matched += 1
        if self.matched < self.nth:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass
class KindStats:
    """Counts for one (method, kind): requests, body bytes each way, statuses."""

    requests: int = 0
    #: Request-body bytes the proxy read from clients: what the registry received,
    #: except for requests a ``status``/``cut_request`` fault answered itself.
    bytes_up: int = 0
    #: Response-body bytes the proxy wrote to the client.
    bytes_down: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass
class RequestRecord:
    """One request seen by the proxy."""

    method: str
    path: str
    kind: str
    status: int
    bytes_up: int
    bytes_down: int
    fault: str | None


@dataclass
class ProxyStats:
    """A snapshot of the proxy's counters (see :meth:`FaultProxy.stats`)."""

    by_kind: dict[tuple[str, str], KindStats]
    log: list[RequestRecord]

    def _select(self, method: str | None, kind: str | None) -> list[KindStats]:
        return [
            s
            for (m, k), s in self.by_kind.items()
            if (method is None or m == method) and (kind is None or k == kind)
        ]

    def requests(self, method: str | None = None, kind: str | None = None) -> int:
        """Number of requests of ``method`` and ``kind`` (None = any)."""
        return sum(s.requests for s in self._select(method, kind))

    def bytes_up(self, method: str | None = None, kind: str | None = None) -> int:
        """Request-body bytes sent by clients (what the destination received)."""
        return sum(s.bytes_up for s in self._select(method, kind))

    def bytes_down(self, method: str | None = None, kind: str | None = None) -> int:
        """Response-body bytes delivered to clients."""
        return sum(s.bytes_down for s in self._select(method, kind))

    def paths(self, method: str | None = None, kind: str | None = None) -> Counter[str]:
        """How often each path (query stripped) was requested."""
        return Counter(
            r.path.split("?", 1)[0]
            for r in self.log
            if (method is None or r.method == method) and (kind is None or r.kind == kind)
        )

    def duplicates(self, method: str = "GET", kind: str | None = None) -> dict[str, int]:
        """Paths requested more than once (e.g. blobs fetched twice)."""
        return {p: n for p, n in self.paths(method, kind).items() if n > 1}


class FaultProxy:
    """A fault-injecting, counting reverse proxy in front of one test registry.

    Looks like a :class:`RegistryInstance` to tests (``host``, ``url``,
    ``username``, ``password``, ``users``, ``options()``...) so it can be used
    wherever an instance is.  Start with :meth:`start`, stop with :meth:`stop`
    (the ``fault_proxy`` fixture does both).
    """

    def __init__(
        self,
        upstream: RegistryInstance,
        *,
        shutdown_timeout: float = 1.0,
        upstream_down: UpstreamDown = "502",
    ) -> None:
        self.upstream = upstream
        self._shutdown_timeout = shutdown_timeout
        self.upstream_down: UpstreamDown = upstream_down
        self._storage = _Storage()
        self._tokens: list[str] = []
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._by_kind: dict[tuple[str, str], KindStats] = {}
        self._log: list[RequestRecord] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> FaultProxy:
        """Start serving on a free 127.0.0.1 port; returns self."""
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fault proxy did not start in time")
        if self._error is not None:
            raise RuntimeError(f"fault proxy failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        loop, stop = self._loop, self._stop_event
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported through start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._session = make_session(self.upstream.ca_file)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        storage = web.Application()
        storage.router.add_route("*", "/{tail:.*}", self._serve_storage)
        storage_runner = web.AppRunner(storage, access_log=None, shutdown_timeout=0.5)
        await storage_runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._storage.origin = await _start_storage(storage_runner)
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await storage_runner.cleanup()
            await runner.cleanup()
            await self._session.close()

    # -- looks like a RegistryInstance -------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` of the proxy."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def name(self) -> str:
        """The upstream variant's name."""
        return self.upstream.name

    @property
    def scheme(self) -> str:
        """Always ``http``: the proxy speaks plain HTTP to clients."""
        return "http"

    @property
    def username(self) -> str | None:
        """The upstream's default user."""
        return self.upstream.username

    @property
    def password(self) -> str | None:
        """The upstream's default user's password."""
        return self.upstream.password

    @property
    def users(self) -> dict[str, str]:
        """The upstream's users."""
        return self.upstream.users

    @property
    def ca_file(self) -> str | None:
        """None: the proxy speaks plain HTTP."""
        return None

    @property
    def token_url(self) -> str | None:
        """The proxy itself when the upstream uses token auth."""
        return self.url if self.upstream.token_url else None

    @property
    def instance(self) -> RegistryInstance:
        """A RegistryInstance describing the proxy (for code that wants the dataclass)."""
        return RegistryInstance(
            name=self.upstream.name,
            host=self.host,
            username=self.upstream.username,
            password=self.upstream.password,
            users=self.upstream.users,
            token_url=self.token_url,
            log_file=self.upstream.log_file,
            upstream=self.upstream,
        )

    def credentials(self, user: str | None = None) -> Credentials | None:
        """Credentials of ``user`` on the upstream."""
        return self.upstream.credentials(user)

    def options(self, user: str | None = None, **overrides: Any) -> RegistryOptions:
        """RegistryOptions for talking to the proxy (plain HTTP, upstream's users)."""
        opts = RegistryOptions(credentials=self.credentials(user), plain_http=True)
        return replace(opts, **overrides) if overrides else opts

    def basic_auth_header(self, user: str | None = None) -> dict[str, str]:
        """``Authorization: Basic`` for ``user``."""
        return self.instance.basic_auth_header(user)

    def token(self, scopes: list[str], user: str | None = None) -> str:
        """A bearer token fetched through the proxy (token upstreams only)."""
        return self.instance.token(scopes, user)

    def token_log(self) -> list[dict[str, Any]]:
        """The token server's request log (token upstreams only)."""
        return self.upstream.token_log()

    # -- rules -------------------------------------------------------------

    def _add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    @staticmethod
    def _compile(path: str | re.Pattern[str]) -> re.Pattern[str]:
        return path if isinstance(path, re.Pattern) else re.compile(path)

    def status(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        code: int,
        *,
        retry_after: float | str | None = None,
        nth: int = 1,
        times: int | None = 1,
        forward: bool = False,
        body: bytes | None = None,
    ) -> FaultRule:
        """Answer ``code`` (with ``Retry-After`` when given) to matching requests.

        The request body is read and dropped first.  With ``forward=True`` the
        request reaches the registry and only its answer is replaced.
        """
        return self._add(
            FaultRule(
                "status",
                method,
                self._compile(path),
                nth=nth,
                times=times,
                status=code,
                retry_after=None if retry_after is None else str(retry_after),
                forward=forward,
                body=body,
            )
        )

    def cut(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        after_bytes: int,
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Send headers and ``after_bytes`` of the response body, then drop the connection."""
        return self._add(
            FaultRule(
                "cut", method, self._compile(path), nth=nth, times=times, after_bytes=after_bytes
            )
        )

    def cut_request(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        after_bytes: int,
        *,
        nth: int = 1,
        times: int | None = 1,
        forward: bool = False,
    ) -> FaultRule:
        """Read ``after_bytes`` of the request body, then drop the connection unanswered.

        With ``forward=True`` the registry receives those bytes first (the
        request goes on to it and breaks off there): a link that failed in the
        middle of an upload, as the registry sees it.
        """
        return self._add(
            FaultRule(
                "cut_request",
                method,
                self._compile(path),
                nth=nth,
                times=times,
                after_bytes=after_bytes,
                forward=forward,
            )
        )

    def flip(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        offset: int = 0,
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Invert the byte at ``offset`` of the response body."""
        return self._add(
            FaultRule("flip", method, self._compile(path), nth=nth, times=times, offset=offset)
        )

    def delay(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        seconds: float,
        *,
        after_bytes: int | None = None,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Sleep ``seconds`` before forwarding, or after ``after_bytes`` of the response body."""
        return self._add(
            FaultRule(
                "delay",
                method,
                self._compile(path),
                nth=nth,
                times=times,
                seconds=seconds,
                after_bytes=-1 if after_bytes is None else after_bytes,
            )
        )

    def truncate(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        keep: int,
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Send only ``keep`` bytes of the response body, with ``Content-Length: keep``.

        The answer looks complete to the transport: only a size or digest check
        can tell.  A body of at most ``keep`` bytes passes unchanged.
        """
        return self._add(
            FaultRule("truncate", method, self._compile(path), nth=nth, times=times, delta=keep)
        )

    def wrong_length(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        delta: int,
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Claim a ``Content-Length`` ``delta`` bytes off the truth (HEAD answers too).

        With ``delta > 0`` the whole body is sent and the connection closed,
        short of the claim; with ``delta < 0`` the body stops at the claim.
        """
        return self._add(
            FaultRule("length", method, self._compile(path), nth=nth, times=times, delta=delta)
        )

    def header(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        name: str,
        value: str | None,
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Set response header ``name`` to ``value`` (None: remove it)."""
        return self._add(
            FaultRule(
                "header",
                method,
                self._compile(path),
                nth=nth,
                times=times,
                header_name=name,
                header_value=value,
            )
        )

    def wrong_digest(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """A ``Docker-Content-Digest`` naming content that is not the answer's."""
        other = "sha256:" + hashlib.sha256(f"not this content {nth}".encode()).hexdigest()
        return self.header(method, path, "Docker-Content-Digest", other, nth=nth, times=times)

    def flip_request(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        offset: int = 0,
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Invert the byte at ``offset`` of the request body before the registry gets it."""
        return self._add(
            FaultRule(
                "flip_request", method, self._compile(path), nth=nth, times=times, offset=offset
            )
        )

    def throttle(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        bytes_per_second: int,
        *,
        upload: bool = False,
        nth: int = 1,
        times: int | None = None,
    ) -> FaultRule:
        """A slow link: the response body (``upload``: the request body) at this rate."""
        return self._add(
            FaultRule(
                "throttle",
                method,
                self._compile(path),
                nth=nth,
                times=times,
                delta=max(1, bytes_per_second),
                upload=upload,
            )
        )

    def redirect(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        *,
        status: int = 307,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Answer ``status`` with a ``Location`` on another host that serves the same answer.

        The other host is the proxy's storage side (``127.0.0.2``): it fetches
        what the redirected request asked for from the registry, with the
        credentials that request carried, and records every request reaching
        it (:meth:`storage_requests`).
        """
        return self._add(
            FaultRule("redirect", method, self._compile(path), nth=nth, times=times, status=status)
        )

    def hook(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        callback: Callable[[], object],
        *,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Call ``callback`` on a new thread when a matching request arrives.

        The request itself goes on at once (to a registry the callback may be
        stopping: see ``upstream_down``).
        """
        return self._add(
            FaultRule("hook", method, self._compile(path), nth=nth, times=times, callback=callback)
        )

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        """The current rules (live objects: ``fired`` shows how often each fired)."""
        with self._lock:
            return list(self._rules)

    # -- counters ----------------------------------------------------------

    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            by_kind = {
                key: KindStats(s.requests, s.bytes_up, s.bytes_down, Counter(s.statuses))
                for key, s in self._by_kind.items()
            }
            return ProxyStats(by_kind, [copy.copy(r) for r in self._log])

    def reset(self) -> None:
        """Zero every counter and forget the request log (rules stay)."""
        with self._lock:
            self._by_kind.clear()
            self._log.clear()

    def storage_requests(self) -> list[StorageRequest]:
        """Every request that reached the storage side (the target of redirects)."""
        with self._lock:
            return list(self._storage.seen)

    def tokens_seen(self) -> list[str]:
        """Every token and refresh token the token server handed out through the proxy."""
        with self._lock:
            return list(self._tokens)

    def _track(self, method: str, target: str, kind: str, fault: str | None) -> _Bytes:
        with self._lock:
            stats = self._by_kind.setdefault((method, kind), KindStats())
            stats.requests += 1
            rec = RequestRecord(method, target, kind, 0, 0, 0, fault)
            self._log.append(rec)
            return _Bytes(self._lock, rec, stats)

    def _firing(self, method: str, target: str, authorized: bool) -> list[FaultRule]:
        # A registry that asks for credentials redirects only requests that carry them.
        gated = self.upstream.username is not None and not authorized
        with self._lock:
            return [
                r
                for r in self._rules
                if r.matches(method, target) and not (gated and r.kind == "redirect") and r.take()
            ]

    # -- serving -----------------------------------------------------------

    def _upstream_base(self, path: str) -> str:
        token_url = self.upstream.token_url
        if token_url and (path.startswith("/token") or path.startswith("/_log")):
            return token_url.rstrip("/")
        return self.upstream.url

    def _rewrite_challenge(self, headers: CIMultiDict[str]) -> None:
        token_url = self.upstream.token_url
        if not token_url:
            return
        values = headers.getall("WWW-Authenticate", [])
        if not values:
            return
        del headers["WWW-Authenticate"]
        for value in values:
            headers.add("WWW-Authenticate", value.replace(token_url.rstrip("/"), self.url))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = str(request.rel_url)
        rules = self._firing(request.method, target, "Authorization" in request.headers)
        fault = ",".join(r.kind for r in rules) or None
        counter = self._track(request.method, target, classify(request.rel_url.path), fault)
        for rule in rules:
            if rule.kind == "hook" and rule.callback is not None:
                threading.Thread(target=rule.callback, name="fault-hook", daemon=True).start()
        for rule in rules:
            if rule.kind == "delay" and rule.after_bytes < 0:
                await asyncio.sleep(rule.seconds)
        cut_req = next((r for r in rules if r.kind == "cut_request" and not r.forward), None)
        if cut_req is not None:
            await _read_some(request, cut_req.after_bytes, counter)
            _drop(request)
            return web.Response(status=499)
        early = next((r for r in rules if r.kind == "status" and not r.forward), None)
        if early is not None:
            await _drain(request, counter)
            counter.set_status(early.status)
            return _error_response(early)
        moved = next((r for r in rules if r.kind == "redirect"), None)
        if moved is not None:
            await _drain(request, counter)
            counter.set_status(moved.status)
            location = self._storage.park(request, self._upstream_base(request.rel_url.path))
            return web.Response(status=moved.status, headers={"Location": location})
        return await self._forward(request, rules, counter)

    def _request_body(
        self, request: web.Request, rules: list[FaultRule], counter: _Bytes
    ) -> AsyncIterator[bytes] | None:
        if not has_body(request):
            return None
        flips = [r.offset for r in rules if r.kind == "flip_request"]
        rate = next((r.delta for r in rules if r.kind == "throttle" and r.upload), None)
        cut = next((r for r in rules if r.kind == "cut_request" and r.forward), None)
        return _counting(
            client_body(request),
            counter,
            flips=flips,
            rate=rate,
            stop_at=None if cut is None else cut.after_bytes,
        )

    async def _forward(
        self, request: web.Request, rules: list[FaultRule], counter: _Bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        base = self._upstream_base(request.rel_url.path)
        data = self._request_body(request, rules, counter)
        late = next((r for r in rules if r.kind == "status" and r.forward), None)
        resp: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                base + str(request.rel_url),
                headers=request_headers(request),
                data=data,
                allow_redirects=False,
            ) as up:
                if late is not None:
                    await up.read()
                    counter.set_status(late.status)
                    return _error_response(late)
                headers = response_headers(up, base, self.url)
                self._rewrite_challenge(headers)
                _apply_headers(headers, rules)
                counter.set_status(up.status)
                resp = await _start(request, up, headers, rules)
                if request.method != "HEAD":
                    ok = await self._relay_body(request, up, resp, rules, counter)
                    if not ok:
                        return resp
                await resp.write_eof()
                return resp
        except (TimeoutError, aiohttp.ClientError, _RequestCut) as exc:
            if counter.cut:
                # The registry got the first bytes of the body, then the link broke.
                _drop(request)
                return resp if resp is not None else web.Response(status=499)
            if resp is None:
                if self.upstream_down == "drop":
                    _drop(request)
                    return web.Response(status=499)
                counter.set_status(502)
                return web.Response(status=502, text=f"fault proxy: upstream failed: {exc}")
            _drop(request)
            return resp
        except ConnectionResetError:
            # The client went away mid-body.
            return resp if resp is not None else web.Response(status=499)

    async def _relay_body(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        resp: web.StreamResponse,
        rules: list[FaultRule],
        counter: _Bytes,
    ) -> bool:
        """Copy the body applying flips, stalls, rates and cuts; False when the connection was cut."""
        cut = next((r for r in rules if r.kind == "cut"), None)
        flips = [r.offset for r in rules if r.kind == "flip"]
        stalls = sorted(
            (r.after_bytes, r.seconds) for r in rules if r.kind == "delay" and r.after_bytes >= 0
        )
        rate = next((r.delta for r in rules if r.kind == "throttle" and not r.upload), None)
        overclaim = any(r.kind == "length" and r.delta > 0 for r in rules)
        token = classify(request.rel_url.path) == "token"
        kept = bytearray() if token else None
        pos = 0
        async for chunk in up.content.iter_chunked(CHUNK):
            if kept is not None:
                kept += chunk
            if flips:
                chunk = _flipped(chunk, pos, flips)
            while stalls and stalls[0][0] < pos + len(chunk):
                at, seconds = stalls.pop(0)
                head = max(at - pos, 0)
                if head:
                    counter.add_down(head)
                    await resp.write(chunk[:head])
                    pos += head
                    chunk = chunk[head:]
                await asyncio.sleep(seconds)
            if cut is not None and pos + len(chunk) >= cut.after_bytes:
                head = max(cut.after_bytes - pos, 0)
                if head:
                    counter.add_down(head)
                    await resp.write(chunk[:head])
                _drop(request)
                return False
            await _write_at_rate(resp, chunk, rate, counter)
            pos += len(chunk)
        if kept is not None:
            self._note_tokens(bytes(kept))
        if cut is not None or overclaim:  # shorter than the cut point or the claim: drop
            _drop(request)
            return False
        return True

    def _note_tokens(self, body: bytes) -> None:
        try:
            doc = json.loads(body)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        found = [
            str(doc[k])
            for k in ("token", "access_token", "refresh_token")
            if isinstance(doc.get(k), str) and doc[k]
        ]
        with self._lock:
            self._tokens.extend(t for t in found if t not in self._tokens)

    def _storage_credentials(self, url: str) -> dict[str, str]:
        """What the storage side shows the registry: its own pull credentials (blocking)."""
        if self.upstream.username is None:
            return {}
        if self.upstream.token_url is None:
            return self.upstream.basic_auth_header()
        match = re.search(r"/v2/(.+)/blobs/", url)
        scope = f"repository:{match.group(1) if match else ''}:pull"
        return {"Authorization": f"Bearer {self.upstream.token([scope])}"}

    async def _serve_storage(self, request: web.Request) -> web.StreamResponse:
        """The storage side: answers a parked redirect with what the registry answers."""
        assert self._session is not None
        with self._lock:
            self._storage.seen.append(
                StorageRequest(request.method, str(request.rel_url), dict(request.headers))
            )
        parked = self._storage.claim(request.rel_url.path)
        if parked is None:
            return web.Response(status=404, text="fault proxy storage: unknown object")
        url, headers = parked
        headers.update(await anyio.to_thread.run_sync(self._storage_credentials, url))
        try:
            async with self._session.request(
                request.method, url, headers=headers, allow_redirects=False
            ) as up:
                out = response_headers(up, self.upstream.url, self.url)
                resp = await start_response(request, up, out)
                if request.method != "HEAD":
                    async for chunk in up.content.iter_chunked(CHUNK):
                        await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (TimeoutError, aiohttp.ClientError) as exc:
            return web.Response(status=502, text=f"fault proxy storage: upstream failed: {exc}")


class _Bytes:
    """Live counters of one request: updated as bytes flow, so they are complete
    by the time the client has seen the last byte."""

    def __init__(self, lock: threading.Lock, record: RequestRecord, stats: KindStats) -> None:
        self._lock = lock
        self._record = record
        self._stats = stats
        self.up = 0
        #: Set when a ``cut_request`` with ``forward`` broke the upstream request off.
        self.cut = False

    def add_up(self, n: int) -> None:
        with self._lock:
            self.up += n
            self._record.bytes_up += n
            self._stats.bytes_up += n

    def add_down(self, n: int) -> None:
        with self._lock:
            self._record.bytes_down += n
            self._stats.bytes_down += n

    def set_status(self, status: int) -> None:
        with self._lock:
            self._record.status = status
            if status:
                self._stats.statuses[status] += 1


class _RequestCut(Exception):
    """Raised inside a forwarded request body to break the upstream request off."""


async def _counting(
    body: AsyncIterator[bytes],
    counter: _Bytes,
    *,
    flips: list[int] | None = None,
    rate: int | None = None,
    stop_at: int | None = None,
) -> AsyncIterator[bytes]:
    pos = 0
    async for chunk in body:
        if stop_at is not None and pos + len(chunk) >= stop_at:
            head = chunk[: max(stop_at - pos, 0)]
            if head:
                counter.add_up(len(head))
                yield head
            await asyncio.sleep(0.2)  # let the registry take what it got
            counter.cut = True
            raise _RequestCut
        counter.add_up(len(chunk))
        if flips:
            chunk = _flipped(chunk, pos, flips)
        pos += len(chunk)
        if rate:
            await asyncio.sleep(len(chunk) / rate)
        yield chunk


def _flipped(chunk: bytes, pos: int, offsets: list[int]) -> bytes:
    """``chunk`` (at ``pos`` of its body) with the bytes at ``offsets`` inverted."""
    if not any(pos <= off < pos + len(chunk) for off in offsets):
        return chunk
    buf = bytearray(chunk)
    for off in offsets:
        if pos <= off < pos + len(buf):
            buf[off - pos] ^= 0xFF
    return bytes(buf)


async def _write_at_rate(
    resp: web.StreamResponse, chunk: bytes, rate: int | None, counter: _Bytes
) -> None:
    """Write ``chunk``; with a ``rate``, in slices spaced to that many bytes per second."""
    if not rate:
        counter.add_down(len(chunk))
        await resp.write(chunk)
        return
    step = max(1024, min(len(chunk), rate // 10))
    for i in range(0, len(chunk), step):
        part = chunk[i : i + step]
        counter.add_down(len(part))
        await resp.write(part)
        await asyncio.sleep(len(part) / rate)


def _apply_headers(headers: CIMultiDict[str], rules: list[FaultRule]) -> None:
    """Apply the ``header`` rules to the response headers."""
    for rule in rules:
        if rule.kind != "header":
            continue
        headers.popall(rule.header_name, None)
        if rule.header_value is not None:
            headers[rule.header_name] = rule.header_value


async def _start(
    request: web.Request,
    up: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    rules: list[FaultRule],
) -> web.StreamResponse:
    """Start the answer; ``truncate`` and ``length`` rules change its Content-Length."""
    claim = _claimed_length(up.headers.get("Content-Length"), rules)
    if claim is None:
        return await start_response(request, up, headers)
    resp = web.StreamResponse(status=up.status, reason=up.reason)
    resp.headers.extend(headers)
    if body_expected(request.method, up.status):
        resp.content_length = claim
    else:
        resp.headers["Content-Length"] = str(claim)
    await resp.prepare(request)
    return resp


def _claimed_length(length: str | None, rules: list[FaultRule]) -> int | None:
    """The Content-Length to claim instead of ``length`` (None: keep it)."""
    if length is None:
        return None
    claim = real = int(length)
    for rule in rules:
        if rule.kind == "truncate" and rule.delta < claim:
            claim = rule.delta
        elif rule.kind == "length":
            claim = max(0, real + rule.delta)
    return None if claim == real else claim


@dataclass(frozen=True)
class StorageRequest:
    """One request that reached the proxy's storage side (a redirect followed)."""

    method: str
    path: str
    headers: dict[str, str]


class _Storage:
    """Requests parked by redirects, waiting to be fetched from the storage side."""

    def __init__(self) -> None:
        self.origin = ""
        self.seen: list[StorageRequest] = []
        self._parked: dict[str, tuple[str, CIMultiDict[str]]] = {}

    def park(self, request: web.Request, base: str) -> str:
        """Remember what ``request`` asked the registry; the URL that serves it elsewhere."""
        key = secrets.token_hex(8)
        headers = request_headers(request)
        headers.popall("Authorization", None)
        self._parked[key] = (base + str(request.rel_url), headers)
        return f"http://{self.origin}/_storage/{key}?signature={secrets.token_hex(4)}"

    def claim(self, path: str) -> tuple[str, CIMultiDict[str]] | None:
        """The registry URL and headers parked under a storage path (None: unknown)."""
        found = self._parked.get(path.rsplit("/", 1)[-1])
        return None if found is None else (found[0], found[1].copy())


async def _start_storage(runner: web.AppRunner) -> str:
    """Serve the storage side on 127.0.0.2 (127.0.0.1 if that fails); its ``host:port``."""
    for host in (STORAGE_HOST, "127.0.0.1"):
        try:
            site = web.TCPSite(runner, host, 0)
            await site.start()
        except OSError:
            continue
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"{host}:{port}"
    raise RuntimeError("fault proxy: no address for the storage side")


async def _read_some(request: web.Request, limit: int, counter: _Bytes) -> None:
    while counter.up < limit:
        chunk = await request.content.read(min(CHUNK, limit - counter.up))
        if not chunk:
            return
        counter.add_up(len(chunk))


async def _drain(request: web.Request, counter: _Bytes) -> None:
    async for chunk in request.content.iter_chunked(CHUNK):
        counter.add_up(len(chunk))


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def _error_response(rule: FaultRule) -> web.Response:
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = rule.retry_after
    if rule.body is not None:
        return web.Response(status=rule.status, body=rule.body, headers=headers)
    code = _ERROR_CODES.get(rule.status, "UNKNOWN")
    return web.json_response(
        {"errors": [{"code": code, "message": f"injected by fault proxy ({rule.status})"}]},
        status=rule.status,
        headers=headers,
    )
