"""The redirect layer of the transport: follow a blob's way to its storage.

A registry may answer a blob ``GET`` or ``HEAD`` with a redirect (307) to
another host, object storage typically, whose URL carries its own short-lived
authorization.  :class:`RedirectLayer` follows such answers for requests that
ask for it (``RequestSpec.follow_redirects``) and hands every other answer up
unchanged.

Guarantees:

* The registry's ``Authorization`` header travels only to the registry's own
  origin (scheme, host and port): a hop to any other origin goes without it,
  and a hop back to the registry carries it again.
* ``Location`` values are resolved against the answering URL and kept byte for
  byte (their query strings are opaque).
* At most :data:`MAX_REDIRECTS` hops; one more is a
  :class:`~replicator.errors.ProtocolError`.
"""

from __future__ import annotations

from multidict import CIMultiDict
from yarl import URL

from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.exchange import Layer, Outgoing, same_origin

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


def resolve_location(base: URL, location: str) -> URL:
    """Resolve a ``Location`` (possibly relative, maybe with a query) against ``base``.

    The location's encoding is kept byte for byte: upload locations carry
    opaque state that must not be re-encoded.
    """
    target = URL(location, encoded=True)
    if target.is_absolute():
        return target
    return base.join(target)


class RedirectLayer:
    """Follows redirects for the requests that ask for it (see module doc)."""

    def __init__(self, inner: Layer, origin: URL, *, host_name: str) -> None:
        self.inner = inner
        self.origin = origin
        self.host_name = host_name

    async def send(self, request: Outgoing) -> aiohttp.ClientResponse:
        """Send ``request``; follow redirects if it asks to; the final answer."""
        response = await self.inner.send(request)
        if not request.spec.follow_redirects:
            return response
        original = request.headers
        hops = 0
        while response.status in REDIRECT_STATUSES and "Location" in response.headers:
            hops += 1
            if hops > MAX_REDIRECTS:
                response.release()
                raise protocol_error(self.host_name, request.spec.repository, "too many redirects")
            url = resolve_location(response.url, response.headers["Location"])
            response.release()
            response = await self.inner.send(request.to(url, self._headers_for(url, original)))
        return response

    def _headers_for(self, url: URL, original: CIMultiDict[str]) -> CIMultiDict[str]:
        """The request's headers for a hop to ``url``: no Authorization off the origin."""
        if same_origin(url, self.origin):
            return original
        headers = original.copy()
        headers.popall("Authorization", None)
        return headers
