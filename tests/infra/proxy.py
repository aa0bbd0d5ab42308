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
* :meth:`FaultProxy.headers` — add (or replace) headers on the answer, fixed or
  computed from the match number (quota headers that count down, say).  It is
  not a fault: it does not change what else happens to the request.

:meth:`FaultProxy.stats` returns request and byte counts per method and kind of
request (``ping``, ``manifest``, ``blob``, ``upload``, ``referrers``, ``tags``,
``catalog``, ``token``, ``other``) plus the list of every request seen, each
with the times (``time.monotonic()``) it arrived and its first and last body
byte moved (either way), for rates; :meth:`FaultProxy.reset` zeroes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from replicator.targets.registry.options import Credentials, RegistryOptions

from .forward import (
    CHUNK,
    client_body,
    has_body,
    make_session,
    request_headers,
    response_headers,
    start_response,
)
from .registry import RegistryInstance

FaultKind = Literal["status", "cut", "cut_request", "flip", "delay", "headers"]
#: Headers a ``headers`` rule adds: fixed, or computed from the rule's match number (1, 2...).
HeaderSource = Mapping[str, str] | Callable[[int], Mapping[str, str]]

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
    add_headers: HeaderSource | None = None
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

    def headers_now(self) -> Mapping[str, str]:
        """The headers a ``headers`` rule adds to the answer it fires on."""
        source = self.add_headers
        if source is None:
            return {}
        return source(self.matched) if callable(source) else source


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
    #: ``time.monotonic()`` when the request arrived.
    started: float = 0.0
    #: When its first and last body byte (request or response) went through; 0: none.
    first_byte: float = 0.0
    last_byte: float = 0.0


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

    def records(self, method: str | None = None, kind: str | None = None) -> list[RequestRecord]:
        """The requests of ``method`` and ``kind`` (None = any), in arrival order."""
        return [
            r
            for r in self.log
            if (method is None or r.method == method) and (kind is None or r.kind == kind)
        ]

    def request_rate(self, method: str | None = None, kind: str | None = None) -> float:
        """Requests per second between the first and the last arrival (0 for fewer than 2)."""
        times = sorted(r.started for r in self.records(method, kind))
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def byte_rate(self, method: str | None = None, kind: str | None = None) -> float:
        """Body bytes (both ways) per second from the first body byte to the last one."""
        moved = [r for r in self.records(method, kind) if r.first_byte]
        if not moved:
            return 0.0
        start = min(r.first_byte for r in moved)
        end = max(r.last_byte for r in moved)
        total = sum(r.bytes_up + r.bytes_down for r in moved)
        return total / (end - start) if end > start else 0.0


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
        send_buffer: int | None = None,
    ) -> None:
        self.upstream = upstream
        self._shutdown_timeout = shutdown_timeout
        #: SO_SNDBUF of the connections to clients (None: the kernel's autotuning).  A
        #: small one makes the byte times measure what reached the client's window,
        #: not what the proxy's kernel queued (downloads a client paces).
        self._send_buffer = send_buffer
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
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stop_event.wait()
        finally:
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
    ) -> FaultRule:
        """Read ``after_bytes`` of the request body, then drop the connection unanswered."""
        return self._add(
            FaultRule(
                "cut_request",
                method,
                self._compile(path),
                nth=nth,
                times=times,
                after_bytes=after_bytes,
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

    def headers(
        self,
        method: str | None,
        path: str | re.Pattern[str],
        headers: HeaderSource,
        *,
        nth: int = 1,
        times: int | None = None,
    ) -> FaultRule:
        """Add ``headers`` to the answers of matching requests (replacing same-named ones).

        ``headers`` is a mapping, or a function of the rule's match number
        (1 for the first matching request) returning one.  Unlike the faults,
        it applies every time by default (``times=None``).
        """
        return self._add(
            FaultRule(
                "headers", method, self._compile(path), nth=nth, times=times, add_headers=headers
            )
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

    def _track(self, method: str, target: str, kind: str, fault: str | None) -> _Bytes:
        with self._lock:
            stats = self._by_kind.setdefault((method, kind), KindStats())
            stats.requests += 1
            rec = RequestRecord(method, target, kind, 0, 0, 0, fault, started=time.monotonic())
            self._log.append(rec)
            return _Bytes(self._lock, rec, stats)

    def _firing(self, method: str, target: str) -> tuple[list[FaultRule], dict[str, str]]:
        """The rules that fire for this request, and the headers ``headers`` rules add."""
        with self._lock:
            rules = [r for r in self._rules if r.matches(method, target) and r.take()]
            added: dict[str, str] = {}
            for rule in rules:
                if rule.kind == "headers":
                    added.update(rule.headers_now())
            return rules, added

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
        if self._send_buffer is not None and request.transport is not None:
            sock = request.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        target = str(request.rel_url)
        rules, added = self._firing(request.method, target)
        fault = ",".join(r.kind for r in rules if r.kind != "headers") or None
        counter = self._track(request.method, target, classify(request.rel_url.path), fault)
        for rule in rules:
            if rule.kind == "delay" and rule.after_bytes < 0:
                await asyncio.sleep(rule.seconds)
        cut_req = next((r for r in rules if r.kind == "cut_request"), None)
        if cut_req is not None:
            await _read_some(request, cut_req.after_bytes, counter)
            _drop(request)
            return web.Response(status=499)
        early = next((r for r in rules if r.kind == "status" and not r.forward), None)
        if early is not None:
            await _drain(request, counter)
            counter.set_status(early.status)
            return _with_added_headers(_error_response(early), added)
        return await self._forward(request, rules, counter, added)

    async def _forward(
        self,
        request: web.Request,
        rules: list[FaultRule],
        counter: _Bytes,
        added: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        assert self._session is not None
        base = self._upstream_base(request.rel_url.path)
        data = _counting(client_body(request), counter) if has_body(request) else None
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
                    return _with_added_headers(_error_response(late), added or {})
                headers = response_headers(up, base, self.url)
                self._rewrite_challenge(headers)
                for name, value in (added or {}).items():
                    headers[name] = value
                counter.set_status(up.status)
                resp = await start_response(request, up, headers)
                if request.method != "HEAD":
                    ok = await self._relay_body(request, up, resp, rules, counter)
                    if not ok:
                        return resp
                await resp.write_eof()
                return resp
        except (TimeoutError, aiohttp.ClientError) as exc:
            if resp is None:
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
        """Copy the body applying flips, stalls and cuts; False when the connection was cut."""
        cut = next((r for r in rules if r.kind == "cut"), None)
        flips = [r.offset for r in rules if r.kind == "flip"]
        stalls = sorted(
            (r.after_bytes, r.seconds) for r in rules if r.kind == "delay" and r.after_bytes >= 0
        )
        pos = 0
        async for chunk in up.content.iter_chunked(CHUNK):
            if flips:
                buf = bytearray(chunk)
                for off in flips:
                    if pos <= off < pos + len(buf):
                        buf[off - pos] ^= 0xFF
                chunk = bytes(buf)
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
            counter.add_down(len(chunk))
            await resp.write(chunk)
            pos += len(chunk)
        if cut is not None:  # body shorter than the cut point: still drop the connection
            _drop(request)
            return False
        return True


class _Bytes:
    """Live counters of one request: updated as bytes flow, so they are complete
    by the time the client has seen the last byte."""

    def __init__(self, lock: threading.Lock, record: RequestRecord, stats: KindStats) -> None:
        self._lock = lock
        self._record = record
        self._stats = stats
        self.up = 0

    def add_up(self, n: int) -> None:
        with self._lock:
            self.up += n
            self._record.bytes_up += n
            self._stats.bytes_up += n
            self._moved(n)

    def add_down(self, n: int) -> None:
        with self._lock:
            self._record.bytes_down += n
            self._stats.bytes_down += n
            self._moved(n)

    def _moved(self, n: int) -> None:
        if n <= 0:
            return
        now = time.monotonic()
        if not self._record.first_byte:
            self._record.first_byte = now
        self._record.last_byte = now

    def set_status(self, status: int) -> None:
        with self._lock:
            self._record.status = status
            if status:
                self._stats.statuses[status] += 1


async def _counting(body: AsyncIterator[bytes], counter: _Bytes) -> AsyncIterator[bytes]:
    async for chunk in body:
        counter.add_up(len(chunk))
        yield chunk


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


def _with_added_headers(response: web.Response, added: Mapping[str, str]) -> web.Response:
    for name, value in added.items():
        response.headers[name] = value
    return response


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
