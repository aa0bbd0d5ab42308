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
* :meth:`FaultProxy.headers` — add (or replace) headers on the answer, fixed or
  computed from the match number (quota headers that count down, say).  It is
  not a fault: it does not change what else happens to the request;
* :meth:`FaultProxy.hook` — call a function (on a thread of its own) when a
  matching request arrives: a registry restart at the n-th upload, say.

A registry that is down (stopped, restarting) answers through the proxy as
``upstream_down`` says: ``"502"`` (the default: a gateway's ``502``) or
``"drop"`` (the connection closes without an answer, as a refused or reset
connection looks to a client).  :meth:`FaultProxy.tokens_seen` lists every
token the token server handed out through the proxy (for leak checks).

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
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import anyio.to_thread
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
from .proxy_rules import (
    STORAGE_HOST,
    FaultKind,
    FaultRule,
    KindStats,
    LiveCounts,
    ProxyStats,
    RequestRecord,
    RuleBuilders,
    UpstreamDown,
    classify,
)
from .proxy_wire import (
    RequestCut,
    Storage,
    StorageRequest,
    apply_headers,
    counting,
    drain,
    drop,
    error_response,
    flipped,
    read_some,
    start_answer,
    start_storage,
    with_added_headers,
    write_at_rate,
)
from .registry import RegistryInstance

__all__ = [
    "STORAGE_HOST",
    "FaultKind",
    "FaultProxy",
    "FaultRule",
    "KindStats",
    "ProxyStats",
    "RequestRecord",
    "StorageRequest",
    "UpstreamDown",
    "classify",
]


class FaultProxy(RuleBuilders):
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
        send_buffer: int | None = None,
    ) -> None:
        self.upstream = upstream
        self._shutdown_timeout = shutdown_timeout
        #: SO_SNDBUF of the connections to clients (None: the kernel's autotuning).  A
        #: small one makes the byte times measure what reached the client's window,
        #: not what the proxy's kernel queued (downloads a client paces).
        self._send_buffer = send_buffer
        self.upstream_down: UpstreamDown = upstream_down
        self._storage = Storage()
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
            self._storage.origin = await start_storage(storage_runner)
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

    def _track(self, method: str, target: str, kind: str, fault: str | None) -> LiveCounts:
        with self._lock:
            stats = self._by_kind.setdefault((method, kind), KindStats())
            stats.requests += 1
            rec = RequestRecord(method, target, kind, 0, 0, 0, fault, started=time.monotonic())
            self._log.append(rec)
            return LiveCounts(self._lock, rec, stats)

    def _firing(
        self, method: str, target: str, authorized: bool
    ) -> tuple[list[FaultRule], dict[str, str]]:
        """The rules that fire for this request, and the headers ``headers`` rules add."""
        # A registry that asks for credentials redirects only requests that carry them.
        gated = self.upstream.username is not None and not authorized
        with self._lock:
            rules = [
                r
                for r in self._rules
                if r.matches(method, target) and not (gated and r.kind == "redirect") and r.take()
            ]
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
        rules, added = self._firing(request.method, target, "Authorization" in request.headers)
        fault = ",".join(r.kind for r in rules if r.kind != "headers") or None
        counter = self._track(request.method, target, classify(request.rel_url.path), fault)
        for rule in rules:
            if rule.kind == "hook" and rule.callback is not None:
                threading.Thread(target=rule.callback, name="fault-hook", daemon=True).start()
        for rule in rules:
            if rule.kind == "delay" and rule.after_bytes < 0:
                await asyncio.sleep(rule.seconds)
        cut_req = next((r for r in rules if r.kind == "cut_request" and not r.forward), None)
        if cut_req is not None:
            await read_some(request, cut_req.after_bytes, counter)
            drop(request)
            return web.Response(status=499)
        early = next((r for r in rules if r.kind == "status" and not r.forward), None)
        if early is not None:
            await drain(request, counter)
            counter.set_status(early.status)
            return with_added_headers(error_response(early), added)
        moved = next((r for r in rules if r.kind == "redirect"), None)
        if moved is not None:
            await drain(request, counter)
            counter.set_status(moved.status)
            location = self._storage.park(request, self._upstream_base(request.rel_url.path))
            return web.Response(status=moved.status, headers={"Location": location})
        return await self._forward(request, rules, counter, added)

    def _request_body(
        self, request: web.Request, rules: list[FaultRule], counter: LiveCounts
    ) -> AsyncIterator[bytes] | None:
        if not has_body(request):
            return None
        flips = [r.offset for r in rules if r.kind == "flip_request"]
        rate = next((r.delta for r in rules if r.kind == "throttle" and r.upload), None)
        cut = next((r for r in rules if r.kind == "cut_request" and r.forward), None)
        return counting(
            client_body(request),
            counter,
            flips=flips,
            rate=rate,
            stop_at=None if cut is None else cut.after_bytes,
        )

    async def _forward(
        self,
        request: web.Request,
        rules: list[FaultRule],
        counter: LiveCounts,
        added: Mapping[str, str] | None = None,
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
                    return with_added_headers(error_response(late), added or {})
                headers = response_headers(up, base, self.url)
                self._rewrite_challenge(headers)
                apply_headers(headers, rules)
                for name, value in (added or {}).items():
                    headers[name] = value
                counter.set_status(up.status)
                resp = await start_answer(request, up, headers, rules)
                if request.method != "HEAD":
                    ok = await self._relay_body(request, up, resp, rules, counter)
                    if not ok:
                        return resp
                await resp.write_eof()
                return resp
        except (TimeoutError, aiohttp.ClientError, RequestCut) as exc:
            if counter.cut:
                # The registry got the first bytes of the body, then the link broke.
                drop(request)
                return resp if resp is not None else web.Response(status=499)
            if resp is None:
                if self.upstream_down == "drop":
                    drop(request)
                    return web.Response(status=499)
                counter.set_status(502)
                return web.Response(status=502, text=f"fault proxy: upstream failed: {exc}")
            drop(request)
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
        counter: LiveCounts,
    ) -> bool:
        """Copy the body applying flips, stalls, rates and cuts; False when the connection was cut."""
        cut = next((r for r in rules if r.kind == "cut"), None)
        flips = [r.offset for r in rules if r.kind == "flip"]
        stalls = sorted(
            (r.after_bytes, r.seconds) for r in rules if r.kind == "delay" and r.after_bytes >= 0
        )
        rate = next((r.delta for r in rules if r.kind == "throttle" and not r.upload), None)
        overclaim = any(r.kind == "length" and r.delta > 0 for r in rules)
        pos = 0
        async for chunk in self._body_chunks(request, up):
            if flips:
                chunk = flipped(chunk, pos, flips)
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
                drop(request)
                return False
            await write_at_rate(resp, chunk, rate, counter)
            pos += len(chunk)
        if cut is not None or overclaim:  # shorter than the cut point or the claim: drop
            drop(request)
            return False
        return True

    async def _body_chunks(
        self, request: web.Request, up: aiohttp.ClientResponse
    ) -> AsyncIterator[bytes]:
        """The upstream body in chunks; a token answer whole, its tokens noted first."""
        if classify(request.rel_url.path) != "token":
            async for chunk in up.content.iter_chunked(CHUNK):
                yield chunk
            return
        body = await up.read()  # small; noted before the client can see it
        self._note_tokens(body)
        if body:
            yield body

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
