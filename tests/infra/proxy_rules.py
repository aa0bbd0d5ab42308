"""The fault proxy's rules and counters (see :mod:`tests.infra.proxy`).

:class:`FaultRule` is one rule; :class:`RuleBuilders` holds the methods that add
them (``status``, ``cut``, ``flip``...) and is mixed into
:class:`~tests.infra.proxy.FaultProxy`; :class:`ProxyStats` is a snapshot of the
counters, :class:`LiveCounts` the counters of one request while it flows.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

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
    "headers",
]
#: Headers a ``headers`` rule adds: fixed, or computed from the rule's match number (1, 2...).
HeaderSource = Mapping[str, str] | Callable[[int], Mapping[str, str]]
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
    #: ``headers``: what the rule adds to the answer.
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


class LiveCounts:
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


class RuleBuilders:
    """The methods that add fault rules; the proxy supplies :meth:`_add`."""

    def _add(self, rule: FaultRule) -> FaultRule:
        raise NotImplementedError

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
        it applies every time by default (``times=None``) and is not counted as
        a fault in the request log.
        """
        return self._add(
            FaultRule(
                "headers", method, self._compile(path), nth=nth, times=times, add_headers=headers
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
