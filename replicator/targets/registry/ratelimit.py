"""Per-host rate limits of the registry transport: request rate, bandwidth, quota headers.

A :class:`HostRateLimiter` holds what one host's limits
(:class:`~.options.RateLimits`) need between requests; :class:`RateLimitLayer`
applies it to every send (it sits between the retry layer and the single
request, so each retry and each redirect hop is one request like any other):

* **Request rate** — a :class:`TokenBucket` of ``requests_per_second`` tokens
  a second holding at most one: requests leave evenly spaced, never in bursts.
* **Bandwidth** — one bucket of ``bandwidth`` bytes a second for the bodies
  sent to and received from the host together.  Request bodies are paced as
  they stream (a body given as bytes is streamed in pieces, with its
  ``Content-Length``); response bodies are paced where they are read
  (:meth:`HostRateLimiter.received`): a reader that waits stops reading the
  socket, and TCP flow control slows the sender down.
* **Quota** — with ``min_remaining``, each answer's quota headers are read
  (:func:`parse_quota`); when fewer than ``min_remaining`` requests remain,
  no request is sent to the host until the quota resets (its reset header),
  or ``default_pause`` seconds when it gives none.  The pause is logged
  (``registry.rate_limit_paused``) and counted in
  :attr:`~replicator.targets.base.RequestStats.rate_limit_pauses` and
  ``rate_limit_paused_ms``.  After a pause one request goes alone (a probe);
  its answer either ends the pause for everyone or starts another.

Guarantees: over any stretch of time the requests sent and the body bytes
moved never exceed the configured rates by more than one request, or the
bucket's capacity (:data:`BANDWIDTH_BURST_SECONDS` of bandwidth, at least
:data:`BANDWIDTH_BURST_MIN`) plus one body piece; a limit left unset costs nothing.  Cancelling a waiting request gives up its turn cleanly (the
tokens it reserved are not handed back: the pace errs on the slow side).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import anyio
import structlog
from multidict import CIMultiDict

from replicator.targets.base import RequestStats
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.exchange import BodyFactory, Layer, Outgoing
from replicator.targets.registry.options import RateLimits

log = structlog.get_logger("replicator.registry.ratelimit")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: A body given as bytes is streamed in pieces of this size under a bandwidth limit.
BODY_PIECE = 64 * 1024
#: Seconds of bandwidth a quiet host may spend at once (the bucket's capacity):
#: enough to absorb the scheduler's lateness, no more ...
BANDWIDTH_BURST_SECONDS = 0.02
#: ... and at least the largest piece a download hands over (aiohttp: 256 KiB), so
#: that a transfer paced at both ends (read from one limited host, written to
#: another) loses no tokens while one end waits for the other.
BANDWIDTH_BURST_MIN = 256 * 1024
#: A reset value above this is a Unix time, not a number of seconds.
_EPOCH_THRESHOLD = 1_000_000_000
_LEADING_INT = re.compile(r"\s*(\d+)")


class TokenBucket:
    """Tokens flow in at ``rate`` a second up to ``capacity``; takers may run into debt.

    :meth:`reserve` takes ``n`` tokens at once, even more than there are (a
    body piece larger than the capacity still passes), and says how long the
    taker must wait for the balance to be back at zero, so the long-run
    average never exceeds ``rate``.  The bucket starts full.

    :meth:`take` serves takers one at a time, first come first served, each
    reserving only once the one before has waited out its debt: when the
    process falls behind (a busy CPU), the takers it held up do not all go at
    once on waking — at most ``capacity`` tokens' worth goes early.
    """

    def __init__(self, rate: float, capacity: float, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a rate and a capacity above 0")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._turn: anyio.Lock | None = None

    def reserve(self, n: float) -> float:
        """Take ``n`` tokens now; the seconds to wait before acting on them (0: none)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, n: float, sleep: Sleep = anyio.sleep) -> None:
        """Take ``n`` tokens and wait until they are paid for (one taker at a time)."""
        if self._turn is None:
            self._turn = anyio.Lock()
        async with self._turn:
            delay = self.reserve(n)
            if delay > 0:
                await sleep(delay)


# --------------------------------------------------------------------------- quota headers


@dataclass(frozen=True, slots=True)
class QuotaReading:
    """What an answer said about the host's quota.

    ``remaining``: requests left (the smallest of several policies);
    ``reset``: seconds until the quota resets, when the host said;
    ``window``: the policy's window in seconds (``w=``), when given.
    """

    remaining: int
    reset: float | None = None
    window: float | None = None


def _params(item: str) -> tuple[str, dict[str, str]]:
    """``76;w=21600`` → (``76``, {``w``: ``21600``}); keys lower-cased, quotes dropped."""
    head, *rest = item.split(";")
    params: dict[str, str] = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return head.strip(), params


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    match = _LEADING_INT.match(text)
    return float(match.group(1)) if match else None


def _reset_seconds(value: float | None, now: float) -> float | None:
    """A reset header's value as seconds from now (a Unix time is converted)."""
    if value is None:
        return None
    if value > _EPOCH_THRESHOLD:
        return max(0.0, value - now)
    return value


def _separate_headers(headers: Mapping[str, str]) -> QuotaReading | None:
    """``RateLimit-Remaining`` / ``X-RateLimit-Remaining`` with their reset headers."""
    for prefix in ("ratelimit-", "x-ratelimit-"):
        raw = headers.get(prefix + "remaining")
        if raw is None:
            continue
        readings = []
        for item in raw.split(","):
            head, params = _params(item)
            remaining = _number(head)
            if remaining is not None:
                readings.append((int(remaining), _number(params.get("w"))))
        if not readings:
            continue
        remaining, window = min(readings, key=lambda r: r[0])
        reset = _number(headers.get(prefix + "reset"))
        return QuotaReading(remaining, reset, window)
    return None


def _combined_header(value: str) -> QuotaReading | None:
    """The combined ``RateLimit`` header: ``limit=100, remaining=5, reset=30`` or
    ``"policy";r=5;t=30`` (several policies: the tightest one)."""
    pairs = dict(
        (k.strip().lower(), v.strip())
        for k, _, v in (p.partition("=") for p in re.split(r"[,;]", value))
        if v
    )
    if "remaining" in pairs:
        remaining, reset = _number(pairs["remaining"]), _number(pairs.get("reset"))
        return None if remaining is None else QuotaReading(int(remaining), reset)
    readings = []
    for item in value.split(","):
        _, params = _params(item)
        remaining = _number(params.get("r"))
        if remaining is not None:
            readings.append(QuotaReading(int(remaining), _number(params.get("t"))))
    return min(readings, key=lambda r: r.remaining) if readings else None


def parse_quota(headers: Mapping[str, str], *, now: float | None = None) -> QuotaReading | None:
    """The quota an answer's headers state, or None when they state none.

    Understood: ``RateLimit-Remaining: 76`` and Docker Hub's
    ``ratelimit-remaining: 76;w=21600`` (with ``RateLimit-Reset``: seconds, or
    a Unix time), ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset``, and the
    combined ``RateLimit: limit=100, remaining=76, reset=30`` or
    ``RateLimit: "default";r=76;t=30``.  Header names are matched in any case
    (``headers`` must be case-insensitive, as aiohttp's are).  Never raises.
    """
    current = time.time() if now is None else now
    reading = _separate_headers(headers)
    if reading is None:
        combined = headers.get("ratelimit")
        reading = _combined_header(combined) if combined else None
    if reading is None:
        return None
    return replace(reading, reset=_reset_seconds(reading.reset, current))


# --------------------------------------------------------------------------- one host


class HostRateLimiter:
    """The rate limit state of one host (see the module doc)."""

    def __init__(
        self,
        host: str,
        limits: RateLimits,
        stats: RequestStats,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.host = host
        self.limits = limits
        self.stats = stats
        self._clock = clock
        self._sleep = sleep
        rps, bandwidth = limits.requests_per_second, limits.bandwidth
        self.requests = TokenBucket(rps, 1.0, clock=clock) if rps else None
        self.bandwidth = (
            TokenBucket(
                bandwidth,
                max(BANDWIDTH_BURST_MIN, bandwidth * BANDWIDTH_BURST_SECONDS),
                clock=clock,
            )
            if bandwidth
            else None
        )
        self._resume_at = 0.0
        self._needs_probe = False
        self._probe_done: anyio.Event | None = None

    @property
    def paused_for(self) -> float:
        """Seconds left in the current quota pause (0: not paused)."""
        return max(0.0, self._resume_at - self._clock())

    async def before_request(self) -> bool:
        """Wait out a quota pause and the request rate; True when this request is the probe."""
        while True:
            left = self._resume_at - self._clock()
            if left > 0:
                await self._sleep(left)
                continue
            if self._probe_done is not None:
                await self._probe_done.wait()
                continue
            break
        if self.requests is not None:
            await self.requests.take(1, self._sleep)
        # Claimed after the last wait: nothing can cancel the request between
        # here and the caller's ``try`` that reports the probe finished.
        probe = self._needs_probe and self._probe_done is None
        if probe:
            self._needs_probe = False
            self._probe_done = anyio.Event()
        return probe

    def probe_finished(self) -> None:
        """The probe got its answer (or none): let the requests held behind it go on."""
        done, self._probe_done = self._probe_done, None
        if done is not None:
            done.set()

    def after_answer(self, headers: Mapping[str, str]) -> None:
        """Read the answer's quota headers; pause the host when too few requests remain."""
        floor = self.limits.min_remaining
        if not floor:
            return
        reading = parse_quota(headers)
        if reading is None or reading.remaining >= floor:
            return
        told = reading.reset is not None
        wait = reading.reset if reading.reset is not None else self.limits.default_pause
        wait = min(max(wait, 0.0), self.limits.max_pause)
        now = self._clock()
        resume = now + wait
        if resume <= self._resume_at:
            return  # an answer of the same low spell: the pause already covers it
        already = self._resume_at > now
        extra = resume - max(self._resume_at, now)
        self._resume_at = resume
        self._needs_probe = True
        self.stats.add("rate_limit_paused_ms", int(extra * 1000))
        if already:
            return
        self.stats.add("rate_limit_pauses")
        log.warning(
            "registry.rate_limit_paused",
            host=self.host,
            remaining=reading.remaining,
            min_remaining=floor,
            seconds=round(wait, 3),
            until="the quota reset" if told else "the default wait (no reset given)",
        )

    async def received(self, n: int) -> None:
        """Pace ``n`` response body bytes just read (the bandwidth limit)."""
        if self.bandwidth is not None and n > 0:
            await self.bandwidth.take(n, self._sleep)

    def paced_body(self, factory: BodyFactory) -> BodyFactory:
        """``factory`` whose streams hand each piece on only once the bandwidth allows it."""
        bucket = self.bandwidth
        if bucket is None:
            return factory
        sleep = self._sleep

        async def stream() -> AsyncIterator[bytes]:
            source = factory()
            try:
                async for chunk in source:
                    await bucket.take(len(chunk), sleep)
                    yield chunk
            finally:
                closer = getattr(source, "aclose", None)
                if closer is not None:
                    await closer()

        return stream


def _pieces(data: bytes) -> BodyFactory:
    async def stream() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(view), BODY_PIECE):
            yield bytes(view[start : start + BODY_PIECE])

    return stream


class RateLimitLayer:
    """The transport layer applying a :class:`HostRateLimiter` to every send."""

    def __init__(self, inner: Layer, limiter: HostRateLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    async def send(self, request: Outgoing) -> aiohttp.ClientResponse:
        """Wait for the host's limits, send ``request`` paced, read the answer's quota."""
        probe = await self.limiter.before_request()
        try:
            response = await self.inner.send(self._paced(request))
            self.limiter.after_answer(response.headers)
            return response
        finally:
            if probe:
                self.limiter.probe_finished()

    def _paced(self, request: Outgoing) -> Outgoing:
        """``request`` with its body paced by the bandwidth limit (bytes streamed in pieces)."""
        spec = request.spec
        if self.limiter.bandwidth is None:
            return request
        if spec.body is not None:
            paced = replace(spec, body=self.limiter.paced_body(spec.body))
            return Outgoing(paced, request.url, request.headers, request.attempt, request.trace)
        if spec.data:
            headers = CIMultiDict(request.headers)
            headers["Content-Length"] = str(len(spec.data))
            body = self.limiter.paced_body(_pieces(spec.data))
            paced = replace(spec, data=None, body=body)
            return Outgoing(paced, request.url, headers, request.attempt, request.trace)
        return request
