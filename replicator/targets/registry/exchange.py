"""What travels through the transport's layers: requests, answers, failures.

The transport of the registry target is a stack of layers in the manner of
httpx: error mapping → authentication → redirects → retries → one request.
Each layer is a :class:`Layer`: it takes an :class:`Outgoing` request, hands it
(or a changed copy) to the layer below and returns the open
``aiohttp.ClientResponse`` it got back.  This module holds the types they share,
so that each layer can be built and tested on its own with a fake layer below.

* :class:`RequestSpec` describes one *logical* request as the registry target
  asks for it; :class:`Outgoing` is one concrete send of it (its URL after
  redirects, its headers after authentication, its attempt number).
* :class:`NoAnswer` is how the layers below the error mapping report a request
  that got no HTTP answer (the network exception is its ``cause``);
  :class:`BodySourceFailed` reports that the request's streamed body itself
  failed (the source, not the registry).  Neither leaves the transport: the
  error mapping turns them into :mod:`replicator.errors` exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from replicator.targets.registry._aiohttp import aiohttp

#: Re-creates a request body stream for each attempt.
BodyFactory = Callable[[], AsyncIterator[bytes]]


@dataclass(slots=True)
class RequestSpec:
    """Everything that describes one logical request (sent one or more times).

    ``what`` names the object for error messages (``manifest "v1"``); ``ok``
    the statuses that count as success (anything else becomes an exception).
    A body is either ``data`` (bytes, sent again as they are) or ``body`` (a
    factory opening a fresh stream for each send).
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
    #: Retry a 500 answer: None = only for GET and HEAD.
    retry_500: bool | None = None
    #: False: send once; failures are the caller's to handle (a stream with state).
    retry: bool = True


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished answer: status, headers, the (capped) body and the final URL."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


@dataclass(slots=True)
class Trace:
    """What happened to one logical request so far, shared by all its sends.

    The retry layer counts the sends of the current hop in ``attempts`` and
    the seconds they took since the first failure in ``elapsed``; the error
    mapping quotes both when it gives up.
    """

    attempts: int = 0
    elapsed: float = 0.0


@dataclass(slots=True)
class Outgoing:
    """One send of a :class:`RequestSpec`: where it goes and with which headers."""

    spec: RequestSpec
    url: URL
    headers: CIMultiDict[str]
    #: 1 for the first send of this URL; the retry layer counts up.
    attempt: int = 1
    trace: Trace = field(default_factory=Trace)

    @classmethod
    def first(cls, spec: RequestSpec) -> Outgoing:
        """The first send of ``spec``: its URL and its own headers."""
        return cls(spec, spec.url, CIMultiDict(spec.headers or {}))

    def with_headers(self, headers: CIMultiDict[str], *, attempt: int | None = None) -> Outgoing:
        """A copy sending ``headers`` instead (as send number ``attempt`` when given)."""
        again = self.attempt if attempt is None else attempt
        return Outgoing(self.spec, self.url, headers, again, self.trace)

    def to(self, url: URL, headers: CIMultiDict[str]) -> Outgoing:
        """A copy going to ``url`` with ``headers`` (a redirect hop: attempt 1)."""
        return Outgoing(self.spec, url, headers, 1, self.trace)

    def again(self, attempt: int) -> Outgoing:
        """This send as send number ``attempt`` of the same hop (itself when it is already)."""
        if attempt == self.attempt:
            return self
        return Outgoing(self.spec, self.url, self.headers, attempt, self.trace)


@dataclass(slots=True)
class HostState:
    """What the layers of one host's transport learn about the host as they go."""

    #: Some request got an HTTP answer from the host (a refused connection is
    #: then an outage worth waiting for, not a wrong address).
    answered: bool = False


class Layer(Protocol):
    """One layer of the transport: send ``request``, hand back the open answer."""

    async def send(self, request: Outgoing) -> aiohttp.ClientResponse:
        """The answer to ``request`` (any status); :class:`NoAnswer` when there was none."""
        ...


class NoAnswer(Exception):
    """A request got no HTTP answer; ``cause`` is the network exception."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


class BodySourceFailed(Exception):
    """The request's streamed body raised ``cause`` while it was being sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


def same_origin(a: URL, b: URL) -> bool:
    """True when ``a`` and ``b`` share scheme, host (any case) and effective port."""
    return (
        a.scheme == b.scheme
        and (a.host or "").lower() == (b.host or "").lower()
        and a.port == b.port
    )
