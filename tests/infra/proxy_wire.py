"""The fault proxy's wire work: bodies faulted on the way, the storage side of redirects.

Helpers of :class:`~tests.infra.proxy.FaultProxy` (see its module doc):
request bodies counted, flipped, slowed or broken off (:func:`counting`),
answers started with a claimed ``Content-Length`` (:func:`start_answer`),
written at a rate (:func:`write_at_rate`), the requests parked by redirects
(:class:`Storage`), and the small answers the proxy gives itself.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .forward import CHUNK, body_expected, request_headers, start_response
from .proxy_rules import _ERROR_CODES, STORAGE_HOST, FaultRule, LiveCounts


class RequestCut(Exception):
    """Raised inside a forwarded request body to break the upstream request off."""


async def counting(
    body: AsyncIterator[bytes],
    counter: LiveCounts,
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
            raise RequestCut
        counter.add_up(len(chunk))
        if flips:
            chunk = flipped(chunk, pos, flips)
        pos += len(chunk)
        if rate:
            await asyncio.sleep(len(chunk) / rate)
        yield chunk


def flipped(chunk: bytes, pos: int, offsets: list[int]) -> bytes:
    """``chunk`` (at ``pos`` of its body) with the bytes at ``offsets`` inverted."""
    if not any(pos <= off < pos + len(chunk) for off in offsets):
        return chunk
    buf = bytearray(chunk)
    for off in offsets:
        if pos <= off < pos + len(buf):
            buf[off - pos] ^= 0xFF
    return bytes(buf)


async def write_at_rate(
    resp: web.StreamResponse, chunk: bytes, rate: int | None, counter: LiveCounts
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


def apply_headers(headers: CIMultiDict[str], rules: list[FaultRule]) -> None:
    """Apply the ``header`` rules to the response headers."""
    for rule in rules:
        if rule.kind != "header":
            continue
        headers.popall(rule.header_name, None)
        if rule.header_value is not None:
            headers[rule.header_name] = rule.header_value


async def start_answer(
    request: web.Request,
    up: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    rules: list[FaultRule],
) -> web.StreamResponse:
    """Start the answer; ``truncate`` and ``length`` rules change its Content-Length."""
    claim = claimed_length(up.headers.get("Content-Length"), rules)
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


def claimed_length(length: str | None, rules: list[FaultRule]) -> int | None:
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


class Storage:
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


async def start_storage(runner: web.AppRunner) -> str:
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


async def read_some(request: web.Request, limit: int, counter: LiveCounts) -> None:
    while counter.up < limit:
        chunk = await request.content.read(min(CHUNK, limit - counter.up))
        if not chunk:
            return
        counter.add_up(len(chunk))


async def drain(request: web.Request, counter: LiveCounts) -> None:
    async for chunk in request.content.iter_chunked(CHUNK):
        counter.add_up(len(chunk))


def drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def with_added_headers(response: web.Response, added: Mapping[str, str]) -> web.Response:
    """``response`` with the headers of ``headers`` rules set on it."""
    for name, value in added.items():
        response.headers[name] = value
    return response


def error_response(rule: FaultRule) -> web.Response:
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
