"""The bottom layer of the transport: one HTTP request, counted.

:class:`SingleRequest` sends one :class:`~.exchange.Outgoing` through the
host's aiohttp session, exactly once, following no redirect.  It is the one
place where request statistics are kept: every send counts under its kind
(``manifest_get``, ``blob_patch``...), a send that repeats an earlier one of the
same request (``attempt`` > 1) also under ``retries``, every request body
byte under ``bytes_sent`` as it goes out, and the class of its answer's status
(or ``none``) under ``answers`` (the service metrics' requests by status).

Guarantees:

* A request body is sent from ``data`` (bytes) or from a fresh stream of the
  ``body`` factory; the stream is closed when the send ends, however it ends.
* An exception raised by that stream (an :class:`~replicator.errors.IntegrityError`
  from a verifying source, say) surfaces as :class:`~.exchange.BodySourceFailed`,
  never as a network failure of the registry; a request that got no HTTP
  answer raises :class:`~.exchange.NoAnswer`.  Cancellation passes through.
* Once any answer arrived, :attr:`~.exchange.HostState.answered` is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from replicator.targets.base import RequestStats
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.exchange import (
    BodySourceFailed,
    HostState,
    NoAnswer,
    Outgoing,
    RequestSpec,
)


class _BodyFailure:
    """Remembers an exception raised by a streamed body while aiohttp sent it."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None


class SingleRequest:
    """Sends each request once through ``session()`` and counts it in ``stats``."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        stats: RequestStats,
        host: HostState,
    ) -> None:
        self._session = session
        self.stats = stats
        self.host = host

    async def send(self, request: Outgoing) -> aiohttp.ClientResponse:
        """Send ``request`` once; the open answer, whatever its status."""
        spec = request.spec
        failure = _BodyFailure()
        data = self._body(spec, failure)
        self.stats.add(spec.kind)
        if request.attempt > 1:
            self.stats.add("retries")
        try:
            response = await self._session().request(
                spec.method,
                request.url,
                headers=request.headers,
                data=data,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.stats.answered(spec.kind, None)
            if failure.error is not None:
                raise BodySourceFailed(failure.error) from None
            raise NoAnswer(exc) from None
        except Exception:
            self.stats.answered(spec.kind, None)
            if failure.error is not None:
                raise BodySourceFailed(failure.error) from None
            raise
        self.stats.answered(spec.kind, response.status)
        self.host.answered = True
        return response

    def _body(self, spec: RequestSpec, failure: _BodyFailure) -> Any:
        """What aiohttp sends: the bytes (counted now) or a counted fresh stream."""
        if spec.body is not None:
            return self._counted(spec.body(), failure)
        if spec.data is not None:
            self.stats.add("bytes_sent", len(spec.data))
        return spec.data

    async def _counted(
        self, source: AsyncIterator[bytes], failure: _BodyFailure
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in source:
                self.stats.add("bytes_sent", len(chunk))
                yield chunk
        except Exception as exc:  # not GeneratorExit/cancellation: those are ours
            failure.error = exc
            raise
        finally:
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()
