"""Reverse-proxy plumbing shared by the referrers shim and the fault proxy.

A request arriving at the front server is replayed against the upstream with
the same method, path, query, headers (``Host`` included, so the registry builds
its ``Location`` URLs for the front address) and a streamed body.  The answer's
status, headers and body travel back unchanged except for hop-by-hop headers
and absolute ``Location`` URLs that name the upstream, which are rewritten to
the front address.  Bodies are never decompressed or re-encoded.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
    )
)
CHUNK = 64 * 1024


def make_session(ca_file: str | None = None) -> aiohttp.ClientSession:
    """A client session fit for proxying: no decompression, no auto headers, no cookies."""
    ssl_ctx: ssl.SSLContext | bool = True
    if ca_file:
        ssl_ctx = ssl.create_default_context(cafile=ca_file)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, ssl=ssl_ctx),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600),
    )


def request_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, marked as forwarded over HTTP.

    ``Expect`` is dropped too: the front server already answered ``100 Continue``.
    """
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() not in HOP_BY_HOP and name.lower() != "expect":
            headers.add(name, value)
    headers["X-Forwarded-Proto"] = "http"
    return headers


def rewrite_location(value: str, upstream: str, front: str) -> str:
    """Point an absolute URL at ``upstream`` to ``front`` instead (others unchanged)."""
    parts = urlsplit(value)
    if not parts.netloc:
        return value
    up = urlsplit(upstream)
    fr = urlsplit(front)
    if parts.netloc.lower() not in (up.netloc.lower(), fr.netloc.lower()):
        return value
    return urlunsplit((fr.scheme, fr.netloc, parts.path, parts.query, parts.fragment))


def response_headers(
    upstream_resp: aiohttp.ClientResponse, upstream: str, front: str
) -> CIMultiDict[str]:
    """Upstream response headers to send on: hop-by-hop dropped, Location rewritten."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_resp.headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == "content-length":
            continue
        if lower == "location":
            value = rewrite_location(value, upstream, front)
        headers.add(name, value)
    return headers


async def client_body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as a stream of chunks."""
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


def front_url(request: web.Request) -> str:
    """``http://host:port`` of the front server as the client addressed it."""
    return f"http://{request.host}"


def has_body(request: web.Request) -> bool:
    """True when the client sends a body (Content-Length > 0 or chunked)."""
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return True
    length = request.content_length
    return length is not None and length > 0


def body_expected(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries a body at all."""
    return method != "HEAD" and status not in (204, 304) and not 100 <= status < 200


async def start_response(
    request: web.Request,
    upstream_resp: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    """Send status and headers to the client, keeping the upstream Content-Length."""
    resp = web.StreamResponse(status=upstream_resp.status, reason=upstream_resp.reason)
    resp.headers.extend(headers)
    length = upstream_resp.headers.get("Content-Length")
    if length is not None:
        if body_expected(request.method, upstream_resp.status):
            resp.content_length = int(length)
        else:
            resp.headers["Content-Length"] = length
    elif body_expected(request.method, upstream_resp.status):
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp
