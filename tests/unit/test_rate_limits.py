"""Rate limits of the registry transport on their own: token buckets, quota headers, the layer.

Time is a fake clock whose ``sleep`` moves it on, so every pause is measured
exactly; the layer is driven by a scripted fake of the layer below it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from replicator.sync.config import parse_config
from replicator.targets.base import NOT_REQUESTS, RequestStats
from replicator.targets.registry.exchange import Outgoing, RequestSpec
from replicator.targets.registry.options import RateLimits, RegistryOptions
from replicator.targets.registry.ratelimit import (
    BODY_PIECE,
    HostRateLimiter,
    QuotaReading,
    RateLimitLayer,
    TokenBucket,
    parse_quota,
)
from replicator.targets.registry.transport import Transport

URL_ = URL("http://reg.test/v2/app/manifests/v1")


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


# -- token bucket -------------------------------------------------------------------------


def test_a_bucket_spaces_takers_evenly_at_its_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(4.0, 1.0, clock=t.clock)
    delays = [bucket.reserve(1) for _ in range(5)]
    # The first token is there; each next one is a quarter of a second later.
    assert delays == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_a_bucket_refills_up_to_its_capacity_only() -> None:
    t = FakeTime()
    bucket = TokenBucket(10.0, 2.0, clock=t.clock)
    assert bucket.reserve(2) == 0.0
    t.now += 100.0  # long idle: still only 2 tokens
    assert bucket.reserve(2) == 0.0
    assert bucket.reserve(1) == pytest.approx(0.1)


def test_a_piece_larger_than_the_capacity_passes_and_is_paid_for_afterwards() -> None:
    t = FakeTime()
    bucket = TokenBucket(1000.0, 100.0, clock=t.clock)
    assert bucket.reserve(1100) == pytest.approx(1.0)  # 1000 tokens of debt
    assert bucket.reserve(500) == pytest.approx(1.5)  # queued behind the debt


def test_a_bucket_over_a_long_run_keeps_its_average() -> None:
    t = FakeTime()
    bucket = TokenBucket(2 * 1024 * 1024, 200 * 1024, clock=t.clock)

    async def stream() -> None:
        for _ in range(160):  # 160 pieces of 256 KiB: 40 MiB
            await bucket.take(256 * 1024, t.sleep)

    start = t.now
    asyncio.run(stream())
    rate = 40 * 1024 * 1024 / (t.now - start)
    assert rate == pytest.approx(2 * 1024 * 1024, rel=0.01)


def test_a_bucket_needs_a_rate_and_a_capacity() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


# -- quota headers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # Docker Hub
        ({"ratelimit-remaining": "76;w=21600"}, QuotaReading(76, None, 21600.0)),
        (
            {"RateLimit-Remaining": "0;w=21600", "RateLimit-Reset": "30"},
            QuotaReading(0, 30.0, 21600.0),
        ),
        # IETF draft, separate headers
        ({"RateLimit-Remaining": "5", "RateLimit-Reset": "12"}, QuotaReading(5, 12.0)),
        # several policies: the tightest one
        ({"RateLimit-Remaining": "50;w=60, 3;w=3600"}, QuotaReading(3, None, 3600.0)),
        # GitHub style, reset as a Unix time
        ({"X-RateLimit-Remaining": "9", "X-RateLimit-Reset": "1700000100"}, QuotaReading(9, 100.0)),
        # combined header, both drafts
        ({"RateLimit": "limit=100, remaining=7, reset=40"}, QuotaReading(7, 40.0)),
        ({"RateLimit": '"default";r=4;t=20, "burst";r=9;t=1'}, QuotaReading(4, 20.0)),
    ],
)
def test_quota_headers_in_every_form_are_read(
    given: dict[str, str], expected: QuotaReading
) -> None:
    assert parse_quota(CIMultiDictProxy(CIMultiDict(given)), now=1_700_000_000.0) == expected


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"RateLimit-Remaining": ""},
        {"RateLimit-Remaining": "many"},
        {"RateLimit": "limit=100"},
        {"RateLimit-Limit": "100;w=21600"},
    ],
)
def test_answers_without_a_readable_quota_state_none(given: dict[str, str]) -> None:
    assert parse_quota(CIMultiDictProxy(CIMultiDict(given))) is None


def test_a_reset_in_the_past_is_no_wait() -> None:
    reading = parse_quota(headers(RateLimit_Remaining="1", RateLimit_Reset="1600000000"), now=1.7e9)
    assert reading == QuotaReading(1, 0.0)


# -- the host limiter and the layer ---------------------------------------------------------


class FakeResponse:
    def __init__(self, answer_headers: CIMultiDictProxy[str] | None = None) -> None:
        self.status = 200
        self.headers = answer_headers or headers()


class Below:
    """The layer below: records what it was sent (and the body it streamed) and when."""

    def __init__(self, t: FakeTime, answers: list[CIMultiDictProxy[str]] | None = None) -> None:
        self.t = t
        self.answers = list(answers or [])
        self.sent: list[tuple[float, Outgoing]] = []
        self.bodies: list[list[bytes]] = []

    async def send(self, request: Outgoing) -> Any:
        self.sent.append((self.t.now, request))
        if request.spec.body is not None:
            self.bodies.append([chunk async for chunk in request.spec.body()])
        answer = self.answers.pop(0) if self.answers else headers()
        return FakeResponse(answer)


def limiter(t: FakeTime, stats: RequestStats | None = None, **limits: Any) -> HostRateLimiter:
    return HostRateLimiter(
        "reg.test", RateLimits(**limits), stats or RequestStats(), clock=t.clock, sleep=t.sleep
    )


def get(method: str = "GET", **extra: Any) -> Outgoing:
    fields: dict[str, Any] = {
        "kind": "manifest_get",
        "scopes": [],
        "repository": "app",
        "what": "x",
        "ok": (200,),
    }
    fields.update(extra)
    return Outgoing.first(RequestSpec(method=method, url=URL_, **fields))


def test_requests_leave_evenly_spaced_at_the_request_rate() -> None:
    t = FakeTime()
    below = Below(t)
    layer = RateLimitLayer(below, limiter(t, requests_per_second=5.0))

    async def scenario() -> None:
        for _ in range(11):
            await layer.send(get())

    asyncio.run(scenario())
    times = [when for when, _ in below.sent]
    assert times[-1] - times[0] == pytest.approx(2.0)  # 10 gaps of 0.2 s
    assert all(b - a == pytest.approx(0.2) for a, b in itertools.pairwise(times))


def test_bodies_given_as_bytes_stream_in_pieces_at_the_bandwidth_with_their_length() -> None:
    t = FakeTime()
    below = Below(t)
    layer = RateLimitLayer(below, limiter(t, bandwidth=1024 * 1024))
    data = bytes(range(256)) * (4 * 1024 * 5)  # 5 MiB

    async def scenario() -> None:
        await layer.send(get(method="PUT", kind="blob_put", data=data))

    start = t.now
    asyncio.run(scenario())
    (_, sent) = below.sent[0]
    assert sent.spec.data is None and sent.headers["Content-Length"] == str(len(data))
    assert b"".join(below.bodies[0]) == data
    assert max(len(piece) for piece in below.bodies[0]) == BODY_PIECE
    assert t.now - start == pytest.approx(4.75, abs=0.07)  # 5 MiB at 1 MiB/s, 256 KiB burst


def test_streamed_bodies_are_paced_and_the_source_is_closed() -> None:
    t = FakeTime()
    below = Below(t)
    layer = RateLimitLayer(below, limiter(t, bandwidth=1_000_000))
    closed: list[bool] = []

    def factory() -> AsyncIterator[bytes]:
        async def stream() -> AsyncIterator[bytes]:
            try:
                for _ in range(10):
                    yield b"x" * 500_000
            finally:
                closed.append(True)

        return stream()

    async def scenario() -> None:
        await layer.send(get(method="PATCH", kind="blob_patch", body=factory))

    start = t.now
    asyncio.run(scenario())
    assert sum(len(p) for p in below.bodies[0]) == 5_000_000
    assert t.now - start == pytest.approx((5_000_000 - 262_144) / 1_000_000, abs=0.01)
    assert closed == [True]


def test_downloads_are_paced_by_the_same_bandwidth_as_uploads() -> None:
    t = FakeTime()
    host = limiter(t, bandwidth=1_000_000)

    async def scenario() -> None:
        await host.received(600_000)  # upload-side and download-side share one bucket
        await host.received(600_000)

    asyncio.run(scenario())
    assert sum(t.slept) == pytest.approx((1_200_000 - 262_144) / 1_000_000)


def test_a_low_quota_pauses_the_host_until_the_reset_then_one_probe_goes_first() -> None:
    t = FakeTime()
    stats = RequestStats()
    low = headers(RateLimit_Remaining="2;w=21600", RateLimit_Reset="30")
    fine = headers(RateLimit_Remaining="90;w=21600")
    below = Below(t, [headers(RateLimit_Remaining="50"), low, fine, fine, fine])
    layer = RateLimitLayer(below, limiter(t, stats, min_remaining=5))

    async def scenario() -> None:
        await layer.send(get())
        await layer.send(get())  # answered with 2 remaining: the host pauses for 30 s

        async def one() -> None:
            await layer.send(get())

        await asyncio.gather(one(), one(), one())

    asyncio.run(scenario())
    times = [when for when, _ in below.sent]
    assert times[:2] == [1000.0, 1000.0]
    assert times[2:] == [1030.0, 1030.0, 1030.0]
    assert (stats.rate_limit_pauses, stats.rate_limit_paused_ms) == (1, 30_000)


def test_without_a_reset_the_pause_is_the_default_wait_and_it_goes_on_while_the_quota_is_low() -> (
    None
):
    t = FakeTime()
    stats = RequestStats()
    low = headers(ratelimit_remaining="1;w=21600")
    below = Below(t, [low, low, headers(ratelimit_remaining="40;w=21600")])
    layer = RateLimitLayer(below, limiter(t, stats, min_remaining=3, default_pause=60.0))

    async def scenario() -> None:
        for _ in range(4):
            await layer.send(get())

    asyncio.run(scenario())
    times = [when for when, _ in below.sent]
    assert times == [1000.0, 1060.0, 1120.0, 1120.0]
    assert (stats.rate_limit_pauses, stats.rate_limit_paused_ms) == (2, 120_000)


def test_a_reset_longer_than_the_longest_pause_is_cut_and_a_quota_at_the_floor_does_not_pause() -> (
    None
):
    t = FakeTime()
    stats = RequestStats()
    host = limiter(t, stats, min_remaining=3, max_pause=100.0)
    host.after_answer(headers(RateLimit_Remaining="3", RateLimit_Reset="5000"))
    assert host.paused_for == 0.0
    host.after_answer(headers(RateLimit_Remaining="2", RateLimit_Reset="5000"))
    assert host.paused_for == pytest.approx(100.0)
    assert stats.rate_limit_pauses == 1


def test_without_min_remaining_quota_headers_are_ignored() -> None:
    t = FakeTime()
    host = limiter(t, requests_per_second=100.0)
    host.after_answer(headers(RateLimit_Remaining="0", RateLimit_Reset="50"))
    assert host.paused_for == 0.0


def test_the_transport_has_a_rate_layer_only_when_a_limit_is_set() -> None:
    plain = Transport("reg.test", RegistryOptions(), auth=None)  # type: ignore[arg-type]
    assert plain.rate_limiter is None
    limited = Transport(
        "reg.test",
        RegistryOptions(rate_limits=RateLimits(bandwidth=1000)),
        auth=None,  # type: ignore[arg-type]
    )
    assert limited.rate_limiter is not None and limited.rate_limiter.bandwidth is not None
    assert not RateLimits(min_remaining=0).active


def test_pause_counters_are_not_requests() -> None:
    stats = RequestStats(rate_limit_pauses=1, rate_limit_paused_ms=5)
    assert {"rate_limit_pauses", "rate_limit_paused_ms"} <= NOT_REQUESTS
    assert set(stats.as_dict()) >= NOT_REQUESTS


def test_the_config_limits_become_the_transport_rate_limits() -> None:
    config = parse_config(
        """\
version: 1
registries:
  reg.example.com:
    limits: {concurrency: 4, requests-per-second: 20, bandwidth: 2MiB, min-remaining: 10}
jobs:
  - name: a
    source: reg.example.com/team/api
    destinations: [other.example.com/team/api]
""",
        base_dir="/tmp",
    )
    options = config.registry_options("reg.example.com", resolve=lambda host: None)
    assert options.max_connections == 4
    assert options.rate_limits == RateLimits(
        requests_per_second=20.0, bandwidth=2 * 1024 * 1024, min_remaining=10
    )
    other = config.registry_options("other.example.com", resolve=lambda host: None)
    assert not other.rate_limits.active
